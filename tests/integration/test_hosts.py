"""Across hosts, on real engines (`lab up --scenario hosts`): two more dockerds, each in its
own network and mount namespace, on one LAN, in one swarm.

Each trace starts a helper container on each host it names, through that host's engine,
and its agent there opens the points, streams the frames back and reads the host's
rules and conntrack.  The paths: a container on A to B's published port (A's
MASQUERADE, B's DNAT), macvlan between the hosts and the own-host failure, and the
attachable overlay from A's container to B's, inner and outer sightings as one journey.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_situations import assert_one_line_error
from test_trace import one, run_cli, tshark_fields

from flowtrace import api
from flowtrace.endpoints.agent_image import AGENT_LABEL
from flowtrace.endpoints.contexts import read_context
from flowtrace.errors import ExitStatus
from flowtrace.lab import LabState, scenarios
from flowtrace.lab import hosts as lab_hosts
from flowtrace.lab.hostengines import HOSTS, LAN_PATH, LabHost, client_of, leftovers
from flowtrace.lab.scenarios import ScenarioState
from flowtrace.model import Trace

pytestmark = pytest.mark.integration

HOSTA, HOSTB = HOSTS
OVERLAY_PATH = [
    ("o1@hosta/eth0", "source"),
    ("overlay:ftover@hosta/veth1", "veth-peer"),
    ("overlay:ftover@hosta/br0", "bridge"),
    ("overlay:ftover@hosta/vxlan0", "vxlan"),
    ("host@hosta/eth0", "underlay"),
    ("host@hostb/eth0", "underlay"),
    ("overlay:ftover@hostb/vxlan0", "vxlan"),
    ("overlay:ftover@hostb/br0", "bridge"),
    ("overlay:ftover@hostb/veth1", "veth-peer"),
    ("o2@hostb/eth0", "destination"),
]
UNDERLAY = ("host@hosta/eth0", "host@hostb/eth0")


#: What of this host's own rules could be the scenario's (its ranges, its namespaces' names).
_OURS = ("198.18.20.", "10.213.", "ft-host", "ft-lan", "ftover", "ftmv")


def _own_rules() -> list[str]:
    """This host's iptables rules that name anything of the scenario (there should be none)."""
    done = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True)
    return [line for line in done.stdout.splitlines() if any(k in line for k in _OURS)]


@pytest.fixture(scope="module")
def hosts_lab(lab: LabState) -> Iterator[ScenarioState]:
    """The scenario, up for this module; taken down after it (however the module ends:
    a failure, Ctrl-C, SIGTERM) if it was not up before, leaving nothing of it behind."""
    was_up = scenarios.status(lab_hosts.SCENARIO).complete
    rules_before = _own_rules()

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # pytest still tears its fixtures down

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        state = scenarios.up(lab_hosts.SCENARIO)
        assert state.complete, state.missing
        yield state
    finally:
        try:
            if not was_up:
                scenarios.down(lab_hosts.SCENARIO)
        finally:
            signal.signal(signal.SIGTERM, previous)
    if not was_up:
        assert [what for host in HOSTS for what in leftovers(host)] == []
        assert not any(os.path.exists(p) for p in (*(h.netns_path for h in HOSTS), LAN_PATH))
        assert not any(read_context(host.name) for host in HOSTS)
        assert _own_rules() == rules_before


def _inspect(host: LabHost, name: str) -> dict[str, Any]:
    with contextlib.closing(client_of(host)) as client:
        return dict(client.api.inspect_container(name))


def _address(host: LabHost, container: str, network: str) -> str:
    return str(_inspect(host, container)["NetworkSettings"]["Networks"][network]["IPAddress"])


def _records(trace: Trace, key: str) -> list[dict[str, Any]]:
    """A list of records from a trace's meta (`hosts`, `tunnels`)."""
    found = trace.meta[key]
    assert isinstance(found, list)
    return found


def _helpers(host: LabHost) -> list[str]:
    with contextlib.closing(client_of(host)) as client:
        return [c.name for c in client.containers.list(all=True, filters={"label": AGENT_LABEL})]


@pytest.fixture(scope="module")
def overlay(hosts_lab: ScenarioState, tmp_path_factory: pytest.TempPathFactory) -> Trace:
    out = tmp_path_factory.mktemp("overlay") / "set"
    return api.trace("o1@hosta", "o2@hostb", count=2, interval=0.05, output_dir=out)


def test_the_overlay_between_two_hosts_is_one_journey_inner_and_outer(overlay: Trace) -> None:
    assert [(p.id, p.role) for p in overlay.points] == OVERLAY_PATH
    assert overlay.answered and len(overlay.verdicts) == 2
    with contextlib.closing(client_of(HOSTA)) as client:
        network = client.networks.get(lab_hosts.OVERLAY).attrs
    vni = int(network["Options"]["com.docker.network.driver.overlay.vxlanid_list"])
    o1 = _address(HOSTA, "o1", lab_hosts.OVERLAY)
    o2 = _address(HOSTB, "o2", lab_hosts.OVERLAY)
    for probe in range(2):
        packets = [p for p in overlay.packets if p.probe == probe]
        request, reply = one(packets, "request"), one(packets, "reply")
        assert [s.point for s in request.sightings] == [point for point, _ in OVERLAY_PATH]
        assert [s.point for s in reply.sightings] == [point for point, _ in OVERLAY_PATH][::-1]
        for sighting in request.sightings:
            assert (sighting.src, sighting.dst) == (o1, o2)  # the inner packet, everywhere
            outer = sighting.headers.outer
            if sighting.point in UNDERLAY:
                assert outer is not None
                assert (outer.vni, outer.dport) == (vni, 4789)
                assert (outer.src, outer.dst) == (HOSTA.lan_ip, HOSTB.lan_ip)
            else:
                assert outer is None
    (tunnel,) = _records(overlay, "tunnels")
    assert (tunnel["vni"], tunnel["network"], tunnel["from_host"], tunnel["to_host"]) == (
        vni,
        lab_hosts.OVERLAY,
        "hosta",
        "hostb",
    )
    assert f"overlay network {lab_hosts.OVERLAY}: VXLAN VNI {vni}" in " ".join(overlay.notes)


def test_the_merged_set_is_one_pcapng_with_both_hosts_and_one_id_per_packet(
    overlay: Trace,
) -> None:
    pcap = Path(str(overlay.meta["pcap"]))
    rows = tshark_fields(pcap, "frame.interface_name", "frame.packet_id", "vxlan.vni")
    names = {name for name, _, _ in rows}
    assert names == {point for point, _ in OVERLAY_PATH}
    by_id: dict[str, set[str]] = {}
    for name, packet_id, _ in rows:
        by_id.setdefault(packet_id, set()).add(name.split("/", 1)[0].rsplit("@", 1)[1])
    assert len(by_id) == 4 and all(hosts == {"hosta", "hostb"} for hosts in by_id.values())
    assert {vni for name, _, vni in rows if name in UNDERLAY} == {
        str(_records(overlay, "tunnels")[0]["vni"])
    }
    descriptions = {row[0] for row in tshark_fields(pcap, "frame.interface_description")}
    assert all("clock_offset_ns=" in d and "clock_error_ns=" in d for d in descriptions)
    manifest = json.loads((pcap.parent / "manifest.json").read_text())
    assert [h["name"] for h in manifest["hosts"]] == ["hosta", "hostb"]
    for entry in manifest["hosts"]:
        assert entry["engine"]["version"].startswith("20.10")
        assert entry["clock"]["exchanges"] >= 10 and entry["clock"]["error_ns"] > 0
        assert entry["agent"]["image"].startswith("flowtrace/agent:")
    assert [p["host"] for p in manifest["points"]] == [p.netns.host for p in overlay.points]


def test_analyze_and_load_read_the_set_back_with_the_hosts(overlay: Trace, tmp_path: Path) -> None:
    folder = Path(str(overlay.meta["pcap"])).parent
    loaded = api.load(folder)
    assert [p.id for p in loaded.points] == [p.id for p in overlay.points]
    assert [p.packet_id for p in loaded.packets] == [p.packet_id for p in overlay.packets]
    assert [s.point for s in loaded.packets[0].sightings] == [p for p, _ in OVERLAY_PATH]
    vni = _records(overlay, "tunnels")[0]["vni"]
    for sighting in loaded.packets[0].sightings:  # the outer headers, decoded again
        outer = sighting.headers.outer
        assert (outer.vni if outer else None) == (vni if sighting.point in UNDERLAY else None)
    done = run_cli("analyze", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    crossing = [h for h in document["hops"] if (h["from"], h["to"]) == UNDERLAY]
    assert crossing and crossing[0]["error_ns"] > 0
    assert all(
        h["error_ns"] == 0
        for h in document["hops"]
        if h["from"].split("@")[1].split("/")[0] == h["to"].split("@")[1].split("/")[0]
    )
    plotted = run_cli("plot", str(folder), "-o", str(tmp_path / "hosts.png"), "--kind", "timeline")
    assert plotted.returncode == 0, plotted.stderr
    assert (tmp_path / "hosts.png").stat().st_size > 10_000


def test_a_container_to_another_hosts_published_port_is_masqueraded_then_dnated(
    hosts_lab: ScenarioState,
) -> None:
    web = _address(HOSTB, "web", "bridge")
    c1 = _address(HOSTA, "c1", "bridge")
    trace = api.trace("c1@hosta", f"{HOSTB.lan_ip}:8080", kind="tcp", record=False)
    assert trace.answered, trace.verdicts
    assert trace.points[-1].id == "web@hostb/eth0" and trace.points[-1].role == "destination"
    request = one([p for p in trace.packets if p.probe == 0], "request")
    snat, dnat = request.nat
    assert (snat.kind, snat.between) == ("SNAT", ("host@hosta/docker0", "host@hosta/eth0"))
    assert (snat.before.ip, snat.after.ip) == (c1, HOSTA.lan_ip)
    assert snat.rule is not None and "MASQUERADE" in snat.rule and "10.213.1.0/24" in snat.rule
    assert snat.conntrack is not None and f"src={c1}" in snat.conntrack
    assert (dnat.kind, dnat.between) == ("DNAT", ("host@hostb/eth0", "host@hostb/docker0"))
    assert (str(dnat.before), str(dnat.after)) == (f"{HOSTB.lan_ip}:8080", f"{web}:80")
    assert dnat.rule is not None and f"--to-destination {web}:80" in dnat.rule
    assert dnat.conntrack is not None and f"dst={HOSTB.lan_ip} sport=" in dnat.conntrack
    assert any("published by container web" in note for note in trace.notes)


def test_macvlan_reaches_the_other_host_but_never_its_own(hosts_lab: ScenarioState) -> None:
    across = run_cli("ping", "m1@hosta", "m2@hostb", "--no-record")
    assert across.returncode == 0, across.stderr
    assert (
        "path: m1@hosta/eth0 -> host@hosta/eth0 -> host@hostb/eth0 -> m2@hostb/eth0"
        in across.stdout
    )
    own = run_cli("ping", "m1@hosta", "host@hosta", "--no-record", "--timeout", "0.5")
    assert own.returncode == ExitStatus.NO_REPLY, own.stderr
    assert "lost after host@hosta/eth0" in own.stdout
    assert "the macvlan driver never passes frames between a child and its own parent" in own.stdout


def _host_state(host: LabHost) -> dict[str, Any]:
    """What a trace must leave as it found it on a host: the engine's containers, images
    and networks; the host namespace's links (promiscuity), rules and nftables."""
    with contextlib.closing(client_of(host)) as client:
        engine = {
            "containers": sorted(c.id for c in client.containers.list(all=True)),
            "images": sorted(i.id for i in client.images.list()),
            "networks": sorted(n.id for n in client.networks.list()),
        }

    def inside(*command: str) -> str:
        done = subprocess.run(
            ["nsenter", f"--net={host.netns_path}", *command],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout

    links = {
        link["ifname"]: (link.get("promiscuity"), link.get("operstate"))
        for link in json.loads(inside("ip", "-j", "-d", "link", "show"))
    }
    rules = [line for line in inside("iptables-save").splitlines() if not line.startswith("#")]
    rules = [line.split(" [")[0] if line.startswith(":") else line for line in rules]  # counters
    return {**engine, "links": links, "rules": rules, "nft": inside("nft", "list", "ruleset")}


def test_the_helpers_are_there_while_it_runs_and_the_hosts_are_left_as_they_were(
    overlay: Trace,
) -> None:
    before = {host.name: _host_state(host) for host in HOSTS}
    during: dict[str, list[str]] = {}

    def look(probe: int) -> None:
        for host in HOSTS:
            during[host.name] = _helpers(host)

    trace = api.trace("o1@hosta", "o2@hostb", record=False, on_probe=look)
    assert trace.answered
    assert all(
        len(names) == 1 and names[0].startswith("flowtrace-agent-") for names in during.values()
    )
    assert {host.name: _host_state(host) for host in HOSTS} == before
    assert all(_helpers(host) == [] for host in HOSTS)


def test_on_a_host_not_the_labs_the_image_a_trace_imported_goes_with_it(
    overlay: Trace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab's hosts keep the helper image (their engines carry flowtrace.lab.host=1);
    any other host is left without it.  Here the lab's hosts are taken for others."""
    from flowtrace.endpoints import hosts as endpoint_hosts

    for host in HOSTS:  # as a host that never saw flowtrace
        with contextlib.closing(client_of(host)) as client:
            for image in client.images.list(filters={"label": f"{AGENT_LABEL}=1"}):
                client.images.remove(image.id, force=True)
    before = {host.name: _host_state(host) for host in HOSTS}
    monkeypatch.setattr(endpoint_hosts, "keeps_agent_image", lambda info: False)
    trace = api.trace("o1@hosta", "o2@hostb", record=False)
    assert trace.answered
    assert {host.name: _host_state(host) for host in HOSTS} == before


def test_a_killed_flowtrace_leaves_no_helper_behind(hosts_lab: ScenarioState) -> None:
    command = [sys.executable, "-m", "flowtrace", "ping", "o1@hosta", "o2@hostb", "-c", "100"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not all(_helpers(host) for host in HOSTS):
            assert process.poll() is None and time.monotonic() < deadline, "no helper started"
            time.sleep(0.1)
        os.kill(process.pid, signal.SIGKILL)  # no finally block of flowtrace's runs
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 20
    while any(_helpers(host) for host in HOSTS):
        assert time.monotonic() < deadline, {h.name: _helpers(h) for h in HOSTS}
        time.sleep(0.2)


def test_an_injected_clock_skew_is_measured_and_taken_off(
    hosts_lab: ScenarioState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    skew = 5_000_000  # host B's agent says its clock is 5 ms ahead
    monkeypatch.setenv("FLOWTRACE_AGENT_SKEW_NS", f"hostb={skew}")
    trace = api.trace("o1@hosta", "o2@hostb", output_dir=tmp_path / "set")
    clocks = {h["name"]: h["clock"] for h in _records(trace, "hosts")}
    assert abs(clocks["hostb"]["offset_ns"] - skew) <= clocks["hostb"]["error_ns"] + 200_000
    bound = clocks["hosta"]["error_ns"] + clocks["hostb"]["error_ns"]
    for packet in trace.packets:
        times = dict(
            zip(
                (s.point for s in packet.sightings),
                (s.time_ns for s in packet.sightings),
                strict=True,
            )
        )
        crossed = abs(times["host@hostb/eth0"] - times["host@hosta/eth0"])
        assert crossed <= bound + 1_000_000, (packet.direction, crossed, bound)  # not 5 ms
    descriptions = tshark_fields(Path(str(trace.meta["pcap"])), "frame.interface_description")
    on_b = {row[0] for row in descriptions if "host=hostb" in row[0]}
    assert on_b and all(f"clock_offset_ns={clocks['hostb']['offset_ns']}" in d for d in on_b)


def test_unknown_hosts_and_bad_host_options_are_one_line_each(hosts_lab: ScenarioState) -> None:
    assert_one_line_error(
        run_cli("ping", "o1@nosuchhost", "o2@hostb"),
        ExitStatus.NOT_FOUND,
        "no host named 'nosuchhost'",
    )
    assert_one_line_error(
        run_cli("ping", "o1@hosta", "o2@hostb", "--host", "hostb"), ExitStatus.USAGE, "bad --host"
    )
    assert_one_line_error(
        run_cli("ping", "nosuch@hosta", "o2@hostb"),
        ExitStatus.NOT_FOUND,
        "no container named 'nosuch' on host hosta",
    )
    assert_one_line_error(
        run_cli("ping", "c1", "o2@hostb"),
        ExitStatus.NO_PATH,
        "belongs to no host this trace knows",
    )

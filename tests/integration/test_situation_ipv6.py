"""IPv6 on the real engine and kernel (`lab up --scenario ipv6`).

v6a, v6b and v6web are on the dual-stack Docker network ftlab6 (fd6c:6162:3600::/64);
ft6-outside is an IPv6 outside host on 2001:db8:f6::/64 behind ft6-uplink.  All of it
runs on the lab's own dockerd in the namespace ft6-host (flowtrace.lab.own_engine),
started with "ip6tables" and "experimental", so the engine masquerades the network
towards ft6-uplink (NAT66) and DNATs v6web's port 8086 published on [::], in ft6-host's
ip6tables, while the machine's engine, rules and sysctls stay as they were (checked).
Each test runs inside ft6-host (`entered()`), as `flowtrace lab exec` runs commands.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from conftest import LabUsers
from test_trace import assert_in_path_order, host_veth_of, one, run_cli, tshark_fields

from flowtrace import api
from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import ExitStatus
from flowtrace.lab import ipv6 as lab_ipv6
from flowtrace.lab import own_engine, scenarios
from flowtrace.lab.scenarios import ScenarioState
from flowtrace.output.plot import hop_timeline

pytestmark = pytest.mark.integration

OUTSIDE6 = f"netns:{lab_ipv6.OUTSIDE6_NETNS}"
DNS_NAME = "web.ft6.test."  # a name of our own, answered by our own server
#: What of the lab must never show on the machine's own namespace and engine.
LAB_WORDS = ("fd6c:6162:3600", "2001:db8:f6", lab_ipv6.NETWORK, lab_ipv6.UPLINK6)
#: The machine's own namespace (the module is imported there), to look at it from inside.
ORIGIN_FD = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
#: The machine's engine, whatever DOCKER_HOST says while a test runs inside ft6-host.
MACHINE_ENGINE = "unix:///var/run/docker.sock"


def machine_facts() -> dict[str, Any]:
    """The machine's IPv6 forwarding, whether its ip6tables, links or engine show any
    of the lab, and its engine's networks (read in the caller's namespace)."""
    rules = subprocess.run(["ip6tables-save"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    knobs = {
        knob: Path(f"/proc/sys/net/ipv6/conf/{knob}/forwarding").read_text().strip()
        for knob in ("all", "default")
    }
    machine = docker.DockerClient(base_url=MACHINE_ENGINE)
    try:
        networks = sorted(n.name for n in machine.networks.list())
    finally:
        machine.close()
    return {
        "forwarding": knobs,
        "lab_in_rules": [w for w in LAB_WORDS if w in rules],
        "lab_in_links": [w for w in LAB_WORDS if w in links],
        "lab_networks": [n for n in networks if n == lab_ipv6.NETWORK],
    }


@pytest.fixture(scope="module")
def machine_before(root: None) -> dict[str, Any]:
    return machine_facts()


@pytest.fixture(scope="module")
def ipv6(machine_before: dict[str, Any], lab_users: LabUsers) -> Iterator[ScenarioState]:
    """The scenario on its own engine, for the module; removed afterwards (engine,
    namespaces, files) unless it was up before."""
    if shutil.which("dockerd") is None:
        pytest.skip("the IPv6 lab runs a dockerd of its own, and dockerd is not installed")
    was_up = scenarios.status(lab_ipv6.SCENARIO).complete
    state = scenarios.up(lab_ipv6.SCENARIO)
    assert state.complete, state.missing
    yield state
    if not was_up:
        removed = scenarios.down(lab_ipv6.SCENARIO)
        assert any(item.startswith("the IPv6 lab's own dockerd") for item in removed)
        assert not own_engine.present()
        assert not os.path.exists(lab_ipv6.OUTSIDE6_NETNS_PATH)


@pytest.fixture(autouse=True)
def inside(ipv6: ScenarioState, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test in ft6-host, flowtrace (and its CLI) asking the lab's engine."""
    monkeypatch.setenv("DOCKER_HOST", own_engine.HOST)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    with own_engine.entered():
        yield


def lab_client() -> Any:
    return docker.DockerClient(base_url=own_engine.HOST)


def address6(name: str) -> str:
    attrs = lab_client().api.inspect_container(name)
    return str(attrs["NetworkSettings"]["Networks"][lab_ipv6.NETWORK]["GlobalIPv6Address"])


def bridge6() -> str:
    network = lab_client().networks.get(lab_ipv6.NETWORK)
    return f"br-{network.id[:12]}"


def path_between(state: ScenarioState, a: str, b: str) -> list[str]:
    pa, pb = state.member(a).container.pid, state.member(b).container.pid
    return [
        f"{a}/eth0",
        f"host/{host_veth_of(pa)}",
        f"host/{bridge6()}",
        f"host/{host_veth_of(pb)}",
        f"{b}/eth0",
    ]


def test_the_scenario_is_dual_stack_with_an_ipv6_outside_host(ipv6: ScenarioState) -> None:
    subnet = lab_ipv6.SUBNET6.split("::")[0]
    for name in (lab_ipv6.A, lab_ipv6.B, lab_ipv6.WEB):
        assert address6(name).startswith(f"{subnet}::"), name
        assert ipv6.member(name).container.addresses[lab_ipv6.NETWORK]  # and IPv4
    inside = json.loads(
        subprocess.run(
            ["ip", "-n", lab_ipv6.OUTSIDE6_NETNS, "-j", "addr", "show", "eth0"],
            capture_output=True, text=True, check=True,
        ).stdout
    )[0]  # fmt: skip
    assert f"{lab_ipv6.OUTSIDE6_IP}/64" in [
        f"{a['local']}/{a['prefixlen']}" for a in inside["addr_info"] if a["family"] == "inet6"
    ]
    routes = subprocess.run(
        ["ip", "-n", lab_ipv6.OUTSIDE6_NETNS, "-6", "route"], capture_output=True, text=True
    ).stdout
    assert "default" not in routes  # it reaches nothing beyond ft6-host
    info = lab_client().info()
    assert info["ExperimentalBuild"] and info["Name"] == own_engine.HOSTNAME
    assert Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text().strip() == "1"  # ft6-host's


def test_the_machine_is_left_as_it_was(ipv6: ScenarioState, machine_before: dict[str, Any]) -> None:
    """Its engine's options, ip6tables, links and forwarding: none of the lab is there."""
    machine = run_in_netns(f"/proc/self/fd/{ORIGIN_FD}", machine_facts)
    assert machine == machine_before
    assert machine["lab_in_rules"] == machine["lab_in_links"] == machine["lab_networks"] == []
    assert not os.path.exists("/etc/docker/daemon.json") or (
        "ip6tables" not in Path("/etc/docker/daemon.json").read_text()
    )


def test_lab_exec_runs_flowtrace_on_the_labs_host(ipv6: ScenarioState) -> None:
    """From the machine's namespace, as a user types it."""
    shown = run_in_netns(
        f"/proc/self/fd/{ORIGIN_FD}",
        run_cli,
        "lab", "exec", "--", "flowtrace", "ping", "-6", lab_ipv6.A, lab_ipv6.B, "--json",
        "--no-record",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["verdict"]["probes"][0]["outcome"] == "replied"
    assert document["meta"]["dst_ip"] == address6(lab_ipv6.B)
    engine = document["meta"]["engine"]
    assert (engine["host"], engine["selected_by"]) == (own_engine.HOST, "DOCKER_HOST")


def test_container_to_container_over_ipv6_five_points_both_ways(ipv6: ScenarioState) -> None:
    expected = path_between(ipv6, lab_ipv6.A, lab_ipv6.B)
    trace = api.trace(lab_ipv6.A, lab_ipv6.B, count=2, interval=0.05, record=False, family=6)
    assert [p.id for p in trace.points] == expected
    assert trace.meta["dst_ip"] == address6(lab_ipv6.B) and trace.meta["family"] == 6
    assert [v.outcome for v in trace.verdicts] == ["replied", "replied"]
    for probe in (0, 1):
        packets = [p for p in trace.packets if p.probe == probe]
        request, reply = one(packets, "request"), one(packets, "reply")
        assert_in_path_order(request, expected)
        assert_in_path_order(reply, list(reversed(expected)))
        assert (request.first.headers.proto, request.first.headers.icmp_type) == (58, 128)
        assert (reply.first.headers.icmp_type, reply.first.headers.icmp_seq) == (129, probe)
        assert request.nat == () and reply.nat == ()
    assert not [p for p in trace.packets if p.first.headers.icmp_type in (135, 136)]


def test_both_families_the_rule_is_said_and_minus_4_or_6_chooses(ipv6: ScenarioState) -> None:
    points, notes = api.path(lab_ipv6.A, lab_ipv6.B)
    assert notes[0].startswith(f"address family: IPv4: {lab_ipv6.B} has ")
    assert "RFC 6724" in notes[0] and notes[0].endswith("-6 for IPv6")
    assert points[-1].id == f"{lab_ipv6.B}/eth0"
    _, six = api.path(lab_ipv6.A, lab_ipv6.B, family=6)
    assert six[0] == "address family: IPv6 (-6)"
    typed = run_cli("ping", "-4", lab_ipv6.A, address6(lab_ipv6.B), "--no-record")
    assert typed.returncode == ExitStatus.USAGE, typed.stderr
    assert typed.stderr.strip() == (
        f"flowtrace: {address6(lab_ipv6.B)} is an IPv6 address, but -4 asks for IPv4"
    )
    bare = run_cli("tcp", lab_ipv6.A, address6(lab_ipv6.B), "--no-record")
    assert bare.returncode == ExitStatus.USAGE
    assert f"[{address6(lab_ipv6.B)}]:PORT" in bare.stderr


@pytest.fixture(scope="module")
def to_outside(ipv6: ScenarioState, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("ipv6") / "nat66"
    with own_engine.entered():
        return api.trace(lab_ipv6.A, OUTSIDE6, count=1, output_dir=out), out


def test_container_to_the_ipv6_outside_host_through_nat66(
    ipv6: ScenarioState, to_outside: Any
) -> None:
    trace, _ = to_outside
    pa = ipv6.member(lab_ipv6.A).container.pid
    expected = [
        f"{lab_ipv6.A}/eth0",
        f"host/{host_veth_of(pa)}",
        f"host/{bridge6()}",
        f"host/{lab_ipv6.UPLINK6}",
        f"{lab_ipv6.OUTSIDE6_NETNS}/eth0",
    ]
    assert [p.id for p in trace.points] == expected
    assert trace.verdicts[0].outcome == "replied"
    request, reply = one(list(trace.packets), "request"), one(list(trace.packets), "reply")
    assert_in_path_order(request, expected)
    (snat,) = request.nat
    assert snat.kind == "SNAT" and snat.between == (expected[2], expected[3])
    assert (snat.before.ip, snat.after.ip) == (address6(lab_ipv6.A), lab_ipv6.UPLINK6_IP)
    assert snat.rule == f"-A POSTROUTING -s {lab_ipv6.SUBNET6} ! -o {bridge6()} -j MASQUERADE"
    assert snat.conntrack is not None and snat.conntrack.startswith("icmpv6   58 ")
    assert f"src={address6(lab_ipv6.A)} dst={lab_ipv6.OUTSIDE6_IP} type=128" in snat.conntrack
    (undo,) = reply.nat
    assert (undo.kind, undo.reverse_of, undo.after.ip) == ("DNAT", "SNAT", address6(lab_ipv6.A))


def test_the_nat66_set_reads_in_tshark_analyze_load_and_plots(
    to_outside: Any, tmp_path: Path
) -> None:
    trace, out = to_outside
    pcap = out / "trace.pcapng"
    rows = tshark_fields(
        pcap, "frame.interface_name", "frame.packet_id", "ipv6.src", "ipv6.flow",
        display_filter="icmpv6.type == 128 or icmpv6.type == 129",
    )  # fmt: skip
    request = [row for row in rows if row[1] == "1"]
    assert [row[0] for row in request] == [p.id for p in trace.points]
    assert request[3][2] == lab_ipv6.UPLINK6_IP  # masqueraded at the uplink
    # NAT66 rewrote the source, not the flow label: the probe's label reached the end
    assert len({row[3] for row in request}) == 1 and int(request[0][3], 16) != 0
    reply = [row for row in rows if row[1] == "2"]
    assert len(reply) == 5 and len({row[3] for row in reply}) == 1
    loaded = api.load(out)
    assert [p.packet_id for p in loaded.packets] == [p.packet_id for p in trace.packets]
    assert [ev.rule for ev in loaded.nat_events] == [ev.rule for ev in trace.nat_events]
    assert loaded.verdicts[0].outcome == "replied"
    analysed = run_cli("analyze", str(out), "--json")
    assert analysed.returncode == 0, analysed.stderr
    document = json.loads(analysed.stdout)
    assert document["packets"][0]["sightings"][3]["src"] == lab_ipv6.UPLINK6_IP
    assert document["nat"][0]["rule"].endswith("-j MASQUERADE")
    figure = hop_timeline(loaded)
    figure.savefig(tmp_path / "timeline.png")
    assert (tmp_path / "timeline.png").stat().st_size > 10_000


def test_outside_to_a_port_published_on_ipv6_is_dnated(ipv6: ScenarioState) -> None:
    target = f"[{lab_ipv6.UPLINK6_IP}]:{lab_ipv6.WEB_PORT6}"
    web = address6(lab_ipv6.WEB)
    shown = run_cli("tcp", OUTSIDE6, target, "--no-record")
    assert shown.returncode == 0, shown.stderr
    rule = (
        f"-A DOCKER ! -i {bridge6()} -p tcp -m tcp --dport {lab_ipv6.WEB_PORT6} -j DNAT "
        f"--to-destination [{web}]:80"
    )
    assert f"    rule:      {rule}" in shown.stdout  # brackets and all, as ip6tables-save prints
    assert f"DNAT {target} -> [{web}]:80" in shown.stdout
    trace = api.trace(OUTSIDE6, target, kind="tcp", record=False)
    assert trace.verdicts[0].outcome == "replied"
    assert trace.points[-1].id == f"{lab_ipv6.WEB}/eth0"
    syn = next(p for p in trace.packets if p.direction == "request")
    (dnat,) = syn.nat
    assert (str(dnat.before), str(dnat.after)) == (target, f"[{web}]:80")
    assert dnat.between == (f"host/{lab_ipv6.UPLINK6}", f"host/{bridge6()}")
    assert dnat.rule == rule and dnat.conntrack is not None
    synack = one(list(trace.packets), "reply")
    assert synack.nat[0].reverse_of == "DNAT"


def test_the_host_to_its_ipv6_loopback_port_is_docker_proxys(ipv6: ScenarioState) -> None:
    trace = api.trace("host", f"[::1]:{lab_ipv6.WEB_PORT6}", kind="tcp", record=False)
    assert trace.verdicts[0].outcome == "replied"
    assert (
        "docker-proxy pid" in trace.verdicts[0].detail and "[::]:8086" in trace.verdicts[0].detail
    )
    proxy = trace.meta["proxy"]
    assert isinstance(proxy, dict) and proxy["listen"] == f"[::]:{lab_ipv6.WEB_PORT6}"
    assert proxy["target"] == f"[{address6(lab_ipv6.WEB)}]:80"
    leg1, leg2 = proxy["legs"]
    assert leg1["points"] == ["host/lo"] and leg1["packets"]
    assert leg2["points"][-1] == f"{lab_ipv6.WEB}/eth0" and leg2["packets"]


def test_an_icmpv6_error_through_nat66_is_matched_to_the_probe_it_quotes(
    ipv6: ScenarioState,
) -> None:
    """UDP to a closed port of the outside host: the port unreachable quotes the
    masqueraded datagram, and conntrack puts the error's addresses (and its quote's)
    back on the way in."""
    target = f"[{lab_ipv6.OUTSIDE6_IP}]:9"
    trace = api.trace(lab_ipv6.A, target, kind="udp", record=False)
    (verdict,) = trace.verdicts
    assert verdict.outcome == "refused"
    assert verdict.detail == (
        f"ICMPv6 port unreachable from {lab_ipv6.OUTSIDE6_IP}: nothing listens on 9/udp"
    )
    request, error = one(list(trace.packets), "request"), one(list(trace.packets), "reply")
    assert (error.first.headers.proto, error.first.headers.icmp_type) == (58, 1)
    assert error.first.headers.inner is not None
    assert error.first.headers.inner.src == lab_ipv6.UPLINK6_IP  # the quote, as it left
    assert error.last.headers.inner is not None
    assert error.last.headers.inner.src == address6(lab_ipv6.A)  # put back with the error
    (snat,) = request.nat
    assert snat.rule == f"-A POSTROUTING -s {lab_ipv6.SUBNET6} ! -o {bridge6()} -j MASQUERADE"
    assert error.nat[0].reverse_of == "SNAT"


@pytest.fixture
def link_local_route(ipv6: ScenarioState) -> Iterator[str]:
    """ft6-outside given a route to ftlab6's subnet via ft6-uplink's link-local address,
    as a router advertisement would; removed afterwards."""
    shown = subprocess.run(
        ["ip", "-j", "-6", "addr", "show", "dev", lab_ipv6.UPLINK6],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    (gateway,) = [a["local"] for a in json.loads(shown)[0]["addr_info"] if a.get("scope") == "link"]
    route = [lab_ipv6.SUBNET6, "via", gateway, "dev", lab_ipv6.OUTSIDE6_IFNAME]
    inside = ["ip", "-n", lab_ipv6.OUTSIDE6_NETNS, "-6", "route"]
    subprocess.run([*inside, "add", *route], check=True)
    try:
        yield gateway
    finally:
        subprocess.run([*inside, "del", *route], check=True)


def test_a_link_local_next_hop_is_walked_and_the_forward_policy_named(
    ipv6: ScenarioState, link_local_route: str
) -> None:
    web, a = address6(lab_ipv6.WEB), address6(lab_ipv6.A)
    points, notes = api.path(OUTSIDE6, f"[{web}]:80", kind="tcp")
    assert [p.id for p in points][:3] == [
        f"{lab_ipv6.OUTSIDE6_NETNS}/eth0", f"host/{lab_ipv6.UPLINK6}", f"host/{bridge6()}"
    ]  # fmt: skip
    assert points[-1].id == f"{lab_ipv6.WEB}/eth0"
    assert any(f"via the link-local next hop {link_local_route} on eth0" in n for n in notes)
    # Docker's DOCKER chain accepts the published port's container port from outside...
    opened = api.trace(OUTSIDE6, f"[{web}]:80", kind="tcp", record=False)
    assert opened.verdicts[0].outcome == "replied"
    assert one(list(opened.packets), "request").nat == ()  # routed, not NATed
    # ...and nothing else: FORWARD's policy drops an echo to another container
    lost = api.trace(OUTSIDE6, a, count=1, timeout=1.0, record=False)
    (verdict,) = lost.verdicts
    assert verdict.outcome == "lost" and verdict.last_point == f"host/{lab_ipv6.UPLINK6}"
    assert verdict.rule == "-P FORWARD DROP"
    assert f"from {lab_ipv6.UPLINK6} to {bridge6()}" in verdict.detail


@pytest.fixture
def solicitation_dropper(ipv6: ScenarioState) -> Iterator[str]:
    """A container of the test's own on ftlab6 whose ip6tables drop neighbour
    solicitations; removed afterwards with its namespace, rules and all, and v6a's
    neighbour entry for it with it."""
    client = lab_client()
    name = f"ft6-ndp-{secrets.token_hex(3)}"
    container = client.containers.run(
        "flowtrace-lab/busybox:1", ["sleep", "600"], name=name, network=lab_ipv6.NETWORK,
        detach=True, labels={"flowtrace.test": "ipv6"},
    )  # fmt: skip
    flush = ["nsenter", "-t", str(ipv6.member(lab_ipv6.A).container.pid), "-n", "ip", "-6"]
    try:
        container.reload()
        pid = container.attrs["State"]["Pid"]
        subprocess.run(
            ["nsenter", "-t", str(pid), "-n", "ip6tables", "-A", "INPUT", "-p", "ipv6-icmp",
             "--icmpv6-type", "neighbour-solicitation", "-j", "DROP"],
            check=True,
        )  # fmt: skip
        address = address6(name)
        subprocess.run([*flush, "neigh", "flush", "to", address], check=True)
        yield name
        subprocess.run([*flush, "neigh", "flush", "to", address], check=True)
    finally:
        container.remove(force=True)


def test_a_blocked_ipv6_path_is_explained_with_ndp(
    ipv6: ScenarioState, solicitation_dropper: str, tmp_path: Path
) -> None:
    name = solicitation_dropper
    started = time.monotonic()
    trace = api.trace(lab_ipv6.A, name, count=1, timeout=1.5, output_dir=tmp_path / "set", family=6)
    assert time.monotonic() - started < 10
    (verdict,) = trace.verdicts
    assert verdict.outcome == "lost" and verdict.last_point == f"{name}/eth0"
    target = address6(name)
    assert verdict.detail.startswith(
        f"never left {lab_ipv6.A}: its neighbour solicitations for {target} ("
    )
    assert f"seen at {lab_ipv6.A}/eth0, " in verdict.detail
    assert f"and {name}/eth0) got no neighbour advertisement: {name} dropped them by " in (
        verdict.detail
    )
    assert verdict.rule == "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j DROP"
    assert trace.packets == ()  # the probe never left: only its solicitations did
    rows = tshark_fields(
        tmp_path / "set" / "trace.pcapng", "frame.interface_name", "icmpv6.nd.ns.target_address",
        display_filter="icmpv6.type == 135",
    )  # fmt: skip
    assert {row[0] for row in rows} >= {f"{lab_ipv6.A}/eth0", f"{name}/eth0"}
    assert {row[1] for row in rows} == {target}
    shown = run_cli("analyze", str(tmp_path / "set"))
    assert re.search(r"frames \(0 not IP, \d+ NDP\), 0 packets", shown.stdout), shown.stdout


def test_dns_aaaa_from_dockers_embedded_dns(ipv6: ScenarioState) -> None:
    lookup = api.dns_lookup(lab_ipv6.A, lab_ipv6.B, "AAAA", record=False)
    assert lookup.rcode == "NOERROR" and lookup.server == "127.0.0.11"
    assert any(f"IN AAAA {address6(lab_ipv6.B)}" in record for record in lookup.records)


@pytest.fixture
def resolver6(ipv6: ScenarioState) -> Iterator[str]:
    """A DNS server of the test's own in ft6-outside, answering AAAA for DNS_NAME."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab_ipv6.OUTSIDE6_NETNS, sys.executable, "-c", DNS_SERVER,
         lab_ipv6.OUTSIDE6_IP, DNS_NAME],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield lab_ipv6.OUTSIDE6_IP
    finally:
        server.kill()
        server.wait()


DNS_SERVER = """
import socket, sys
import dns.message, dns.rrset
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    query = dns.message.from_wire(data)
    answer = dns.message.make_response(query)
    if str(query.question[0].name) == sys.argv[2]:
        answer.answer.append(dns.rrset.from_text(sys.argv[2], 60, "IN", "AAAA", "2001:db8:f6::80"))
    sock.sendto(answer.to_wire(), peer)
"""


def test_dns_over_an_ipv6_resolver_through_nat66(resolver6: str) -> None:
    lookup = api.dns_lookup(lab_ipv6.A, DNS_NAME, "AAAA", server=resolver6, record=False)
    assert lookup.rcode == "NOERROR", lookup.error
    assert lookup.records == (f"{DNS_NAME} 60 IN AAAA 2001:db8:f6::80",)
    assert lookup.sent_from is not None and lookup.sent_from.ip == address6(lab_ipv6.A)
    assert lookup.query is not None and lookup.query.last.src == lab_ipv6.UPLINK6_IP
    (snat,) = lookup.query.nat
    assert snat.rule is not None and snat.rule.endswith("-j MASQUERADE")
    assert lookup.server_process is not None and "(pid " in lookup.server_process
    assert lookup.answer is not None and lookup.answer.nat[0].reverse_of == "SNAT"

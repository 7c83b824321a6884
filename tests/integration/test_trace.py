"""The tracer against the real lab: real Docker, namespaces, veths, bridges and iptables NAT."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowtrace import api
from flowtrace import lab as lab_module
from flowtrace.errors import ExitStatus
from flowtrace.lab import LabState
from flowtrace.model import Packet, Trace

pytestmark = pytest.mark.integration

FLOWTRACE = [sys.executable, "-m", "flowtrace"]
OUTSIDE = f"netns:{lab_module.OUTSIDE_NETNS}"


def run_cli(
    *args: str, env: dict[str, str] | None = None, user: int | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    command = [*FLOWTRACE, *args]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=Path(__file__).parents[2],
    )


def tshark_fields(
    pcap: Path | str, *fields: str, display_filter: str | None = None
) -> list[list[str]]:
    """Rows of `tshark -T fields` on a capture file: what Wireshark users would see."""
    command = ["tshark", "-r", str(pcap), "-T", "fields"]
    if display_filter:
        command += ["-Y", display_filter]
    for name in fields:
        command += ["-e", name]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def host_veth_of(container_pid: int) -> str:
    """The host-side name of a container's eth0 peer, as `ip link` reports it (iflink)."""
    inside = subprocess.run(
        ["nsenter", f"--net=/proc/{container_pid}/ns/net", "ip", "-j", "link", "show", "eth0"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    peer_index = json.loads(inside)[0]["link_index"]
    host = json.loads(
        subprocess.run(
            ["ip", "-j", "link", "show"], capture_output=True, text=True, check=True
        ).stdout
    )
    for link in host:
        if link["ifindex"] == peer_index:
            return str(link["ifname"])
    raise AssertionError(f"no host interface with ifindex {peer_index}")


def one(packets: list[Packet], direction: str) -> Packet:
    found = [p for p in packets if p.direction == direction]
    assert found, f"no {direction} packet among {[(p.direction, p.first) for p in packets]}"
    return found[0]


def assert_in_path_order(pkt: Packet, order: list[str]) -> None:
    points = [s.point for s in pkt.sightings]
    assert points == order, f"{pkt.direction} seen at {points}, expected {order}"
    times = [s.time_ns for s in pkt.sightings]
    assert times == sorted(times), f"{pkt.direction} timestamps not in path order: {times}"


@pytest.fixture(scope="module")
def ping_c1_c2(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Trace:
    out = tmp_path_factory.mktemp("ping") / "set"
    return api.trace("c1", "c2", count=2, interval=0.05, timeout=2, output_dir=out)


def test_c1_to_c2_crosses_five_points_both_ways(lab: LabState, ping_c1_c2: Trace) -> None:
    c1, c2 = lab.container("c1"), lab.container("c2")
    assert c1 is not None and c2 is not None and c1.pid and c2.pid
    expected = [
        "c1/eth0",
        f"host/{host_veth_of(c1.pid)}",
        "host/docker0",
        f"host/{host_veth_of(c2.pid)}",
        "c2/eth0",
    ]
    assert [p.id for p in ping_c1_c2.points] == expected
    assert [v.outcome for v in ping_c1_c2.verdicts] == ["replied", "replied"]
    for probe in (0, 1):
        packets = [p for p in ping_c1_c2.packets if p.probe == probe]
        assert_in_path_order(one(packets, "request"), expected)
        assert_in_path_order(one(packets, "reply"), list(reversed(expected)))
        assert all(not p.nat for p in packets)
    rtt = ping_c1_c2.verdicts[0].rtt_ns
    assert rtt is not None and 0 < rtt < 1_000_000_000


def test_pcap_set_names_points_and_shares_packet_ids(ping_c1_c2: Trace) -> None:
    pcap = Path(str(ping_c1_c2.meta["pcap"]))
    manifest = json.loads((pcap.parent / "manifest.json").read_text())
    assert manifest["complete"] is True
    assert [p["id"] for p in manifest["points"]] == [p.id for p in ping_c1_c2.points]
    fields = subprocess.run(
        [
            "tshark",
            "-r",
            str(pcap),
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.packet_id",
            "-e",
            "frame.comment",
            "-e",
            "frame.interface_description",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    rows = [line.split("\t") for line in fields]
    assert len(rows) == 20  # 2 probes x (request + reply) x 5 points
    by_id: dict[str, list[str]] = {}
    for name, packet_id, comment, description in rows:
        by_id.setdefault(packet_id, []).append(name)
        assert f"at {name}" in comment
        assert "role=" in description
    assert len(by_id) == 4
    for names in by_id.values():
        assert sorted(names) == sorted(p.id for p in ping_c1_c2.points)


def test_by_name_on_the_user_defined_bridge(lab: LabState) -> None:
    trace = api.trace("c3", "c4", count=1, record=False)
    ids = [p.id for p in trace.points]
    network = lab.network(lab_module.LAB_NETWORK)
    assert network is not None
    assert ids[0] == "c3/eth0" and ids[-1] == "c4/eth0"
    assert f"host/{network.bridge}" in ids and "host/docker0" not in ids
    assert trace.verdicts[0].outcome == "replied"


def test_container_to_outside_is_masqueraded_at_the_uplink(lab: LabState) -> None:
    trace = api.trace("c1", OUTSIDE, count=1, record=False)
    c1 = lab.container("c1")
    assert c1 is not None
    journey = [
        "c1/eth0",
        f"host/{host_veth_of(c1.pid)}",
        "host/docker0",
        f"host/{lab_module.UPLINK}",
        f"{lab_module.OUTSIDE_NETNS}/eth0",
    ]
    assert [p.id for p in trace.points] == journey
    assert trace.verdicts[0].outcome == "replied"
    request = one(list(trace.packets), "request")
    assert_in_path_order(request, journey)
    snat = [ev for ev in request.nat if ev.kind == "SNAT"]
    assert len(snat) == 1
    ev = snat[0]
    assert ev.between == ("host/docker0", f"host/{lab_module.UPLINK}")
    assert ev.before.ip == c1.ip and ev.after.ip == lab_module.UPLINK_IP
    assert ev.rule is not None and "MASQUERADE" in ev.rule and "POSTROUTING" in ev.rule
    assert ev.conntrack is not None and f"src={c1.ip}" in ev.conntrack
    reply = one(list(trace.packets), "reply")
    assert_in_path_order(reply, list(reversed(journey)))
    assert [(e.kind, e.reverse_of) for e in reply.nat] == [("DNAT", "SNAT")]
    assert reply.nat[0].between == (f"host/{lab_module.UPLINK}", "host/docker0")
    assert reply.nat[0].after.ip == c1.ip
    assert [s.dst for s in reply.sightings] == [lab_module.UPLINK_IP] * 2 + [c1.ip] * 3


def test_outside_to_published_port_is_dnated_to_web(lab: LabState) -> None:
    trace = api.trace(
        OUTSIDE, f"{lab_module.UPLINK_IP}:{lab_module.WEB_PORT}", kind="tcp", count=1, record=False
    )
    web = lab.container(lab_module.WEB_CONTAINER)
    assert web is not None
    ids = [p.id for p in trace.points]
    assert ids[0] == f"{lab_module.OUTSIDE_NETNS}/eth0" and ids[-1] == "web/eth0"
    assert trace.verdicts[0].outcome == "replied"
    assert "SYN-ACK" in trace.verdicts[0].detail
    syn = next(
        p for p in trace.packets if p.direction == "request" and p.first.headers.tcp_flags == 0x02
    )
    dnat = [ev for ev in syn.nat if ev.kind == "DNAT"]
    assert len(dnat) == 1
    ev = dnat[0]
    assert (ev.before.ip, ev.before.port) == (lab_module.UPLINK_IP, lab_module.WEB_PORT)
    assert (ev.after.ip, ev.after.port) == (web.ip, lab_module.WEB_CONTAINER_PORT)
    assert ev.between[0] == f"host/{lab_module.UPLINK}"
    assert ev.rule is not None and "DNAT" in ev.rule and f"{web.ip}:80" in ev.rule
    assert ev.conntrack is not None and "dport=8080" in ev.conntrack
    synack = next(p for p in trace.packets if p.direction == "reply")
    assert [(e.kind, e.reverse_of) for e in synack.nat] == [("SNAT", "DNAT")]
    assert synack.nat[0].after.port == lab_module.WEB_PORT


@pytest.mark.parametrize(
    ("src", "dst", "first", "last"),
    [
        ("host", "c1", "host/docker0", "c1/eth0"),
        ("c1", "host", "c1/eth0", "host/docker0"),
    ],
)
def test_host_and_container(lab: LabState, src: str, dst: str, first: str, last: str) -> None:
    trace = api.trace(src, dst, count=1, record=False)
    assert trace.points[0].id == first and trace.points[-1].id == last
    assert trace.verdicts[0].outcome == "replied"


def test_json_document(lab: LabState, tmp_path: Path) -> None:
    result = run_cli("ping", "c1", "c2", "--json", "-o", str(tmp_path / "set"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["points"][0]["id"] == "c1/eth0"
    assert {"id", "netns", "ifname", "role"} <= set(doc["points"][0])
    packet = doc["packets"][0]
    assert packet["direction"] == "request"
    sighting = packet["sightings"][0]
    assert {"point", "time_ns", "src", "dst", "sport", "dport", "icmp_id"} <= set(sighting)
    assert sighting["sport"] is None and isinstance(sighting["icmp_id"], int)
    assert doc["verdict"]["probes"][0]["outcome"] == "replied"
    assert doc["verdict"]["loss_percent"] == 0.0


def _promiscuity(ifname: str) -> str:
    return subprocess.run(
        ["ip", "-d", "-j", "link", "show", ifname], capture_output=True, text=True, check=True
    ).stdout


def _nat_rules() -> str:
    text = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in text.splitlines() if not line.startswith(("#", ":")))


def test_a_whole_trace_loads_neither_the_docker_sdk_nor_what_it_does_not_use(
    lab: LabState,
) -> None:
    """Import-time tests see only what modules import; a trace also imports at run time
    (its fault watcher once took the Docker SDK for container events: 90 ms a ping), and
    a trace on this host with --rules model needs neither the hosts' connections nor the
    kernel's trace (30 ms)."""
    script = (
        "import json, sys\n"
        "from flowtrace import api\n"
        "t = api.run_trace('c1', 'c2', api.TraceOptions(count=1, record=False))\n"
        "assert t.packets, 'no packet traced'\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('docker', 'requests', 'urllib3', 'scapy', 'asyncio') or m in "
        "('flowtrace.endpoints.hosts', 'flowtrace.topology.crossing', "
        "'flowtrace.run.kernel_word'))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_a_trace_leaves_the_host_as_it_was(lab: LabState) -> None:
    before = (
        json.loads(_promiscuity("docker0"))[0]["promiscuity"],
        _nat_rules(),
        sorted(os.listdir("/run/netns")),
    )
    result = run_cli("ping", "c1", "c2", "--no-record")
    assert result.returncode == 0, result.stderr
    after = (
        json.loads(_promiscuity("docker0"))[0]["promiscuity"],
        _nat_rules(),
        sorted(os.listdir("/run/netns")),
    )
    assert before == after


@pytest.fixture
def scratch_container(lab: LabState) -> Iterator[Any]:
    """Containers this test makes from the lab image, removed afterwards."""
    import docker

    client = docker.from_env()
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        name = f"fttest-{secrets.token_hex(3)}"
        container = client.containers.create(
            lab_module.IMAGE, ["sleep", "3600"], name=name, labels={"flowtrace.test": "1"}, **kwargs
        )
        made.append(container)
        return container

    yield make
    for container in made:
        container.remove(force=True)


def test_bad_inputs_get_one_line_and_distinct_codes(lab: LabState, scratch_container: Any) -> None:
    stopped = scratch_container()
    lonely = scratch_container(network_mode="none")
    lonely.start()
    cases = [
        (("ping", "c1", "no-such-container"), ExitStatus.NOT_FOUND, "no container named"),
        (("ping", stopped.name, "c1"), ExitStatus.NOT_RUNNING, "not running"),
        (("ping", lonely.name, "c1"), ExitStatus.NO_PATH, "no interface but lo"),
        (("tcp", "c1", "c2:99999"), ExitStatus.USAGE, "bad port"),
        (("tcp", "c1", "c2"), ExitStatus.USAGE, "needs a destination port"),
        (("ping", "netns:nope", "c1"), ExitStatus.NOT_FOUND, "no network namespace named"),
        (("ping", "pid:999999999", "c1"), ExitStatus.NOT_FOUND, "no process"),
    ]
    for args, status, words in cases:
        result = run_cli(*args)
        assert result.returncode == status, (args, result.returncode, result.stderr)
        assert words in result.stderr, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "Traceback" not in result.stderr


def test_not_root_says_so(lab: LabState) -> None:
    result = run_cli("ping", "c1", "c2", user=65534)
    assert result.returncode == ExitStatus.NOT_ROOT, result.stderr
    assert "root" in result.stderr and "Traceback" not in result.stderr


def test_without_docker_netns_endpoints_still_work(lab: LabState) -> None:
    broken = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = run_cli("ping", "c1", "c2", env=broken)
    assert result.returncode == ExitStatus.NO_DOCKER, result.stderr
    assert "Docker engine does not answer" in result.stderr
    result = run_cli("ping", OUTSIDE, "host", "--no-record", env=broken)
    assert result.returncode == 0, result.stderr
    assert "replied" in result.stdout


def test_ctrl_c_keeps_what_was_recorded(lab: LabState, tmp_path: Path) -> None:
    import signal
    import time

    out = tmp_path / "set"
    proc = subprocess.Popen(
        [*FLOWTRACE, "ping", "c1", "c2", "-c", "1000", "-i", "0.05", "-o", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    manifest = out / "manifest.json"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (
        not manifest.exists() or (out / "trace.pcapng").stat().st_size < 2000
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == ExitStatus.INTERRUPTED, stderr
    assert "Traceback" not in stderr
    assert "pcap set:" in stdout
    doc = json.loads(manifest.read_text())
    assert doc["interrupted"] is True and doc["complete"] is True
    read = subprocess.run(
        ["tshark", "-r", str(out / "trace.pcapng"), "-T", "fields", "-e", "frame.packet_id"],
        capture_output=True,
        text=True,
    )
    assert read.returncode == 0, read.stderr
    ids = [line for line in read.stdout.splitlines() if line]
    assert len(ids) >= 10
    counts = {i: ids.count(i) for i in set(ids)}
    assert sum(1 for n in counts.values() if n == 5) >= len(counts) - 1  # whole journeys


def test_udp_to_a_closed_port_is_refused_by_icmp(lab: LabState) -> None:
    trace = api.trace("c1", "c2:9999", kind="udp", count=1, record=False)
    verdict = trace.verdicts[0]
    assert verdict.outcome == "refused"
    assert "port unreachable" in verdict.detail and "9999/udp" in verdict.detail
    error = one(list(trace.packets), "reply")
    assert error.first.headers.icmp_type == 3 and error.first.point == "c2/eth0"
    assert error.last.point == "c1/eth0"


def test_pid_endpoint_is_named_after_its_container(lab: LabState) -> None:
    c1 = lab.container("c1")
    assert c1 is not None
    trace = api.trace(f"pid:{c1.pid}", "c2", count=1, record=False)
    assert trace.points[0].id == "c1/eth0"
    assert trace.verdicts[0].outcome == "replied"


def test_other_traffics_icmp_errors_stay_out_of_a_trace(lab: LabState, tmp_path: Path) -> None:
    """The filter passes every ICMP error; errors about packets no probe sent are dropped.

    While c1 pings c2, another flowtrace sends UDP from c2 to a closed port of c1: c1's
    port-unreachable errors (as many as its ICMP rate limit lets out) cross all five
    points of the ping's path.
    """
    noise = subprocess.Popen(
        [*FLOWTRACE, "udp", "c2", "c1:9", "-c", "30", "-i", "0.1", "-o", str(tmp_path / "noise")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).parents[2],
    )
    try:
        ping = tmp_path / "ping"
        result = run_cli("ping", "c1", "c2", "-c", "6", "-i", "0.25", "--json", "-o", str(ping))
    finally:
        noise.wait(timeout=60)
    assert result.returncode == 0, result.stderr
    ping_times = [float(r[0]) for r in tshark_fields(ping / "trace.pcapng", "frame.time_epoch")]
    errors = tshark_fields(
        tmp_path / "noise" / "trace.pcapng", "frame.time_epoch", display_filter="icmp.type == 3"
    )
    during = [t for (t,) in errors if min(ping_times) <= float(t) <= max(ping_times)]
    assert during, "no ICMP error crossed the path while the ping ran: the test proves nothing"

    doc = json.loads(result.stdout)
    assert [p["probe"] for p in doc["packets"]] == [n for n in range(6) for _ in (0, 1)]
    rows = tshark_fields(ping / "trace.pcapng", "icmp.type")
    assert sorted(r[0] for r in rows) == ["0"] * 30 + ["8"] * 30  # 6 x 5 points each way


def _iptables_in(container: Any, *args: str) -> None:
    container.reload()
    pid = str(container.attrs["State"]["Pid"])
    subprocess.run(["nsenter", "-t", pid, "-n", "iptables", *args], check=True)


def test_a_destination_firewall_is_named_for_a_delivered_probe(
    lab: LabState, scratch_container: Any
) -> None:
    """Seen arriving at the destination yet unanswered: its INPUT chain dropped the request,
    or its OUTPUT chain the answer (a scratch container's own rules; it is removed after)."""
    target = scratch_container()
    target.start()
    _iptables_in(target, "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-j", "DROP")
    dropped_in = api.trace("c1", target.name, count=1, timeout=1.0, record=False)
    (verdict,) = dropped_in.verdicts
    assert (verdict.outcome, verdict.last_point) == ("lost", f"{target.name}/eth0")
    assert verdict.detail == (
        f"dropped in {target.name} by `-A INPUT -p icmp -m icmp --icmp-type 8 -j DROP`, "
        "filter chain INPUT from eth0"
    )

    _iptables_in(target, "-F", "INPUT")
    _iptables_in(target, "-P", "OUTPUT", "DROP")
    dropped_out = api.trace("c1", target.name, count=1, timeout=1.0, record=False)
    (verdict,) = dropped_out.verdicts
    assert (verdict.outcome, verdict.last_point) == ("lost", f"{target.name}/eth0")
    assert verdict.detail.startswith(
        f"the answer was dropped in {target.name} by `-P OUTPUT DROP`, filter chain OUTPUT to eth0"
    )

    _iptables_in(target, "-P", "OUTPUT", "ACCEPT")
    answered = api.trace("c1", target.name, count=1, timeout=1.0, record=False)
    assert answered.verdicts[0].outcome == "replied"

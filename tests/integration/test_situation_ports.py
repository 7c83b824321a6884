"""Published ports, every form (`lab up --scenario ports`), on the real engine.

`-p 8080:80` (the base lab's web), `-p 80` (pub-random), `-p 127.0.0.1::80`
(pub-loopback), `-p 203.0.113.1:9999:80` (pub-9999) and `-P` (pub-all), traced from
the outside host (netns ft-outside) and from the Docker host itself, where a
connection to 127.0.0.1 is carried by docker-proxy rather than DNAT.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_trace import OUTSIDE, host_veth_of, one, run_cli, tshark_fields

from flowtrace import api
from flowtrace import lab as lab_module
from flowtrace.errors import ExitStatus
from flowtrace.lab import LabContainer, LabState, scenarios
from flowtrace.lab.scenarios import ScenarioState
from flowtrace.model import Packet, Trace

pytestmark = pytest.mark.integration

UPLINK = lab_module.UPLINK_IP
GATEWAY = "172.17.0.1"  # docker0's address (checked against the lab's network below)
LOCAL_STACK = "host (local stack)"
#: Containers that some DNAT reaches from the outside host, with how they publish port 80.
DNAT_FORMS = ("web", "pub-random", "pub-9999", "pub-all")


@pytest.fixture(scope="module")
def ports(lab: LabState) -> Iterator[ScenarioState]:
    """The ports scenario; removed at the end only when this module built it."""
    was_up = scenarios.status("ports").complete
    state = scenarios.up("ports")
    assert lab.network(lab_module.DEFAULT_NETWORK).gateway == GATEWAY
    yield state
    if not was_up:
        scenarios.down("ports")


def container(state: ScenarioState, name: str) -> LabContainer:
    return state.lab.container(name) if name == "web" else state.member(name).container


def host_port(state: ScenarioState, name: str) -> int:
    """The IPv4 host port Docker published for the container's port 80."""
    for text in container(state, name).ports:
        host_ip, port, inner = scenarios.split_binding(text)
        if inner == "80/tcp" and ":" not in host_ip:
            return port
    raise AssertionError(f"{name} publishes no IPv4 port: {container(state, name).ports}")


def docker_port(name: str) -> list[str]:
    """`docker port NAME 80`, as a user would ask."""
    out = subprocess.run(
        ["docker", "port", name, "80"], capture_output=True, text=True, check=True
    ).stdout
    return sorted(line.strip() for line in out.splitlines() if line.strip())


def proxy_pid(host_ip: str, port: int) -> int:
    """The docker-proxy started for host_ip:port, found from `ps`, not by flowtrace."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,args="], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        words = args.split()
        if (
            words
            and words[0].endswith("docker-proxy")
            and words[words.index("-host-ip") + 1] == host_ip
            and words[words.index("-host-port") + 1] == str(port)
        ):
            return int(pid)
    raise AssertionError(f"no docker-proxy for {host_ip}:{port} in ps")


def syn_of(trace: Trace) -> Packet:
    return next(
        p for p in trace.packets if p.direction == "request" and p.first.headers.tcp_flags == 0x02
    )


# --- the scenario ---------------------------------------------------------------------


def test_every_form_is_published_as_docker_run_would(ports: ScenarioState) -> None:
    assert docker_port("web") == ["0.0.0.0:8080", "[::]:8080"]
    random_port = host_port(ports, "pub-random")
    assert random_port != 80 and f"0.0.0.0:{random_port}" in docker_port("pub-random")
    loopback = host_port(ports, "pub-loopback")
    assert docker_port("pub-loopback") == [f"127.0.0.1:{loopback}"]
    assert docker_port("pub-9999") == [f"{UPLINK}:9999"]
    every = host_port(ports, "pub-all")
    assert f"0.0.0.0:{every}" in docker_port("pub-all")
    attrs = json.loads(
        subprocess.run(
            ["docker", "inspect", "pub-all"], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    assert attrs["HostConfig"]["PublishAllPorts"] is True
    assert attrs["HostConfig"]["PortBindings"] in ({}, {"80/tcp": []}, None)
    assert list(attrs["Config"]["ExposedPorts"]) == ["80/tcp"]
    assert len({random_port, loopback, every, 9999, 8080}) == 5


def test_lab_up_lists_each_published_port_and_its_commands(ports: ScenarioState) -> None:
    built = run_cli("lab", "up", "--scenario", "ports")
    assert built.returncode == 0, built.stderr
    out = built.stdout
    assert "scenario ports: published ports, every form" in out
    loopback = host_port(ports, "pub-loopback")
    for name in DNAT_FORMS:
        port = host_port(ports, name)
        bound = UPLINK if name == "pub-9999" else "0.0.0.0"
        assert f"  {name}: {bound}:{port} -> 80/tcp" in out
        assert f"    flowtrace tcp netns:ft-outside {UPLINK}:{port}" in out
    assert f"  pub-loopback: 127.0.0.1:{loopback} -> 80/tcp" in out
    assert f"    flowtrace tcp host 127.0.0.1:{loopback}" in out
    assert f"    flowtrace tcp host {UPLINK}:{loopback}" not in out
    assert out.splitlines()[-1] == "scenario ports is up"


# --- from the outside host --------------------------------------------------------------


@pytest.mark.parametrize("name", DNAT_FORMS)
def test_outside_to_each_form_is_dnated_to_its_container(ports: ScenarioState, name: str) -> None:
    port = host_port(ports, name)
    target = container(ports, name)
    trace = api.trace(OUTSIDE, f"{UPLINK}:{port}", kind="tcp", count=1, record=False)
    assert [p.id for p in trace.points] == [
        f"{lab_module.OUTSIDE_NETNS}/eth0",
        f"host/{lab_module.UPLINK}",
        "host/docker0",
        f"host/{host_veth_of(target.pid)}",
        f"{name}/eth0",
    ]
    verdict = trace.verdicts[0]
    assert (verdict.outcome, verdict.detail) == ("replied", "SYN-ACK: the port is open")
    dnat = [ev for ev in syn_of(trace).nat if ev.kind == "DNAT"]
    assert len(dnat) == 1
    ev = dnat[0]
    assert ev.between == (f"host/{lab_module.UPLINK}", "host/docker0")
    assert (ev.before.ip, ev.before.port, ev.after.ip, ev.after.port) == (
        UPLINK,
        port,
        target.ip,
        80,
    )
    bound = f"-d {UPLINK}/32 " if name == "pub-9999" else ""
    assert ev.rule == (
        f"-A DOCKER {bound}! -i docker0 -p tcp -m tcp --dport {port} -j DNAT "
        f"--to-destination {target.ip}:80"
    )
    assert ev.conntrack is not None and f"dport={port} src={target.ip}" in ev.conntrack
    synack = one(list(trace.packets), "reply")
    assert [(e.kind, e.reverse_of) for e in synack.nat] == [("SNAT", "DNAT")]
    assert any(f"published by container {name}: DNAT to {target.ip}:80" in n for n in trace.notes)


def test_outside_to_a_loopback_only_port_is_refused_by_the_host(ports: ScenarioState) -> None:
    port = host_port(ports, "pub-loopback")
    trace = api.trace(OUTSIDE, f"{UPLINK}:{port}", kind="tcp", count=1, record=False)
    assert [p.id for p in trace.points] == [
        f"{lab_module.OUTSIDE_NETNS}/eth0",
        f"host/{lab_module.UPLINK}",
    ]
    verdict = trace.verdicts[0]
    assert verdict.outcome == "refused"
    assert verdict.detail.startswith(f"RST from {UPLINK}: the port is closed; ")
    assert f"container pub-loopback publishes port {port} (-> 80/tcp) on 127.0.0.1 only" in (
        verdict.detail
    )
    assert f"a packet for {UPLINK}:{port} is not rewritten" in verdict.detail
    assert not trace.nat_events
    rst = one(list(trace.packets), "reply")
    assert rst.first.headers.tcp_flags == 0x14 and rst.first.point == f"host/{lab_module.UPLINK}"
    assert (rst.first.src, rst.first.sport) == (UPLINK, port)
    shown = run_cli("tcp", OUTSIDE, f"{UPLINK}:{port}", "--no-record")
    assert shown.returncode == 0, shown.stderr  # a refusal is an answer
    assert f"probe 1: refused (RST from {UPLINK}: the port is closed; container pub-loopback" in (
        shown.stdout
    )


# --- from the Docker host: nat OUTPUT ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "address"),
    [("web", UPLINK), ("pub-random", GATEWAY), ("pub-9999", UPLINK), ("pub-all", UPLINK)],
)
def test_host_to_its_own_published_port_is_dnated_in_output(
    ports: ScenarioState, name: str, address: str
) -> None:
    port = host_port(ports, name)
    target = container(ports, name)
    trace = api.trace("host", f"{address}:{port}", kind="tcp", count=1, record=False)
    assert [p.id for p in trace.points] == [
        "host/docker0",
        f"host/{host_veth_of(target.pid)}",
        f"{name}/eth0",
    ]
    assert trace.verdicts[0].outcome == "replied"
    syn = syn_of(trace)
    assert (syn.first.src, syn.first.dst, syn.first.dport) == (address, target.ip, 80)
    ev = syn.nat[0]
    assert (ev.kind, ev.between) == ("DNAT", (LOCAL_STACK, "host/docker0"))
    assert (ev.before.ip, ev.before.port, ev.after.ip, ev.after.port) == (
        address,
        port,
        target.ip,
        80,
    )
    assert ev.rule is not None and f"--dport {port} -j DNAT --to-destination {target.ip}:80" in (
        ev.rule
    )
    assert ev.conntrack is not None and f"src={address} dst={address}" in ev.conntrack
    reply = one(list(trace.packets), "reply")
    assert [(e.kind, e.between, e.reverse_of) for e in reply.nat] == [
        ("SNAT", ("host/docker0", LOCAL_STACK), "DNAT")
    ]
    assert trace.notes[0] == (
        f"{address}:{port} is published by container {name}: DNAT to {target.ip}:80, "
        "in host's nat OUTPUT before any interface"
    )
    assert trace.meta.get("proxy") is None


def test_host_to_a_port_bound_to_another_address_is_refused(ports: ScenarioState) -> None:
    for address in (GATEWAY, "127.0.0.1"):
        trace = api.trace("host", f"{address}:9999", kind="tcp", count=1, record=False)
        verdict = trace.verdicts[0]
        assert verdict.outcome == "refused", (address, verdict)
        assert "container pub-9999 publishes port 9999 (-> 80/tcp) on 203.0.113.1 only" in (
            verdict.detail
        )
        assert [p.id for p in trace.points] == ["host/lo"]
        assert trace.meta.get("proxy") is None
        rst = one(list(trace.packets), "reply")
        assert (rst.first.src, rst.first.sport, rst.first.dst) == (address, 9999, address)
    # From 172.17.0.1 to itself the packet leaves by lo, not docker0, so Docker's
    # MASQUERADE takes it before lo: flowtrace shows the rewrite no point could see.
    trace = api.trace("host", f"{GATEWAY}:9999", kind="tcp", count=1, record=False)
    syn = syn_of(trace)
    snat = [ev for ev in syn.nat if ev.kind == "SNAT"]
    assert syn.first.src != GATEWAY
    assert [(ev.between, ev.before.ip, ev.after.ip) for ev in snat] == [
        ((LOCAL_STACK, "host/lo"), GATEWAY, syn.first.src)
    ]
    assert snat[0].rule == "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    assert trace.verdicts[0].outcome == "refused"


# --- from the Docker host to 127.0.0.1: docker-proxy -------------------------------------


def leg_packets(trace: Trace, leg: int) -> list[Packet]:
    proxy = trace.meta["proxy"]
    assert isinstance(proxy, dict)
    ids = proxy["legs"][leg - 1]["packets"]
    return [p for p in trace.packets if p.packet_id in ids]


def flags(packets: list[Packet]) -> list[int]:
    return [p.first.headers.tcp_flags or 0 for p in packets]


@pytest.mark.parametrize("name", ["web", "pub-random", "pub-loopback", "pub-all"])
def test_host_to_127_0_0_1_goes_through_docker_proxy_in_two_legs(
    ports: ScenarioState, name: str, tmp_path: Path
) -> None:
    port = host_port(ports, name)
    target = container(ports, name)
    bound = "127.0.0.1" if name == "pub-loopback" else "0.0.0.0"
    pid = proxy_pid(bound, port)
    trace = api.trace("host", f"127.0.0.1:{port}", kind="tcp", output_dir=tmp_path / "set")
    veth = f"host/{host_veth_of(target.pid)}"
    leg2_points = ["host/docker0", veth, f"{name}/eth0"]
    assert [p.id for p in trace.points] == ["host/lo", *leg2_points]
    verdict = trace.verdicts[0]
    assert verdict.outcome == "replied"
    assert verdict.detail == (
        f"SYN-ACK from docker-proxy pid {pid} (listening on {bound}:{port}): the port is open"
    )
    assert not trace.nat_events  # no DNAT anywhere: two connections instead
    proxy = trace.meta["proxy"]
    assert isinstance(proxy, dict)
    assert (proxy["pid"], proxy["listen"], proxy["container"]) == (pid, f"{bound}:{port}", name)
    assert proxy["cmdline"] == (
        f"/usr/sbin/docker-proxy -proto tcp -host-ip {bound} -host-port {port} "
        f"-container-ip {target.ip} -container-port 80"
    )
    assert proxy["problem"] is None
    leg1, leg2 = proxy["legs"]
    assert (leg1["points"], leg1["to"]) == (["host/lo"], f"127.0.0.1:{port}")
    assert (leg2["points"], leg2["to"]) == (leg2_points, f"{target.ip}:80")

    first = leg_packets(trace, 1)
    client = leg1["from"]
    assert client.startswith("127.0.0.1:")
    assert flags(first)[:3] == [0x02, 0x12, 0x10]  # SYN, SYN-ACK, ACK: a real handshake
    assert sum(1 for f in flags(first) if f & 0x01) == 2  # a FIN each way
    for pkt in first:
        assert {f"{pkt.first.src}:{pkt.first.sport}", f"{pkt.first.dst}:{pkt.first.dport}"} == {
            client,
            f"127.0.0.1:{port}",
        }
        assert [s.point for s in pkt.sightings] == ["host/lo", "host/lo"]

    second = leg_packets(trace, 2)
    proxy_end = leg2["from"]
    assert proxy_end.startswith(f"{GATEWAY}:")  # the proxy's own socket, from docker0's address
    assert flags(second)[:3] == [0x02, 0x12, 0x10]
    assert sum(1 for f in flags(second) if f & 0x01) == 2
    for pkt in second:
        assert {f"{pkt.first.src}:{pkt.first.sport}", f"{pkt.first.dst}:{pkt.first.dport}"} == {
            proxy_end,
            f"{target.ip}:80",
        }
        order = leg2_points if pkt.first.src == GATEWAY else list(reversed(leg2_points))
        assert [s.point for s in pkt.sightings] == order
    # the proxy dials the container only once it has accepted flowtrace's connection
    accepted = first[2].first.time_ns
    assert second[0].first.time_ns > first[0].first.time_ns
    assert second[0].first.time_ns < accepted + 1_000_000_000

    pcap = tmp_path / "set" / "trace.pcapng"
    rows = tshark_fields(pcap, "frame.interface_name", "tcp.srcport", "frame.comment")
    leg_rows = {1: set(), 2: set()}
    for point, _, comment in rows:
        for leg in (1, 2):
            if f"docker-proxy leg {leg}," in comment:
                leg_rows[leg].add(point)
    assert leg_rows == {1: {"host/lo"}, 2: set(leg2_points)}
    manifest = json.loads((tmp_path / "set" / "manifest.json").read_text())
    assert manifest["proxy"]["legs"][1]["from"] == proxy_end
    assert [p["id"] for p in manifest["points"]] == ["host/lo", *leg2_points]


def test_docker_proxy_in_the_terminal_and_json(ports: ScenarioState) -> None:
    port = host_port(ports, "pub-random")
    pid = proxy_pid("0.0.0.0", port)
    shown = run_cli("tcp", "host", f"127.0.0.1:{port}", "--no-record")
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert "path: host/lo\n" in out
    assert "path of docker-proxy's own connection: host/docker0 -> host/veth" in out
    assert f"docker-proxy carried it: pid {pid}, listening on 0.0.0.0:{port}" in out
    assert f"-host-ip 0.0.0.0 -host-port {port} -container-ip" in out
    assert "leg 1, client -> docker-proxy: 127.0.0.1:" in out
    assert "leg 2, docker-proxy -> container pub-random: 172.17.0.1:" in out
    assert "Docker's nat OUTPUT jumps to its DNAT rules only for ! -d 127.0.0.0/8" in out
    as_json = run_cli("tcp", "host", f"127.0.0.1:{port}", "--no-record", "--json")
    assert as_json.returncode == 0, as_json.stderr
    doc = json.loads(as_json.stdout)
    legs = doc["meta"]["proxy"]["legs"]
    assert [leg["what"] for leg in legs] == ["client -> docker-proxy", "docker-proxy -> container"]
    ids = {p["id"]: p for p in doc["packets"]}
    assert all(ids[i]["probe"] is None for leg in legs for i in leg["packets"])
    assert doc["verdict"]["probes"][0]["text"].startswith(
        f"replied (SYN-ACK from docker-proxy pid {pid}"
    )


@pytest.fixture
def other_clients(ports: ScenarioState) -> Iterator[Callable[[int], list[int]]]:
    """Connections of someone else through the same proxy while a trace runs."""
    stop = threading.Event()
    threads: list[threading.Thread] = []
    ports_used: list[int] = []

    def start(port: int) -> list[int]:
        def loop() -> None:
            while not stop.is_set():
                with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                    ports_used.append(sock.getsockname()[1])
                    time.sleep(0.02)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)
        return ports_used

    yield start
    stop.set()
    for thread in threads:
        thread.join(timeout=5)


def test_other_connections_through_the_proxy_are_left_out(
    ports: ScenarioState, other_clients: Callable[[int], list[int]]
) -> None:
    port = host_port(ports, "web")
    theirs = other_clients(port)
    time.sleep(0.1)
    trace = api.trace("host", f"127.0.0.1:{port}", kind="tcp", count=1, record=False)
    assert len(theirs) >= 2, "the other client made no connections during the trace"
    proxy = trace.meta["proxy"]
    assert isinstance(proxy, dict)
    client = int(proxy["legs"][0]["from"].rpartition(":")[2])
    assert client not in theirs
    seen_ports = {p.first.sport for p in trace.packets} | {p.first.dport for p in trace.packets}
    assert not seen_ports & set(theirs)  # none of their packets was kept
    for leg in (1, 2):
        syns = [f for f in flags(leg_packets(trace, leg)) if f == 0x02]
        assert len(syns) == 1, (leg, proxy)


def test_a_container_to_its_gateway_port_goes_through_docker_proxy(ports: ScenarioState) -> None:
    """PREROUTING's DOCKER chain returns for packets from docker0: the proxy answers."""
    web = container(ports, "web")
    c1 = ports.lab.container("c1")
    trace = api.trace("c1", f"{GATEWAY}:8080", kind="tcp", count=1, record=False)
    leg1_points = ["c1/eth0", f"host/{host_veth_of(c1.pid)}", "host/docker0"]
    leg2_points = ["host/docker0", f"host/{host_veth_of(web.pid)}", "web/eth0"]
    assert [p.id for p in trace.points] == [*leg1_points, *leg2_points[1:]]
    assert not trace.nat_events
    assert trace.verdicts[0].detail.startswith(
        f"SYN-ACK from docker-proxy pid {proxy_pid('0.0.0.0', 8080)} (listening on 0.0.0.0:8080)"
    )
    assert any("the SYN comes in from a Docker bridge" in n for n in trace.notes), trace.notes
    proxy = trace.meta["proxy"]
    assert isinstance(proxy, dict)
    leg1, leg2 = proxy["legs"]
    assert (leg1["points"], leg2["points"]) == (leg1_points, leg2_points)
    assert leg1["from"].startswith(f"{c1.ip}:") and leg2["from"].startswith(f"{GATEWAY}:")
    for leg, points in ((1, leg1_points), (2, leg2_points)):
        packets = leg_packets(trace, leg)
        assert flags(packets)[:3] == [0x02, 0x12, 0x10]
        assert [s.point for s in packets[0].sightings] == points


# --- bad input ----------------------------------------------------------------------------


def test_loopback_destinations_need_a_port_and_a_good_one(ports: ScenarioState) -> None:
    cases = [
        (("tcp", "host", "127.0.0.1"), ExitStatus.USAGE, "tcp needs a destination port"),
        (("tcp", "host", "127.0.0.1:0"), ExitStatus.USAGE, "bad port '0'"),
        (("tcp", "host", "127.0.0.1:99999"), ExitStatus.USAGE, "bad port '99999'"),
        (("ping", "host", "127.0.0.1:80"), ExitStatus.USAGE, "ping takes no port"),
    ]
    for args, status, words in cases:
        result = run_cli(*args)
        assert result.returncode == status, (args, result.returncode, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.stderr, (
            args,
            result.stderr,
        )


def test_a_trace_through_the_proxy_leaves_no_socket_behind(ports: ScenarioState) -> None:
    port = host_port(ports, "pub-all")
    result = run_cli("tcp", "host", f"127.0.0.1:{port}", "--no-record")
    assert result.returncode == 0, result.stderr
    pid = proxy_pid("0.0.0.0", port)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sockets = [
            os.readlink(f"/proc/{pid}/fd/{fd}")
            for fd in os.listdir(f"/proc/{pid}/fd")
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        ]
        if len(sockets) == 1:  # only its listening socket
            break
        time.sleep(0.1)
    assert len(sockets) == 1, sockets

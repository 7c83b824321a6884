"""The capture engine on the real kernel: rings, filters, promisc, pcapng, signals.

The module builds its own private topology and removes it at the end:

    ns a: eth0 198.51.100.1 ── pa ┐
                                  ns br: br0 (bridge)
    ns b: eth0 198.51.100.2 ── pb ┘

Static neighbour entries keep ARP out of the way and IPv6 is off, so the only
traffic is what the tests send: UDP datagrams carrying a 4-byte sequence number.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowtrace.capture import native
from flowtrace.capture.session import CaptureSession
from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import NotFoundError
from flowtrace.model import Namespace, Point, PointStats
from flowtrace.pcap.reader import open_capture

pytestmark = pytest.mark.integration

A_IP, B_IP = "198.51.100.1", "198.51.100.2"
PORT, OTHER_PORT = 9000, 9001
FILTER = f"udp and dst port {PORT}"
BURST = 10_000


def sh(command: str) -> str:
    return subprocess.run(command, shell=True, check=True, capture_output=True, text=True).stdout


@dataclass
class Topology:
    a: str
    b: str
    br: str

    def path(self, name: str) -> str:
        return f"/run/netns/{name}"

    def point(self, ns: str, ifname: str, role: str, *, promisc: bool = False) -> Point:
        label = ns.rsplit("-", 1)[1]
        return Point(
            id=f"{label}/{ifname}",
            netns=Namespace(path=self.path(ns), label=label),
            ifname=ifname,
            ifindex=0,
            role=role,
            promisc=promisc,
        )

    def promiscuity(self, ns: str, ifname: str) -> int:
        info = json.loads(sh(f"ip -n {ns} -d -j link show {ifname}"))
        return int(info[0]["promiscuity"])


#: The private namespaces' network: small, so a lab scenario elsewhere in 198.51.100.0/24
#: (macvlan uses a /26 of it) does not stop this module.
TEST_NET = ipaddress.ip_network("198.51.100.0/29")


def _host_routes_test_range() -> bool:
    """True if the host already routes or owns part of TEST_NET (then this module must not)."""
    used = [
        r["dst"] for r in json.loads(sh("ip -4 -j route show table all")) if r["dst"] != "default"
    ]
    used += [
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(sh("ip -4 -j addr show"))
        for a in link.get("addr_info", [])
    ]
    return any(ipaddress.ip_network(net, strict=False).overlaps(TEST_NET) for net in used)


@pytest.fixture(scope="module")
def topo(root: None) -> Iterator[Topology]:
    if _host_routes_test_range():
        pytest.skip(f"{TEST_NET} is in use on this host")
    tag = uuid.uuid4().hex[:6]
    t = Topology(a=f"ftcap-{tag}-a", b=f"ftcap-{tag}-b", br=f"ftcap-{tag}-br")
    made: list[str] = []
    try:
        for ns in (t.a, t.b, t.br):
            sh(f"ip netns add {ns}")
            made.append(ns)
            sh(
                f"ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                "net.ipv6.conf.default.disable_ipv6=1"
            )
            sh(f"ip -n {ns} link set lo up")
        sh(f"ip -n {t.a} link add eth0 type veth peer name pa netns {t.br}")
        sh(f"ip -n {t.b} link add eth0 type veth peer name pb netns {t.br}")
        sh(f"ip -n {t.br} link add br0 type bridge")
        for port in ("pa", "pb"):
            sh(f"ip -n {t.br} link set {port} master br0 up")
        sh(f"ip -n {t.br} link set br0 up")
        sh(f"ip -n {t.a} addr add {A_IP}/{TEST_NET.prefixlen} dev eth0")
        sh(f"ip -n {t.b} addr add {B_IP}/{TEST_NET.prefixlen} dev eth0")
        sh(f"ip -n {t.a} link set eth0 up")
        sh(f"ip -n {t.b} link set eth0 up")
        mac = {
            ns: json.loads(sh(f"ip -n {ns} -j link show eth0"))[0]["address"] for ns in (t.a, t.b)
        }
        sh(f"ip -n {t.a} neigh replace {B_IP} lladdr {mac[t.b]} dev eth0 nud permanent")
        sh(f"ip -n {t.b} neigh replace {A_IP} lladdr {mac[t.a]} dev eth0 nud permanent")
        yield t
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest.fixture(scope="module")
def sender(topo: Topology) -> Iterator[socket.socket]:
    """A UDP socket opened inside ns a (it stays there whoever uses it)."""
    sock = run_in_netns(topo.path(topo.a), socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        yield sock
    finally:
        sock.close()


@pytest.fixture(scope="module")
def sink(topo: Topology) -> Iterator[socket.socket]:
    """A socket bound in ns b that never reads: datagrams are dropped there silently
    (no ICMP port-unreachable coming back)."""
    sock = run_in_netns(topo.path(topo.b), socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((B_IP, PORT))
    try:
        yield sock
    finally:
        sock.close()


def send_burst(sock: socket.socket, count: int, *, start: int = 0, noise_every: int = 0) -> int:
    """Send `count` matching datagrams (and, if asked, non-matching ones in between)."""
    noise = 0
    for seq in range(start, start + count):
        sock.sendto(struct.pack("!I", seq), (B_IP, PORT))
        if noise_every and seq % noise_every == 0:
            sock.sendto(struct.pack("!I", seq), (B_IP, OTHER_PORT))
            noise += 1
    return noise


def udp_frame(payload: bytes, *, vlan: int | None = None) -> bytes:
    """A raw broadcast Ethernet/IPv4/UDP frame from a to b's port, optionally 802.1Q-tagged."""
    udp = struct.pack("!HHHH", 40000, PORT, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
        socket.inet_aton(A_IP), socket.inet_aton(B_IP),
    )  # fmt: skip
    tag = b"" if vlan is None else struct.pack("!HH", 0x8100, vlan)
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + tag + b"\x08\x00" + ip + udp


def sequence_number(frame: bytes) -> int:
    """The 4-byte payload of our Ethernet/IPv4/UDP datagrams."""
    ihl = (frame[14] & 0x0F) * 4
    return int(struct.unpack_from("!I", frame, 14 + ihl + 8)[0])


@pytest.mark.parametrize("path", ["native", "python"])
def test_burst_is_captured_whole_at_every_point(
    topo: Topology,
    sender: socket.socket,
    sink: socket.socket,
    tmp_path: Path,
    path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both ways from the ring to the pcapng: the C writer (capture/_ringpcap.c) and the
    # pure-Python fallback a machine without a compiler runs (FLOWTRACE_NATIVE=0 forces it).
    if path == "python":
        monkeypatch.setenv("FLOWTRACE_NATIVE", "0")
    elif native.ringpcap() is None:
        pytest.skip(native.why_not() or "the C writer is not built")
    points = [
        topo.point(topo.a, "eth0", "source"),
        topo.point(topo.br, "pa", "veth-peer"),
        topo.point(topo.br, "pb", "veth-peer"),
        topo.point(topo.b, "eth0", "destination"),
    ]
    output = tmp_path / "burst.pcapng"
    before = time.time_ns()
    session = CaptureSession(points, FILTER, output, workers=2)
    with session:
        assert len(session.worker_pids) == 2
        noise = send_burst(sender, BURST, noise_every=20)
    after = time.time_ns()
    assert noise == BURST // 20

    stats = {s.point: s for s in session.snapshot()}
    for point in points:
        assert stats[point.id].packets == BURST, point.id
        assert stats[point.id].drops == 0
        assert stats[point.id].bytes == BURST * (14 + 20 + 8 + 4)

    seen: dict[int, list[tuple[int, int, bool | None]]] = defaultdict(list)
    with open_capture(output) as reader:
        for record in reader:
            seen[record.interface].append(
                (record.time_ns, sequence_number(record.data), record.outbound)
            )
        assert not reader.truncated
        assert [i.name for i in reader.interfaces] == [p.id for p in points]
        assert all(i.filter == FILTER for i in reader.interfaces)
        final = reader.latest_stats()
    outbound_expected = {0: True, 1: False, 2: True, 3: False}
    for index in range(len(points)):
        records = seen[index]
        times = [t for t, _, _ in records]
        assert [seq for _, seq, _ in records] == list(range(BURST))
        assert times == sorted(times)
        assert before <= times[0] and times[-1] <= after
        assert any(t % 1000 for t in times), "timestamps are not nanosecond-precise"
        assert {out for _, _, out in records} == {outbound_expected[index]}
        assert final[index].received == BURST and final[index].dropped == 0
    # The same datagram crosses the points in path order, microseconds apart.
    hops = [seen[i][0][0] for i in range(len(points))]
    assert hops == sorted(hops) and hops[-1] - hops[0] < 50_000_000

    tshark = subprocess.run(["tshark", "-r", str(output), "-q"], capture_output=True, text=True)
    assert tshark.returncode == 0, tshark.stderr


def test_tracer_mode_keeps_frames_from_the_moment_start_returns(
    topo: Topology, sender: socket.socket, sink: socket.socket
) -> None:
    points = [topo.point(topo.a, "eth0", "source"), topo.point(topo.b, "eth0", "destination")]
    session = CaptureSession(points, FILTER, None, keep_frames=True)
    session.start()
    try:
        # The barrier: a datagram sent right after start() returns is seen everywhere.
        sender.sendto(struct.pack("!I", 424242), (B_IP, PORT))
        deadline = time.monotonic() + 2
        while len(session.frames()) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        early = session.frames()
        send_burst(sender, 100)
    finally:
        session.stop()
    assert sorted((f.point, sequence_number(f.data)) for f in early) == [(0, 424242), (1, 424242)]
    frames = session.frames()
    assert len(frames) == 2 * 101
    assert session.frames(since=len(early)) == frames[len(early) :]
    assert {f.outbound for f in frames if f.point == 0} == {True}
    assert {f.outbound for f in frames if f.point == 1} == {False}
    assert [s.packets for s in session.snapshot()] == [101, 101]
    with pytest.raises(RuntimeError):
        CaptureSession(points, None, None).frames()


def test_run_ends_on_count_or_duration_and_reports_ticks(
    topo: Topology, sender: socket.socket, sink: socket.socket, tmp_path: Path
) -> None:
    points = [topo.point(topo.a, "eth0", "source")]
    streaming = threading.Event()
    streaming.set()

    def stream() -> None:
        while streaming.is_set():
            send_burst(sender, 50)
            time.sleep(0.01)

    thread = threading.Thread(target=stream)
    thread.start()
    ticks: list[list[PointStats]] = []
    try:
        counted = CaptureSession(points, FILTER, tmp_path / "count.pcapng", workers=0)
        stats = counted.run(count=1000, on_tick=ticks.append)
    finally:
        streaming.clear()
        thread.join()
    assert stats[0].packets >= 1000 and not counted.interrupted
    assert ticks and all(t[0].point == "a/eth0" for t in ticks)

    started = time.monotonic()
    timed = CaptureSession(points, FILTER, None, workers=1)
    assert [s.packets for s in timed.run(duration=0.3)] == [0]
    assert 0.3 <= time.monotonic() - started < 3


def test_bridge_sees_forwarded_frames_only_with_promisc_membership(
    topo: Topology, sender: socket.socket, sink: socket.socket
) -> None:
    before = topo.promiscuity(topo.br, "br0")

    plain = CaptureSession([topo.point(topo.br, "br0", "bridge")], FILTER, None, keep_frames=True)
    with plain:
        send_burst(sender, 200)
    assert plain.frames() == []

    bridge = topo.point(topo.br, "br0", "bridge", promisc=True)
    session = CaptureSession([bridge], FILTER, None, keep_frames=True)
    with session:
        assert topo.promiscuity(topo.br, "br0") == before + 1
        send_burst(sender, 200)
    frames = session.frames()
    assert [sequence_number(f.data) for f in frames] == list(range(200))
    assert {f.outbound for f in frames} == {False}
    assert topo.promiscuity(topo.br, "br0") == before


def test_vlan_tag_taken_off_by_the_kernel_is_put_back(topo: Topology) -> None:
    """A receiving interface strips an 802.1Q tag into packet metadata; the ring
    puts it back, so the frame reads as it was on the wire.

    No filter here: the kernel runs BPF on the stripped frame, so a compiled
    `vlan 5` test only matches where the tag is still inline (the sender's side).
    The topology is quiet, so the frame we send is the only one.
    """
    frame = udp_frame(b"tagged", vlan=5)
    points = [topo.point(topo.a, "eth0", "source"), topo.point(topo.br, "pa", "veth-peer")]
    session = CaptureSession(points, None, None, keep_frames=True)
    raw = run_in_netns(topo.path(topo.a), socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0)
    with session, raw:
        raw.bind(("eth0", 0))
        raw.send(frame)
    frames = sorted(session.frames(), key=lambda f: f.point)
    assert [(f.point, f.outbound) for f in frames] == [(0, True), (1, False)]
    assert all(f.data == frame and f.orig_len == len(frame) for f in frames)


CHILD = textwrap.dedent(
    """
    import json, signal, sys
    from flowtrace.capture.session import CaptureSession
    from flowtrace.model import Namespace, Point, PointStats

    # As `flowtrace capture` does: Ctrl-C stops it even when pytest runs in a script's
    # background job (whose children start with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    spec = json.loads(sys.argv[1])
    points = [
        Point(id=p["id"], netns=Namespace(path=p["path"], label=p["id"]), ifname=p["ifname"],
              ifindex=0, role="named")
        for p in spec["points"]
    ]
    session = CaptureSession(points, spec["filter"], spec["output"], workers=2)
    session.start()
    print("ready", flush=True)
    stats = session.run(duration=60)
    print(json.dumps({"interrupted": session.interrupted, "notes": session.notes(),
                      "packets": [s.packets for s in stats], "drops": [s.drops for s in stats]}),
          flush=True)
    """
)


def test_sigint_mid_stream_leaves_a_whole_pcapng(
    topo: Topology, sender: socket.socket, sink: socket.socket, tmp_path: Path
) -> None:
    output = tmp_path / "interrupted.pcapng"
    spec = {
        "filter": FILTER,
        "output": str(output),
        "points": [
            {"id": "a/eth0", "path": topo.path(topo.a), "ifname": "eth0"},
            {"id": "b/eth0", "path": topo.path(topo.b), "ifname": "eth0"},
        ],
    }
    # Its own process group, so SIGINT reaches the parent and its workers, like Ctrl-C.
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        streaming = threading.Event()
        streaming.set()

        def stream() -> None:
            seq = 0
            while streaming.is_set():
                send_burst(sender, 500, start=seq)
                seq += 500
                time.sleep(0.002)

        thread = threading.Thread(target=stream)
        thread.start()
        try:
            time.sleep(0.6)
            os.killpg(child.pid, signal.SIGINT)
            out, _ = child.communicate(timeout=20)
        finally:
            streaming.clear()
            thread.join()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert result["interrupted"] is True
    assert result["notes"] == []  # the workers ignored the SIGINT and finished cleanly
    assert result["drops"] == [0, 0]
    assert min(result["packets"]) > 1000

    with open_capture(output) as reader:
        per_interface: dict[int, int] = defaultdict(int)
        for record in reader:
            per_interface[record.interface] += 1
        assert not reader.truncated
        assert {i: s.received for i, s in reader.latest_stats().items()} == {
            0: result["packets"][0],
            1: result["packets"][1],
        }
    assert [per_interface[0], per_interface[1]] == result["packets"]
    tshark = subprocess.run(
        ["tshark", "-r", str(output), "-T", "fields", "-e", "frame.interface_id"],
        capture_output=True,
        text=True,
    )
    assert tshark.returncode == 0, tshark.stderr
    assert len(tshark.stdout.split()) == sum(result["packets"])


def test_deleted_interface_does_not_end_the_session(
    topo: Topology, sender: socket.socket, sink: socket.socket, tmp_path: Path
) -> None:
    sh(f"ip -n {topo.a} link add doomed0 type veth peer name doomed1")
    try:
        sh(f"ip -n {topo.a} link set doomed0 up")
        sh(f"ip -n {topo.a} link set doomed1 up")
        points = [
            topo.point(topo.a, "eth0", "source"),
            topo.point(topo.a, "doomed0", "named"),
            topo.point(topo.b, "eth0", "destination"),
        ]
        output = tmp_path / "gone.pcapng"
        session = CaptureSession(points, FILTER, output, workers=2)
        raw = run_in_netns(topo.path(topo.a), socket.socket, socket.AF_PACKET, socket.SOCK_RAW, 0)
        with session, raw:
            send_burst(sender, 1000)
            # Frames doomed0 receives just before it goes: they sit in a part-filled
            # block when the interface disappears, and must still be read.
            raw.bind(("doomed1", 0))
            for seq in range(5):
                raw.send(udp_frame(struct.pack("!I", seq)))
            sh(f"ip -n {topo.a} link del doomed0")
            deadline = time.monotonic() + 3
            while not session.gone_points() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert session.gone_points() == ["a/doomed0"]
            send_burst(sender, 2000, start=1000)
    finally:
        subprocess.run(
            ["ip", "-n", topo.a, "link", "del", "doomed0"], check=False, capture_output=True
        )
    assert [s.packets for s in session.snapshot()] == [3000, 5, 3000]
    assert session.gone_points() == ["a/doomed0"]
    assert session.notes() == ["a/doomed0 went away during the capture"]
    with open_capture(output) as reader:
        counts: dict[int, int] = defaultdict(int)
        for record in reader:
            counts[record.interface] += 1
        stats = reader.latest_stats()
    assert dict(counts) == {0: 3000, 1: 5, 2: 3000}
    assert stats[1].comment == "a/doomed0 went away during the capture"


def test_a_dead_worker_loses_only_its_own_points(
    topo: Topology, sender: socket.socket, sink: socket.socket, tmp_path: Path
) -> None:
    points = [topo.point(topo.a, "eth0", "source"), topo.point(topo.b, "eth0", "destination")]
    output = tmp_path / "worker.pcapng"
    session = CaptureSession(points, FILTER, output, workers=2)
    with session:
        _, worker_b = session.worker_pids
        os.kill(worker_b, signal.SIGKILL)
        send_burst(sender, 3000)
    assert session.snapshot()[0].packets == 3000
    assert session.notes() == [f"the capture worker for b/eth0 died (signal {int(signal.SIGKILL)})"]
    with open_capture(output) as reader:
        counts: dict[int, int] = defaultdict(int)
        for record in reader:
            counts[record.interface] += 1
        assert not reader.truncated
    assert counts[0] == 3000 and counts[1] == 0


def test_missing_interface_is_a_clear_error(topo: Topology) -> None:
    missing = topo.point(topo.a, "nosuch0", "named")
    with pytest.raises(NotFoundError, match="no interface nosuch0"):
        CaptureSession([topo.point(topo.a, "eth0", "source"), missing], None, None).start()

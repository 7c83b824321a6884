"""`flowtrace analyze SET --json` against `tshark -T fields` on a multi-million-sighting set.

Run by hand (never from the test suite); no root or lab needed:

    .venv/bin/python benchmarks/analyze_bench.py --packets 2000000          # 10 M sightings
    .venv/bin/python benchmarks/analyze_bench.py --packets 200000 --sizes 4 # memory check

The set is generated with flowtrace.pcap.pcapng the way `flowtrace capture` writes one:
five points on the path c1 -> the outside host (c1/eth0, its veth peer, docker0, the
uplink, ft-outside/eth0), every packet seen at all five, replies walking back; the
host MASQUERADEs between docker0 and the uplink (source 172.17.0.2:port becomes
203.0.113.1:port, replies are put back).  Traffic is a steady 100 kpps mix: TCP
connections to port 80 (handshake, request, a response of several segments and their
ACKs, FIN) from many source ports at once, and pings.  Frames are written in ring
block order (each point's frames in runs of 256, the points interleaved), as the
capture's workers write them.

Then, one after the other on the same file: `flowtrace analyze SET --json > /dev/null`
(with --python-path also its pure-Python path, FLOWTRACE_NATIVE=0, which a machine
without a C compiler runs) and `tshark -r SET -T fields -e frame.interface_name -e
ip.src -e ip.dst -e ip.id -e frame.time_epoch > /dev/null`, each timed from process
start to exit with its peak RSS (wait4's ru_maxrss).  With --sizes N the set is also
cut to 1/N of its packets and analyze is run on both: a flat memory profile shows the
same peak RSS.
"""

from __future__ import annotations

import argparse
import heapq
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flowtrace.pcap.pcapng import (
    enhanced_packet_block,
    interface_description_block,
    section_header_block,
)
from flowtrace.probe import internet_checksum, ipv4_header

REPO = Path(__file__).resolve().parents[1]
POINTS = ("c1/eth0", "host/veth66060ea", "host/docker0", "host/ft-uplink", "ft-outside/eth0")
NAT_AFTER = 3  # points from this index on see the translated addresses
HOP_NS = (3_000, 0, 40_000, 5_000)  # c1 -> veth -> docker0 -> uplink -> outside
C1_IP, UPLINK_IP, OUTSIDE_IP = "172.17.0.2", "203.0.113.1", "203.0.113.2"
SPACING_NS = 10_000  # 100 kpps
BLOCK_FRAMES = 256
START_NS = 1_795_800_000_000_000_000
MAC_C1, MAC_GW = b"\x02\x42\xac\x11\x00\x02", b"\x02\x42\x5e\x8b\x19\xa0"
SYN, SYN_ACK, ACK, PSH_ACK, FIN_ACK = 0x02, 0x12, 0x10, 0x18, 0x11
CONCURRENT_FLOWS = 64
#: Source ports the connections cycle through: the number of distinct flows in a set.
DEFAULT_PORTS = 2000
RESPONSE_SEGMENTS = 6


def tcp_frame(src: str, sport: int, dst: str, dport: int, seq: int, ack: int, flags: int,
              ip_id: int, payload: bytes) -> bytes:  # fmt: skip
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 0x50, flags, 64240, 0, 0)
    return (
        MAC_GW
        + MAC_C1
        + b"\x08\x00"
        + ipv4_header(src, dst, 6, ip_id, 20 + len(payload))
        + (header + payload)
    )


def icmp_frame(src: str, dst: str, kind: int, ident: int, seq: int, ip_id: int) -> bytes:
    body = struct.pack("!BBHHH", kind, 0, 0, ident, seq) + struct.pack("!Q", seq) * 7
    body = body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]
    return MAC_GW + MAC_C1 + b"\x08\x00" + ipv4_header(src, dst, 1, ip_id, len(body)) + body


@dataclass
class Packet:
    """One packet on the path: its frame inside (before NAT) and outside, and its direction."""

    inside: bytes
    outside: bytes
    reply: bool


def tcp_connection(sport: int, ip_ids: list[int]) -> Iterator[Packet]:
    """Handshake, a request, a response in segments with ACKs, FIN both ways, then ACK."""
    client_seq, server_seq = sport * 7919 % 2**32, sport * 104729 % 2**32

    def client(flags: int, payload: bytes = b"") -> Packet:
        nonlocal client_seq
        ip_ids[0] = (ip_ids[0] + 1) & 0xFFFF
        args = (client_seq, server_seq, flags, ip_ids[0], payload)
        packet = Packet(
            tcp_frame(C1_IP, sport, OUTSIDE_IP, 80, *args),
            tcp_frame(UPLINK_IP, sport, OUTSIDE_IP, 80, *args),
            False,
        )
        client_seq = (client_seq + len(payload) + (1 if flags & (SYN | 0x01) else 0)) % 2**32
        return packet

    def server(flags: int, payload: bytes = b"") -> Packet:
        nonlocal server_seq
        ip_ids[1] = (ip_ids[1] + 1) & 0xFFFF
        args = (server_seq, client_seq, flags, ip_ids[1], payload)
        packet = Packet(
            tcp_frame(OUTSIDE_IP, 80, C1_IP, sport, *args),
            tcp_frame(OUTSIDE_IP, 80, UPLINK_IP, sport, *args),
            True,
        )
        server_seq = (server_seq + len(payload) + (1 if flags & (SYN | 0x01) else 0)) % 2**32
        return packet

    yield client(SYN)
    yield server(SYN_ACK)
    yield client(ACK)
    yield client(PSH_ACK, b"GET / HTTP/1.1\r\nHost: outside\r\n\r\n")
    for segment in range(RESPONSE_SEGMENTS):
        yield server(PSH_ACK, segment.to_bytes(2, "big") * 300)
        if segment % 2:
            yield client(ACK)
    yield server(FIN_ACK)
    yield client(FIN_ACK)
    yield server(ACK)


def ping(seq: int, ip_ids: list[int]) -> Iterator[Packet]:
    ip_ids[2] = (ip_ids[2] + 1) & 0xFFFF
    ip_ids[3] = (ip_ids[3] + 1) & 0xFFFF
    yield Packet(
        icmp_frame(C1_IP, OUTSIDE_IP, 8, 4242, seq, ip_ids[2]),
        icmp_frame(UPLINK_IP, OUTSIDE_IP, 8, 4242, seq, ip_ids[2]),
        False,
    )
    yield Packet(
        icmp_frame(OUTSIDE_IP, C1_IP, 0, 4242, seq, ip_ids[3]),
        icmp_frame(OUTSIDE_IP, UPLINK_IP, 0, 4242, seq, ip_ids[3]),
        True,
    )


def traffic(packets: int, ports: int = DEFAULT_PORTS) -> Iterator[Packet]:
    """`packets` packets: CONCURRENT_FLOWS connections interleaved, a ping every 20 packets.

    Connections take source ports from 32768 on, `ports` of them in turn, so a set holds
    at most `ports` distinct TCP flows however long it is.
    """
    ip_ids = [1000, 30000, 5000, 45000]
    flows: list[Iterator[Packet]] = []
    next_port, seq, made = 32768, 0, 0
    while made < packets:
        while len(flows) < CONCURRENT_FLOWS:
            flows.append(tcp_connection(next_port, ip_ids))
            next_port = 32768 + (next_port - 32768 + 1) % ports
        if made % 20 == 0:
            for packet in ping(seq & 0xFFFF, ip_ids):
                yield packet
                made += 1
            seq += 1
        flow = flows[made % len(flows)]
        step = next(flow, None)
        if step is None:
            flows.remove(flow)
            continue
        yield step
        made += 1


def generate(path: Path, packets: int, ports: int = DEFAULT_PORTS) -> int:
    """Write the set; return the number of sightings (frames) written.

    Each point's frames go out in time order, as a ring hands them over: a frame is
    final once the packets still being sent cannot be seen at that point before it.
    """
    pending: list[list[tuple[int, int, bytes]]] = [[] for _ in POINTS]
    blocks: list[list[bytes]] = [[] for _ in POINTS]
    settled_ns = sum(HOP_NS) + SPACING_NS
    written = 0

    def settle(point: int, until_ns: int) -> None:
        nonlocal written
        queue, block = pending[point], blocks[point]
        while queue and queue[0][0] <= until_ns:
            block.append(heapq.heappop(queue)[2])
            if len(block) == BLOCK_FRAMES:
                out.write(b"".join(block))
                written += len(block)
                block.clear()

    with path.open("wb", buffering=1 << 20) as out:
        out.write(section_header_block("analyze_bench"))
        for name in POINTS:
            out.write(interface_description_block(name, f"bench point {name}"))
        t, made = START_NS, 0
        for packet in traffic(packets, ports):
            order = range(len(POINTS) - 1, -1, -1) if packet.reply else range(len(POINTS))
            when = t
            for step, point in enumerate(order):
                if step:
                    when += HOP_NS[min(point, point + 1 if packet.reply else point - 1)]
                frame = packet.outside if point >= NAT_AFTER else packet.inside
                outbound = point in (1, 2, 4) if packet.reply else point in (0, 3)
                block = enhanced_packet_block(point, when, frame, len(frame), outbound)
                heapq.heappush(pending[point], (when, made, block))
                made += 1
                settle(point, t - settled_ns)
            t += SPACING_NS
        for point in range(len(POINTS)):
            settle(point, t + settled_ns)
            out.write(b"".join(blocks[point]))
            written += len(blocks[point])
    return written


def run_measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(wall seconds from start to exit, peak RSS in MB) of one command, stdout discarded."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        assert process.stderr is not None
        raise SystemExit(f"{command[0]} failed: {process.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss // 1024


def analyze_command(path: Path) -> list[str]:
    return [str(REPO / ".venv/bin/flowtrace"), "analyze", str(path), "--json"]


def tshark_command(path: Path) -> list[str]:
    fields = ["frame.interface_name", "ip.src", "ip.dst", "ip.id", "frame.time_epoch"]
    return [
        "tshark",
        "-r",
        str(path),
        "-T",
        "fields",
        *(f for name in fields for f in ("-e", name)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000, help="packets (x5 sightings)")
    parser.add_argument("--sizes", type=int, default=0, help="also run analyze on 1/N of it")
    parser.add_argument(
        "--ports", type=int, default=DEFAULT_PORTS, help="distinct TCP flows (source ports)"
    )
    parser.add_argument("--workdir", default="/dev/shm", help="where the set is written")
    parser.add_argument("--keep", action="store_true", help="keep the generated set")
    parser.add_argument("--skip-tshark", action="store_true")
    parser.add_argument(
        "--python-path",
        action="store_true",
        help="also measure flowtrace's pure-Python path (FLOWTRACE_NATIVE=0)",
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="analyze-bench-", dir=args.workdir))
    try:
        rows = []
        sets = [(args.packets, workdir / "set.pcapng")]
        if args.sizes > 1:
            sets.insert(0, (args.packets // args.sizes, workdir / "small.pcapng"))
        for packets, path in sets:
            started = time.perf_counter()
            sightings = generate(path, packets, args.ports)
            made = time.perf_counter() - started
            size = path.stat().st_size / 1e6
            print(
                f"generated {packets:,} packets = {sightings:,} sightings, {size:,.0f} MB "
                f"in {made:.0f} s",
                file=sys.stderr,
            )
            native = dict(os.environ, FLOWTRACE_NATIVE="1")
            tools = [("flowtrace analyze --json", analyze_command(path), native)]
            if args.python_path:
                python = dict(os.environ, FLOWTRACE_NATIVE="0")
                tools.append(("  the same, Python path", analyze_command(path), python))
            if not args.skip_tshark:
                tools.append(("tshark -T fields (5 fields)", tshark_command(path), None))
            for name, command, env in tools:
                seconds, rss = run_measured(command, env)
                rows.append((name, sightings, seconds, rss))
                print(f"{name}: {seconds:.1f} s, {rss} MB", file=sys.stderr)
        load = os.getloadavg()
        print(f"machine: {os.cpu_count()} cores, kernel {os.uname().release}, load {load[0]:.2f}")
        header = ("sightings", "wall s", "k sightings/s", "peak RSS MB")
        print(f"{'tool':<28} {header[0]:>11} {header[1]:>8} {header[2]:>14} {header[3]:>12}")
        for name, sightings, seconds, rss in rows:
            print(
                f"{name:<28} {sightings:>11,} {seconds:>8.1f} {sightings / seconds / 1e3:>14.0f}"
                f" {rss:>12}"
            )
        if args.keep:
            print(f"set kept in {workdir}", file=sys.stderr)
    finally:
        if not args.keep:
            for child in workdir.iterdir():
                child.unlink()
            workdir.rmdir()


if __name__ == "__main__":
    main()

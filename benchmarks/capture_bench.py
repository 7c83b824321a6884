"""Capture at rising packet rates: flowtrace's CaptureSession vs four tcpdump processes.

Run by hand, as root, on a quiet machine (never from the test suite):

    .venv/bin/python benchmarks/capture_bench.py --rates 100k,250k,500k,1M,max --seconds 3

A private topology carries 60-byte UDP frames (64 on a real wire) from trafgen:

    ns a: eth0 ── pa ┐
                     ns br: br0 (bridge) ── pb ── ns b: eth0

Both tools watch the same 4 points at the same time (a/eth0, br/pa, br/br0 in
promiscuous mode, b/eth0) with the same filter.  For each rate the table shows what
each tool captured, what the kernel dropped, and the CPU it used; at the end, each
tool's highest rate with nothing lost.  The machine's cores are shared by the
generator (the veth and bridge path runs in its context), the kernel and both tools.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
from dataclasses import dataclass, field
from pathlib import Path

A_IP, B_IP = "198.51.100.1", "198.51.100.2"
PORT = 9000
FILTER = f"udp and dst port {PORT}"
FRAME_PAYLOAD = 18  # 14 + 20 + 8 + 18 = 60 bytes, a minimum Ethernet frame without FCS
#: The points, as (namespace key, interface, role, promisc).
POINTS = (
    ("a", "eth0", "source", False),
    ("br", "pa", "veth-peer", False),
    ("br", "br0", "bridge", True),
    ("b", "eth0", "destination", False),
)


def sh(command: list[str]) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


@dataclass
class Topology:
    namespaces: dict[str, str]
    macs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def build(cls) -> Topology:
        tag = uuid.uuid4().hex[:6]
        topo = cls({key: f"ftbench-{tag}-{key}" for key in ("a", "br", "b")})
        try:
            topo._build()
        except BaseException:
            topo.remove()
            raise
        return topo

    def _build(self) -> None:
        ns = self.namespaces
        for name in ns.values():
            sh(["ip", "netns", "add", name])
            sh(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            sh(
                [
                    "ip",
                    "netns",
                    "exec",
                    name,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ]
            )
        for side, port in (("a", "pa"), ("b", "pb")):
            sh(["ip", "-n", ns[side], "link", "add", "eth0", "type", "veth",
                "peer", "name", port, "netns", ns["br"]])  # fmt: skip
        sh(["ip", "-n", ns["br"], "link", "add", "br0", "type", "bridge"])
        for port in ("pa", "pb"):
            sh(["ip", "-n", ns["br"], "link", "set", port, "master", "br0", "up"])
        sh(["ip", "-n", ns["br"], "link", "set", "br0", "up"])
        for side, address in (("a", A_IP), ("b", B_IP)):
            sh(["ip", "-n", ns[side], "addr", "add", f"{address}/24", "dev", "eth0"])
            sh(["ip", "-n", ns[side], "link", "set", "eth0", "up"])
            info = json.loads(sh(["ip", "-n", ns[side], "-j", "link", "show", "eth0"]))
            self.macs[side] = info[0]["address"]
        # A socket that never reads: datagrams end there without ICMP errors coming back.
        self.sink = subprocess.Popen(
            ["ip", "netns", "exec", ns["b"], sys.executable, "-c",
             f"import socket,time; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
             f"s.bind(('{B_IP}', {PORT})); time.sleep(86400)"],
        )  # fmt: skip

    def remove(self) -> None:
        sink = getattr(self, "sink", None)
        if sink is not None:
            sink.kill()
            sink.wait()
        for name in self.namespaces.values():
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)

    def trafgen_config(self) -> str:
        return (
            f"{{ eth(da={self.macs['b']}, sa={self.macs['a']}), "
            f"ipv4(saddr={A_IP}, daddr={B_IP}, ttl=64), udp(sp=40000, dp={PORT}), "
            f"fill(0x00, {FRAME_PAYLOAD}) }}\n"
        )


@dataclass
class ToolResult:
    captured: list[int]
    drops: list[int]
    cpu_s: float

    def lossless(self, sent: int) -> bool:
        return all(c == sent for c in self.captured) and not any(self.drops)


def _wait_with_rusage(process: subprocess.Popen[str]) -> float:
    """Reap a process ourselves to get its CPU time (its reaped children included)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime


@dataclass
class FlowtraceProcess:
    process: subprocess.Popen[str]
    #: CPU the process spent starting (imports, opening rings) before traffic.
    startup_cpu_s: float


def start_flowtrace(topo: Topology, workdir: Path, args: argparse.Namespace) -> FlowtraceProcess:
    spec = {
        "points": [
            {"ns": topo.namespaces[key], "ifname": ifname, "role": role, "promisc": promisc}
            for key, ifname, role, promisc in POINTS
        ],
        "output": str(workdir / "flowtrace.pcapng"),
        "workers": args.workers,
        "ring_mb": args.ring_mb,
    }
    process = subprocess.Popen(
        [sys.executable, __file__, "--flowtrace-child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready = process.stdout.readline().split()
    if not ready or ready[0] != "ready":
        raise SystemExit("the flowtrace capture process did not start")
    return FlowtraceProcess(process, float(ready[1]))


def stop_flowtrace(flowtrace: FlowtraceProcess) -> ToolResult:
    """Stop with SIGINT, as a user would; Python's start-up CPU is not counted."""
    process = flowtrace.process
    process.send_signal(signal.SIGINT)
    assert process.stdout is not None
    out = process.stdout.read()
    cpu = _wait_with_rusage(process) - flowtrace.startup_cpu_s
    result = json.loads(out.strip().splitlines()[-1])
    return ToolResult(result["packets"], result["drops"], cpu)


def start_tcpdumps(
    topo: Topology, workdir: Path, args: argparse.Namespace
) -> list[subprocess.Popen[str]]:
    processes = []
    for number, (key, ifname, _, _) in enumerate(POINTS):
        command = [
            "ip", "netns", "exec", topo.namespaces[key], "tcpdump", "-i", ifname, "-nn",
            "-s", "262144", "-B", str(args.ring_mb * 1024),
            "-w", str(workdir / f"tcpdump{number}.pcap"), FILTER,
        ]  # fmt: skip
        processes.append(subprocess.Popen(command, stderr=subprocess.PIPE, text=True))
    for process in processes:
        assert process.stderr is not None
        line = process.stderr.readline()
        if "listening on" not in line:
            raise SystemExit(f"tcpdump did not start: {line.strip()}")
    return processes


def stop_tcpdumps(processes: list[subprocess.Popen[str]]) -> ToolResult:
    for process in processes:
        process.send_signal(signal.SIGINT)
    captured, drops, cpu = [], [], 0.0
    for process in processes:
        assert process.stderr is not None
        text = process.stderr.read()
        cpu += _wait_with_rusage(process)
        captured.append(_number(r"(\d+) packets? captured", text))
        drops.append(_number(r"(\d+) packets? dropped by kernel", text))
    return ToolResult(captured, drops, cpu)


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    if match is None:
        raise SystemExit(f"cannot read tcpdump's summary: {text.strip()!r}")
    return int(match.group(1))


def send(topo: Topology, config: Path, packets: int, rate: int | None) -> tuple[int, float]:
    """Run trafgen in ns a on one CPU; return (packets sent, its sending time in s).

    -q sends through the qdisc path: without it trafgen bypasses the taps and no
    packet socket on the sending interface sees anything.  --no-sock-mem and -Q
    keep trafgen from retuning the host's socket memory and IRQ affinity.
    """
    command = [
        "ip", "netns", "exec", topo.namespaces["a"], "trafgen", "--no-sock-mem", "-Q", "-q",
        "--dev", "eth0", "--conf", str(config), "--num", str(packets), "--cpus", "1",
    ]  # fmt: skip
    if rate is not None:
        command += ["--rate", f"{rate}pps"]
    started = time.monotonic()
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    text = out.stdout + out.stderr
    sent = _number(r"(\d+) packets outgoing", text)
    timing = re.search(r"(\d+) sec,\s*(\d+) usec", text)
    elapsed = int(timing[1]) + int(timing[2]) / 1e6 if timing else time.monotonic() - started
    return sent, elapsed


def parse_rate(text: str) -> int | None:
    """'250k' -> 250000, '1M' -> 1000000, 'max' -> None (trafgen unpaced)."""
    text = text.strip().lower()
    if text == "max":
        return None
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def time_epb() -> float:
    """Nanoseconds per enhanced_packet_block call for a 60-byte frame with a direction flag."""
    from flowtrace.pcap.pcapng import enhanced_packet_block

    frame = bytes(60)
    number = 200_000
    seconds = min(
        timeit.repeat(
            lambda: enhanced_packet_block(1, 1_700_000_000_123_456_789, frame, 60, True),
            number=number,
            repeat=3,
        )
    )
    return seconds / number * 1e9


def _routed_on_host(*ips: str) -> bool:
    """Whether a host route covers one of ips (other parts of 198.51.100.0/24, such as the
    lab's macvlan segment 198.51.100.64/26, do not reach the benchmark's namespaces)."""
    routes = json.loads(sh(["ip", "-4", "-j", "route", "show", "table", "all"]))
    prefixes = [r["dst"] for r in routes if r.get("dst", "default") != "default"]
    wanted = [ipaddress.ip_address(ip) for ip in ips]
    return any(ip in ipaddress.ip_network(p, strict=False) for p in prefixes for ip in wanted)


def run_bench(args: argparse.Namespace) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark makes namespaces and packet sockets")
    for tool in ("trafgen", "tcpdump"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            package = "netsniff-ng" if tool == "trafgen" else tool
            raise SystemExit(f"{tool} not found: apt-get install {package}")
    if _routed_on_host(A_IP, B_IP):
        raise SystemExit(f"{A_IP} or {B_IP} is routed on this host; the benchmark needs them free")
    rates = [parse_rate(r) for r in args.rates.split(",")]
    print(f"enhanced_packet_block: {time_epb():.0f} ns per call (60-byte frame, direction flag)")
    print(f"points: {', '.join(f'{k}/{i}' for k, i, _, _ in POINTS)}; filter: {FILTER!r}")
    workers = args.workers if args.workers is not None else "auto"
    print(f"{os.cpu_count()} CPUs; flowtrace workers: {workers}; ring {args.ring_mb} MB per point")
    header = (
        f"{'asked pps':>10} {'sent pps':>9} {'sent':>9} | "
        f"{'flowtrace captured (per point)':>36} {'drops':>7} {'CPU%':>5} | "
        f"{'tcpdump captured (per point)':>36} {'drops':>7} {'CPU%':>5}"
    )
    print(header)
    print("-" * len(header))
    best: dict[str, float] = {"flowtrace": 0.0, "tcpdump": 0.0}
    topo = Topology.build()
    try:
        for rate in rates:
            packets = args.max_packets if rate is None else int(rate * args.seconds)
            with tempfile.TemporaryDirectory(dir=args.workdir, prefix="ftbench-") as tmp:
                workdir = Path(tmp)
                config = workdir / "udp.cfg"
                config.write_text(topo.trafgen_config())
                flowtrace = start_flowtrace(topo, workdir, args)
                tcpdumps = start_tcpdumps(topo, workdir, args)
                try:
                    sent, elapsed = send(topo, config, packets, rate)
                    time.sleep(1.5)  # tcpdump hands over a part-filled block after 1 s
                finally:
                    ft = stop_flowtrace(flowtrace)
                    td = stop_tcpdumps(tcpdumps)
            achieved = sent / elapsed
            row = f"{rate or 'max':>10} {achieved:>9.0f} {sent:>9} | "
            for name, result in (("flowtrace", ft), ("tcpdump", td)):
                per_point = "/".join(str(c) for c in result.captured)
                share = 100 * result.cpu_s / elapsed
                row += f"{per_point:>36} {sum(result.drops):>7} {share:>5.0f} | "
                if result.lossless(sent):
                    best[name] = max(best[name], achieved)
            print(row.rstrip(" |"), flush=True)
    finally:
        topo.remove()
    print("CPU% = CPU time of all the tool's processes / sending time (100 = one core).")
    for name, rate_pps in best.items():
        verdict = f"{rate_pps:,.0f} pps" if rate_pps else "none of the rates tried"
        print(f"highest drop-free rate, {name}: {verdict}")


def flowtrace_child(spec_text: str) -> None:
    """The flowtrace side of the benchmark: capture until SIGINT, print the counters."""
    from flowtrace.capture.session import CaptureSession
    from flowtrace.model import Namespace, Point

    spec = json.loads(spec_text)
    points = [
        Point(
            id=f"{p['ns'].rsplit('-', 1)[1]}/{p['ifname']}",
            netns=Namespace(path=f"/run/netns/{p['ns']}", label=p["ns"]),
            ifname=p["ifname"],
            ifindex=0,
            role=p["role"],
            promisc=p["promisc"],
        )
        for p in spec["points"]
    ]
    session = CaptureSession(
        points, FILTER, Path(spec["output"]), workers=spec["workers"], ring_mb=spec["ring_mb"]
    )
    session.start()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"ready {usage.ru_utime + usage.ru_stime:.3f}", flush=True)
    stats = session.run()
    print(json.dumps({"packets": [s.packets for s in stats], "drops": [s.drops for s in stats]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100k,250k,500k,1M,max", help="e.g. 100k,250k,1M,max")
    parser.add_argument("--seconds", type=float, default=3.0, help="sending time per paced rate")
    parser.add_argument("--max-packets", type=int, default=2_000_000, help="packets at 'max'")
    parser.add_argument("--workers", type=int, default=None, help="flowtrace workers (auto)")
    parser.add_argument("--ring-mb", type=int, default=32, help="ring / buffer per point, MB")
    parser.add_argument("--workdir", default="/dev/shm", help="where the captures go (tmpfs)")
    parser.add_argument("--flowtrace-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flowtrace_child:
        flowtrace_child(args.flowtrace_child)
    else:
        run_bench(args)


if __name__ == "__main__":
    main()

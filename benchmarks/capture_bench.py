"""Capture at rising packet rates: flowtrace's CaptureSession vs four tcpdump processes.

Run by hand, as root, on a quiet machine (never from the test suite):

    .venv/bin/python benchmarks/capture_bench.py --rates 50k,100k,200k,300k,max --seconds 3

A private topology carries 60-byte UDP frames (64 on a real wire) from trafgen:

    ns a: eth0 ── pa ┐
                     ns br: br0 (bridge) ── pb ── ns b: eth0

Each tool watches the same 4 points (a/eth0, br/pa, br/br0 in promiscuous mode,
b/eth0) with the same filter.  At each rate each tool captures **alone** against the
same generator (one table per tool), then both at once (a second table).  A row
shows what the tool captured per point, what the kernel dropped, its CPU and its CPU
per captured frame; each table ends with the tool's highest rate with nothing lost.
Then the goals are judged on the alone runs (flowtrace's CPU per frame at most 1.5x
tcpdump's, its drop-free ceiling at least tcpdump's) and the exit status is 1 when
one is missed.  The machine's cores are shared by the generator (the veth and bridge
path runs in its context), the kernel and the tools.
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

    def ns_per_frame(self) -> float:
        """CPU time per captured frame, all points together."""
        frames = sum(self.captured)
        return 1e9 * self.cpu_s / frames if frames else float("nan")


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


def start_flowtrace(
    topo: Topology, workdir: Path, args: argparse.Namespace, *, python_path: bool = False
) -> FlowtraceProcess:
    spec = {
        "points": [
            {"ns": topo.namespaces[key], "ifname": ifname, "role": role, "promisc": promisc}
            for key, ifname, role, promisc in POINTS
        ],
        "output": str(workdir / ("flowtrace-py.pcapng" if python_path else "flowtrace.pcapng")),
        "workers": args.workers,
        "ring_mb": args.ring_mb,
    }
    env = dict(os.environ, FLOWTRACE_NATIVE="0" if python_path else "1")
    process = subprocess.Popen(
        [sys.executable, __file__, "--flowtrace-child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if python_path else None,  # its note says the path once
        text=True,
        env=env,
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


#: The tools a run can measure: flowtrace (the C writer when built), flowtrace with its
#: pure-Python path (FLOWTRACE_NATIVE=0), tcpdump.
TOOLS = ("flowtrace", "flowtrace-py", "tcpdump")
#: The issue's goals: flowtrace's CPU per frame at most this times tcpdump's, measured
#: alone at each rate both capture losslessly, and its drop-free ceiling at least tcpdump's.
CPU_RATIO_GOAL = 1.5
CEILING_RATIO_GOAL = 1.0


@dataclass
class Run:
    """One sending of `packets` at `rate` with some tools capturing at once."""

    rate: int | None
    sent: int
    elapsed: float
    load: float
    results: dict[str, ToolResult]

    @property
    def pps(self) -> float:
        return self.sent / self.elapsed


def run_once(
    topo: Topology, args: argparse.Namespace, tools: tuple[str, ...], rate: int | None
) -> Run:
    """Start the tools, send, stop them (SIGINT), and collect what each captured."""
    packets = args.max_packets if rate is None else int(rate * args.seconds)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="ftbench-") as tmp:
        workdir = Path(tmp)
        config = workdir / "udp.cfg"
        config.write_text(topo.trafgen_config())
        flowtraces = {
            tool: start_flowtrace(topo, workdir, args, python_path=tool == "flowtrace-py")
            for tool in tools
            if tool != "tcpdump"
        }
        tcpdumps = start_tcpdumps(topo, workdir, args) if "tcpdump" in tools else None
        results: dict[str, ToolResult] = {}
        try:
            sent, elapsed = send(topo, config, packets, rate)
            time.sleep(1.5)  # tcpdump hands over a part-filled block after 1 s
        finally:
            for tool, flowtrace in flowtraces.items():
                results[tool] = stop_flowtrace(flowtrace)
            if tcpdumps is not None:
                results["tcpdump"] = stop_tcpdumps(tcpdumps)
    return Run(rate, sent, elapsed, load, results)


def _row(run: Run, tools: tuple[str, ...]) -> str:
    row = f"{run.rate or 'max':>8} {run.pps:>9.0f} {run.sent:>9} {run.load:>5.2f} |"
    for tool in tools:
        result = run.results[tool]
        per_point = "/".join(str(c) for c in result.captured)
        share = 100 * result.cpu_s / run.elapsed
        row += (
            f" {per_point:>31} {sum(result.drops):>6} {share:>5.0f} {result.ns_per_frame():>6.0f} |"
        )
    return row.rstrip(" |")


def _header(tools: tuple[str, ...]) -> str:
    head = f"{'asked':>8} {'sent pps':>9} {'sent':>9} {'load':>5} |"
    for tool in tools:
        head += f" {tool + ' captured per point':>31} {'drops':>6} {'CPU%':>5} {'ns/fr':>6} |"
    return head.rstrip(" |")


def ceiling(runs: list[Run], tool: str) -> tuple[int | None, float] | None:
    """The highest rate asked of the generator at which this tool lost nothing (None:
    unpaced, `max`, the top step), with the rate the generator reached in that run; None
    when the tool lost frames at every rate.  Steps are compared by what was asked, not
    by what the generator reached: with no tool losing anything, the generator's own
    speed (which varies from run to run with the machine's load) is the ceiling."""
    lossless = [run for run in runs if run.results[tool].lossless(run.sent)]
    if not lossless:
        return None
    best = max(lossless, key=lambda run: float("inf") if run.rate is None else run.rate)
    return best.rate, best.pps


def _step(rate: int | None) -> float:
    return float("inf") if rate is None else float(rate)


def _ceiling_text(found: tuple[int | None, float] | None) -> str:
    if found is None:
        return "none of the rates tried"
    rate, pps = found
    asked = "max (unpaced)" if rate is None else f"{rate:,} pps asked"
    return f"{asked}, {pps:,.0f} pps reached"


def print_table(title: str, runs: list[Run], tools: tuple[str, ...]) -> None:
    print()
    print(title)
    header = _header(tools)
    print(header)
    print("-" * len(header))
    for run in runs:
        print(_row(run, tools), flush=True)
    for tool in tools:
        print(f"  highest drop-free rate, {tool}: {_ceiling_text(ceiling(runs, tool))}")


def verdicts(alone: dict[str, list[Run]], tool: str) -> list[tuple[str, float, bool]]:
    """The goals for one of ours, judged on the runs where each tool captured alone."""
    ratios = [
        ours.results[tool].ns_per_frame() / theirs.results["tcpdump"].ns_per_frame()
        for ours, theirs in zip(alone[tool], alone["tcpdump"], strict=True)
        if ours.results[tool].lossless(ours.sent)
        and theirs.results["tcpdump"].lossless(theirs.sent)
    ]
    out = []
    if ratios:
        worst = max(ratios)
        out.append(
            (f"{tool} CPU per frame / tcpdump's (worst rate both were lossless at)",
             worst, worst <= CPU_RATIO_GOAL)
        )  # fmt: skip
    ours_top, theirs_top = ceiling(alone[tool], tool), ceiling(alone["tcpdump"], "tcpdump")
    if theirs_top is None:
        ratio = float("inf") if ours_top is not None else 1.0
    elif ours_top is None:
        ratio = 0.0
    elif _step(ours_top[0]) == _step(theirs_top[0]):
        ratio = 1.0  # the same step: both held the same asked rate (or the generator's top)
    elif theirs_top[0] is None:
        ratio = (ours_top[0] or 0) / theirs_top[1]
    elif ours_top[0] is None:
        ratio = ours_top[1] / theirs_top[0]
    else:
        ratio = ours_top[0] / theirs_top[0]
    out.append(
        (f"{tool} drop-free ceiling / tcpdump's (by rate asked)", ratio,
         ratio >= CEILING_RATIO_GOAL)
    )  # fmt: skip
    return out


def run_bench(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark makes namespaces and packet sockets")
    for tool in ("trafgen", "tcpdump"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            package = "netsniff-ng" if tool == "trafgen" else tool
            raise SystemExit(f"{tool} not found: apt-get install {package}")
    if _routed_on_host(A_IP, B_IP):
        raise SystemExit(f"{A_IP} or {B_IP} is routed on this host; the benchmark needs them free")
    from flowtrace.capture import native

    ours = ("flowtrace", "flowtrace-py") if args.python_path else ("flowtrace",)
    if native.ringpcap() is None:
        print(f"note: {native.why_not()}")
    rates = [parse_rate(r) for r in args.rates.split(",")]
    print(machine())
    print(f"enhanced_packet_block (the Python path's): {time_epb():.0f} ns per 60-byte frame")
    print(f"points: {', '.join(f'{k}/{i}' for k, i, _, _ in POINTS)}; filter: {FILTER!r}")
    workers = args.workers if args.workers is not None else "auto"
    print(f"flowtrace workers: {workers}; ring {args.ring_mb} MB per point")
    print(
        "CPU% = CPU time of all the tool's processes over the sending time (100 = one "
        "core);\nns/fr = that CPU time per captured frame (all points); load = 1-minute "
        "load average before the run"
    )
    alone: dict[str, list[Run]] = {tool: [] for tool in (*ours, "tcpdump")}
    together: list[Run] = []
    topo = Topology.build()
    try:
        for rate in rates:
            for tool in alone:
                alone[tool].append(run_once(topo, args, (tool,), rate))
            if not args.no_together:
                together.append(run_once(topo, args, ("flowtrace", "tcpdump"), rate))
    finally:
        topo.remove()
    for tool, runs in alone.items():
        print_table(f"{tool} alone, at each rate", runs, (tool,))
    if together:
        print_table(
            "both at once (the same points, the same time)", together, ("flowtrace", "tcpdump")
        )
    failed = False
    print()
    print("goals (each tool alone, against the same generator):")
    for tool in ours:
        for name, value, ok in verdicts(alone, tool):
            goal = f"<= {CPU_RATIO_GOAL}" if "CPU" in name else f">= {CEILING_RATIO_GOAL}"
            print(f"  {name}: {value:.2f} (goal {goal}): {'PASS' if ok else 'FAIL'}")
            failed |= not ok and tool == "flowtrace"
    return 1 if failed else 0


def machine() -> str:
    model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    tcpdump = sh(["tcpdump", "--version"]).splitlines()[0]
    return (
        f"machine: {os.cpu_count()} CPUs ({model}), kernel {os.uname().release}, "
        f"Python {sys.version.split()[0]}, {tcpdump}, load {os.getloadavg()[0]:.2f}"
    )


def flowtrace_child(spec_text: str) -> None:
    """The flowtrace side of the benchmark: capture until SIGINT, print the counters."""
    from flowtrace.capture.session import CaptureSession
    from flowtrace.model import Namespace, Point

    # SIGINT stops it, as it stops `flowtrace capture` (cli/capture.py sets the same
    # handler): started from a script's background job, it would inherit SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
    # As `flowtrace capture` ends (cli.main): flushed, then no interpreter teardown.
    sys.stdout.flush()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", default="100k,250k,500k,1M,max", help="e.g. 100k,250k,1M,max")
    parser.add_argument("--seconds", type=float, default=3.0, help="sending time per paced rate")
    parser.add_argument("--max-packets", type=int, default=2_000_000, help="packets at 'max'")
    parser.add_argument("--workers", type=int, default=None, help="flowtrace workers (auto)")
    parser.add_argument("--ring-mb", type=int, default=32, help="ring / buffer per point, MB")
    parser.add_argument("--workdir", default="/dev/shm", help="where the captures go (tmpfs)")
    parser.add_argument(
        "--python-path",
        action="store_true",
        help="also measure flowtrace's pure-Python path (FLOWTRACE_NATIVE=0) alone",
    )
    parser.add_argument("--no-together", action="store_true", help="skip the both-at-once table")
    parser.add_argument("--flowtrace-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flowtrace_child:
        flowtrace_child(args.flowtrace_child)
    else:
        sys.exit(run_bench(args))


if __name__ == "__main__":
    main()

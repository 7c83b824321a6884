"""What `flowtrace ping c1 c2 -c 1` costs next to `docker exec c1 ping -c 1`, and where it goes.

Run by hand, as root, with the lab up (never from the test suite):

    .venv/bin/python benchmarks/ping_bench.py --runs 10

Two measures in one run:

1. Wall time from process start to exit, N runs each, alternating so both see the
   same machine load: `flowtrace ping c1 c2 -c 1 -o DIR` (a pcap set is written, as by
   default) and `docker exec c1 ping -c 1 <c2 ip>` (busybox ping inside the container).
2. A breakdown of one flowtrace run, in a fresh process so imports are cold: the
   interpreter's own start, the imports a ping run makes, each stage of the trace
   (endpoints, topology, capture start, probe, settle, correlate + record, capture
   stop) timed by wrapping the functions that do it (exclusive time: a wrapped call
   inside another counts only for itself), the terminal output, and cProfile's top
   functions by own time for the trace itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def wall_times(command: list[str], runs: int = 1) -> list[float]:
    """Process start to exit of `command`, `runs` times."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")
    return times


def container_ip(name: str) -> str:
    return subprocess.run(
        [
            "docker",
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


#: The goals: a one-probe ping's median at most this many seconds, and at most this
#: many times `docker exec c1 ping -c 1`'s median in the same run.
PING_GOAL_S = 0.35
PING_GOAL_RATIO = 3.5


def compare(runs: int, workdir: Path) -> list[tuple[str, list[float]]]:
    """Alternate the commands run by run; a warm-up run of each is not counted."""
    c2_ip = container_ip("c2")
    program = str(REPO / ".venv/bin/flowtrace")
    flowtrace = [program, "ping", "c1", "c2", "-c", "1", "-o"]
    docker = ["docker", "exec", "c1", "ping", "-c", "1", c2_ip]
    others = {
        "flowtrace path c1 c2": [program, "path", "c1", "c2"],
        "flowtrace --help": [program, "--help"],
    }
    wall_times([*flowtrace, str(workdir / "warm-up")])
    wall_times(docker)
    ours: list[float] = []
    theirs: list[float] = []
    rest: dict[str, list[float]] = {name: [] for name in others}
    for run in range(runs):
        ours += wall_times([*flowtrace, str(workdir / f"run-{run}")])
        theirs += wall_times(docker)
        for name, command in others.items():
            rest[name] += wall_times(command)
    return [
        ("flowtrace ping c1 c2 -c 1 -o DIR", ours),
        (f"docker exec c1 ping -c 1 {c2_ip}", theirs),
        *rest.items(),
    ]


def goals(rows: list[tuple[str, list[float]]]) -> list[tuple[str, bool]]:
    """The issue's two goals for the ping, judged on this run's medians."""
    ours = statistics.median(rows[0][1])
    theirs = statistics.median(rows[1][1])
    return [
        (f"ping median {ours:.3f} s (goal <= {PING_GOAL_S} s)", ours <= PING_GOAL_S),
        (
            f"ping median / docker exec's {ours / theirs:.2f}x (goal <= {PING_GOAL_RATIO}x)",
            ours / theirs <= PING_GOAL_RATIO,
        ),
    ]


# --- the breakdown, in a process of its own ------------------------------------------------

#: Functions that make up the stages of a trace: (module, attribute, method or None, phase).
#: A function is wrapped where it is called from (the module that imported its name).
STAGES = (
    ("flowtrace.topology.route", "resolve", None, "endpoints (Docker, /proc, netlink)"),
    ("flowtrace.topology.route", "choose_destination", None, "topology (netlink)"),
    ("flowtrace.topology.route", "plan_path", None, "topology (netlink)"),
    ("flowtrace.capture.session", "CaptureSession", "start", "capture start"),
    ("flowtrace.run.trace", "open_sender", None, "probe: send + wait for the answer"),
    ("flowtrace.run.trace", "ProbeStep", "send", "probe: send + wait for the answer"),
    ("flowtrace.run.loop", "LiveRun", "step", "probe: send + wait for the answer"),
    ("flowtrace.run.loop", "LiveRun", "settle", "settle: other points hand over"),
    ("flowtrace.run.trace", "ProbeTrace", "_open_recorder", "correlate + write the pcap set"),
    ("flowtrace.run.loop", "LiveRun", "flush", "correlate + write the pcap set"),
    ("flowtrace.pcap.recorder", "TraceRecorder", "close", "correlate + write the pcap set"),
    ("flowtrace.capture.session", "CaptureSession", "stop", "capture stop"),
    ("flowtrace.output.terminal", "render_trace", None, "terminal output"),
)


class ExclusiveTimer:
    """Times wrapped calls by phase; a wrapped call inside another is taken out of it."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._stack: list[float] = []  # time spent in nested wrapped calls, per level

    def wrap(self, func: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._stack.append(0.0)
            started = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                spent = time.perf_counter() - started
                nested = self._stack.pop()
                self.phases[phase] = self.phases.get(phase, 0.0) + spent - nested
                if self._stack:
                    self._stack[-1] += spent

        return timed


def breakdown_main(workdir: str, modules_file: str) -> None:
    """Body of the fresh process: imports, then one traced ping with every stage timed."""
    import importlib

    entered = time.time()  # wall clock: the parent compares it with its own

    # Import package by package, in the order a ping run first needs them; a package's
    # time includes the packages it pulls in that were not loaded yet.
    by_root: dict[str, list[str]] = {}
    for name in json.loads(Path(modules_file).read_text()):
        by_root.setdefault(name.split(".")[0], []).append(name)
    import_times: dict[str, float] = {}
    # As flowtrace imports pyroute2's submodules: without the package's __init__.
    from flowtrace.topology.netlink import lean_pyroute2

    lean_pyroute2()
    started = time.perf_counter()
    for root, names in by_root.items():
        begun = time.perf_counter()
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                continue
        import_times[root] = time.perf_counter() - begun
    imports = time.perf_counter() - started

    import cProfile
    import io
    import pstats

    from rich.console import Console

    from flowtrace import api
    from flowtrace.output import terminal

    timer = ExclusiveTimer()
    for module_name, attribute, method, phase in STAGES:
        module = importlib.import_module(module_name)
        owner = getattr(module, attribute)
        if method is None:
            setattr(module, attribute, timer.wrap(owner, phase))
        else:
            setattr(owner, method, timer.wrap(getattr(owner, method), phase))
    options = api.TraceOptions(count=1, output_dir=Path(workdir) / "breakdown", command="bench")
    profile = cProfile.Profile()
    traced_at = time.perf_counter()
    profile.enable()
    trace = api.run_trace("c1", "c2", options)
    profile.disable()
    terminal.render_trace(trace, Console(file=io.StringIO(), width=100))
    total = time.perf_counter() - traced_at
    top = io.StringIO()
    pstats.Stats(profile, stream=top).sort_stats("tottime").print_stats(8)
    print(
        json.dumps(
            {
                "entered": entered,
                "left": time.time(),
                "imports": imports,
                "import_times": import_times,
                "phases": timer.phases,
                "trace_total": total,
                "outcome": str(trace.verdicts[0]) if trace.verdicts else "none",
                "profile": top.getvalue(),
            }
        ),
        flush=True,
    )
    # As `flowtrace` itself ends (cli.main): no interpreter teardown.
    sys.stderr.flush()
    os._exit(0)


def modules_a_ping_imports(workdir: Path) -> list[str]:
    """Run one trace in a fresh process and list what it imported, in import order."""
    script = (
        "import sys, json\n"
        "before = set(sys.modules)\n"
        "from flowtrace import cli\n"
        "from flowtrace import api\n"
        "from pathlib import Path\n"
        "import io\n"
        "from rich.console import Console\n"
        "from flowtrace.output.terminal import render_trace\n"
        f"options = api.TraceOptions(output_dir=Path({str(workdir / 'modules')!r}))\n"
        "t = api.run_trace('c1', 'c2', options)\n"
        "render_trace(t, Console(file=io.StringIO()))\n"
        "print(json.dumps([m for m in sys.modules if m not in before]))\n"
    )
    done = subprocess.run([PYTHON, "-c", script], capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout.splitlines()[-1]))


def breakdown(workdir: Path) -> dict[str, Any]:
    modules_file = workdir / "modules.json"
    modules_file.write_text(json.dumps(modules_a_ping_imports(workdir)))
    interpreter = statistics.median(wall_times([PYTHON, "-c", "pass"], 5))
    spawned = time.time()
    done = subprocess.run(
        [PYTHON, __file__, "--breakdown-in", str(workdir), str(modules_file)],
        capture_output=True,
        text=True,
        check=True,
    )
    ended = time.time()
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    result["interpreter"] = interpreter
    result["started"] = result["entered"] - spawned  # interpreter + this script's imports
    result["exit"] = ended - result["left"]  # module teardown after the last statement
    result["process"] = ended - spawned
    return result


def print_report(
    rows: list[tuple[str, list[float]]], parts: dict[str, Any], load_before: float
) -> None:
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, kernel {os.uname().release}, "
        f"Python {sys.version.split()[0]}, load (1 min) {load_before:.2f} before the runs, "
        f"{load[0]:.2f} after"
    )
    print()
    width = max(len(name) for name, _ in rows)
    print(f"{'command':<{width}}  runs  median s   min s   max s")
    for name, times in rows:
        print(
            f"{name:<{width}}  {len(times):>4}  {statistics.median(times):>8.3f}"
            f"  {min(times):>6.3f}  {max(times):>6.3f}"
        )
    print()
    print(f"one flowtrace run, in a fresh process (outcome: {parts['outcome']}):")
    phases = [
        (
            f"interpreter start (python -c pass: {parts['interpreter'] * 1000:.0f} ms) + harness",
            parts["started"],
        ),
        ("imports a ping run makes", parts["imports"]),
    ]
    phases += sorted(parts["phases"].items(), key=lambda kv: -kv[1])
    accounted = sum(parts["phases"].values())
    phases.append(("other (in the trace, not in a stage above)", parts["trace_total"] - accounted))
    total = parts["process"]
    inside = parts["left"] - parts["entered"]
    phases.append(("harness (cProfile, report)", inside - parts["imports"] - parts["trace_total"]))
    phases.append(("process exit (os._exit, as the CLI)", parts["exit"]))
    width = max(len(name) for name, _ in phases)
    print(f"{'phase':<{width}}      ms  share")
    for name, seconds in phases:
        print(f"{name:<{width}}  {seconds * 1000:>6.1f}  {100 * seconds / total:>4.0f}%")
    print(f"{'whole process':<{width}}  {total * 1000:>6.1f}")
    print()
    heaviest = sorted(parts["import_times"].items(), key=lambda kv: -kv[1])[:6]
    print(
        "heaviest imports (ms, with what they pull in): "
        + ", ".join(f"{root} {seconds * 1000:.0f}" for root, seconds in heaviest)
    )
    print()
    print("cProfile of the trace (api.run_trace), top functions by own time")
    print("(lock waits are the namespace threads doing netlink and socket work):")
    lines = [line for line in parts["profile"].splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls"))
    print("\n".join(lines[start:]))
    print()
    print("goals:")
    for text, ok in goals(rows):
        print(f"  {text}: {'PASS' if ok else 'FAIL'}")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--breakdown-in":
        breakdown_main(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each command (default 10)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root, with the lab up (flowtrace lab up)")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ping-bench-") as workdir:
        rows = compare(args.runs, Path(workdir))
        parts = breakdown(Path(workdir))
    print_report(rows, parts, load_before)
    sys.exit(0 if all(ok for _, ok in goals(rows)) else 1)


if __name__ == "__main__":
    main()

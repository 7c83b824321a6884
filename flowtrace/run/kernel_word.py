"""`--rules kernel`: the kernel's own trace of the probes, for the run's duration.

In each namespace on the path flowtrace starts a small shell "holder" that has entered
only the namespace's network (nsenter --net; it runs the host's nft, so a container
needs no nft of its own).  The holder removes the tables of flowtrace runs that no
longer exist, makes the tracing table (topology.nftrace), starts `nft -a monitor trace`
(which prints the trace events to flowtrace) and waits on its stdin.  The run's barrier
waits until every monitor is subscribed to the trace group, so no event of a probe can
be missed.  When the run ends, however it ends, flowtrace writes a line to the holders
or goes away (their stdin closes): each stops its monitor and deletes its table, and
flowtrace checks the table is gone and deletes it itself if not.  A namespace flowtrace
traces is held open (a file descriptor) until then, so a container dying mid-run cannot
take the table where flowtrace cannot reach it.  skb:kfree_skb comes from run.tracefs.

Without `--rules kernel` none of this runs and nothing on the system changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from flowtrace.errors import FlowtraceError, MissingToolError
from flowtrace.model import Namespace, Packet, Point, Sighting, Verdict
from flowtrace.run.loop import Step
from flowtrace.run.tracefs import KEEP_PER_PROBE, DropWatch, read_line_within
from flowtrace.topology import kernel_report
from flowtrace.topology.kfree import drops_in_windows, flight_windows
from flowtrace.topology.nftrace import (
    TABLE_PREFIX,
    TraceMatch,
    hook_visits,
    is_flowtraces,
    lowest_priorities,
    parse_event,
    table_commands,
    table_name,
)
from flowtrace.topology.nftrules import RuleBook, legacy_tables

#: How long nft may take to make the table and subscribe to the trace group.
READY_TIMEOUT_S = 5.0
#: After the last step: events still in flight have this long to be printed.
QUIET_S = 0.05
QUIET_MAX_S = 0.5
NETLINK_NETFILTER = 12
NFNLGRP_NFTRACE = 9
#: The environment variable that marks a tracing nft process as flowtrace's (and whose).
OWNER_ENV = "FLOWTRACE_NFTRACE_OWNER"

#: One --rules kernel run at a time per process: the table and instance names are the pid's.
_ONE_AT_A_TIME = threading.Lock()


#: The holder each traced namespace runs: $1 nft, $2 the table, $3 flowtrace's pid,
#: $4 the table's nft script.  Its first line out is "monitor PID", then the events.
_HOLDER = r"""
NFT=$1 TABLE=$2 OWNER=$3
"$NFT" list tables 2>/dev/null | while read -r _ family name; do
    case $name in PREFIX*) ;; *) continue ;; esac
    pid=${name#PREFIX}
    case $pid in *[!0-9]*|'') continue ;; esac
    [ "$pid" != "$OWNER" ] && kill -0 "$pid" 2>/dev/null && continue
    "$NFT" delete table "$family" "$name" 2>/dev/null
done
monitor= made=
trap '[ -n "$monitor" ] && { kill "$monitor" 2>/dev/null; wait "$monitor" 2>/dev/null; }
      [ -n "$made" ] && "$NFT" delete table inet "$TABLE"' EXIT
trap 'exit 1' TERM INT HUP
printf '%s\n' "$4" | "$NFT" -f /dev/stdin || exit 2
made=1
"$NFT" -a monitor trace &
monitor=$!
echo "monitor $monitor"
read -r _
"""


class _Tracer:
    """The holder of one namespace: the tracing table's keeper and the events' reader."""

    def __init__(self, netns: Namespace) -> None:
        self.netns = netns
        self.fd: int | None = None
        self.holder: subprocess.Popen[str] | None = None
        self.monitor_pid: int | None = None
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed in close()
        self.lines: list[tuple[int, str]] = []
        self.reader: threading.Thread | None = None
        self.problem: str | None = None
        self.book = RuleBook()
        self.legacy: list[str] = []

    @property
    def ns_arg(self) -> str:
        return f"--net=/proc/self/fd/{self.fd}"

    def read(self) -> None:
        assert self.holder is not None and self.holder.stdout is not None
        for line in self.holder.stdout:
            self.lines.append((time.monotonic_ns(), line))

    def first_line(self, timeout: float) -> str:
        """The holder's first line ("monitor PID"), or "" when none came in time."""
        assert self.holder is not None and self.holder.stdout is not None
        line = read_line_within(self.holder.stdout.fileno(), timeout)
        return line.decode(errors="replace").strip()

    def error_text(self) -> str:
        self.stderr.seek(0)
        lines = [
            line.strip()
            for line in self.stderr.read().splitlines()
            if line.strip() and not line.startswith(("#", " "))
        ]
        return lines[-1] if lines else "nft gave no reason"


class KernelWord:
    """The probes' nftables trace in every namespace of a path, and the drop reasons.

    Use as a context manager around the live run (entering it before the run's barrier),
    wrap each step with `watch`, and build the report with `report` after it closed.
    """

    def __init__(
        self, namespaces: Sequence[Namespace], match: TraceMatch, path_netns: Sequence[str]
    ) -> None:
        unique: dict[int, Namespace] = {}
        for ns in namespaces:
            unique.setdefault(ns.inode or hash(ns.path), ns)
        self.namespaces = list(unique.values())
        self.match = match
        self.path_netns = list(path_netns)
        self.table = table_name(os.getpid())
        self.tracers: list[_Tracer] = []
        self.sent_ns: list[int] = []
        self.drops = DropWatch(self.sent_ns)
        self.kfree: list[Any] | None = None
        self.closed_ns = 0
        self._held = False
        self._closed = False

    # --- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> KernelWord:
        tools = {name: shutil.which(name) for name in ("nft", "nsenter")}
        missing = [name for name, path in tools.items() if path is None]
        if missing:
            raise MissingToolError(
                f"--rules kernel needs {' and '.join(missing)} (Debian: apt-get install "
                + ("nftables" if "nft" in missing else "util-linux")
                + ")"
            )
        if not _ONE_AT_A_TIME.acquire(blocking=False):
            raise FlowtraceError("another --rules kernel run of this process is under way")
        self._held = True
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start(self) -> None:
        _stop_stale_owners()
        self.drops.start()
        for ns in self.namespaces:
            tracer = _Tracer(ns)
            self.tracers.append(tracer)
            try:
                self._install(tracer)
            except OSError as exc:
                tracer.problem = f"cannot enter {ns.label}'s namespace: {exc.strerror or exc}"
            except subprocess.SubprocessError as exc:
                tracer.problem = f"nft did not answer in {ns.label}: {exc}"
        deadline = time.monotonic() + READY_TIMEOUT_S
        for tracer in self.tracers:
            if tracer.problem is None:
                self._wait_ready(tracer, deadline)

    def _install(self, tracer: _Tracer) -> None:
        tracer.fd = os.open(tracer.netns.path, os.O_RDONLY | os.O_CLOEXEC)
        chains = self._nft(tracer, ["-j", "list", "chains"])
        try:
            lowest = lowest_priorities(json.loads(chains.stdout or "{}"))
        except json.JSONDecodeError:
            lowest = {}
        script = "\n".join(table_commands(self.table, self.match, lowest))
        holder = _HOLDER.replace("PREFIX", TABLE_PREFIX)
        argv = [str(shutil.which("nsenter")), tracer.ns_arg, "sh", "-c", holder]
        argv += ["flowtrace-nftrace", str(shutil.which("nft")), self.table, str(os.getpid())]
        tracer.holder = subprocess.Popen(
            [*argv, script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=tracer.stderr,
            encoding="utf-8",
            errors="replace",
            pass_fds=(tracer.fd,),
            env={**os.environ, OWNER_ENV: str(os.getpid())},
            start_new_session=True,  # a terminal's Ctrl-C is flowtrace's to handle
        )

    def _wait_ready(self, tracer: _Tracer, deadline: float) -> None:
        """Until the monitor of `tracer` listens to the trace group, the table in place."""
        assert tracer.holder is not None
        first = tracer.first_line(max(0.0, deadline - time.monotonic()))
        words = first.split()
        if len(words) != 2 or words[0] != "monitor" or not words[1].isdigit():
            tracer.problem = f"nft could not trace in {tracer.netns.label}: {tracer.error_text()}"
            return
        tracer.monitor_pid = int(words[1])
        while not _subscribed(tracer.monitor_pid):
            if tracer.holder.poll() is not None or time.monotonic() > deadline:
                tracer.problem = f"nft could not trace in {tracer.netns.label}: "
                tracer.problem += tracer.error_text()
                return
            time.sleep(0.002)
        listed = self._nft(tracer, ["list", "table", "inet", self.table])
        wanted = 2 * len(self.match.rules())
        if listed.returncode != 0 or listed.stdout.count("meta nftrace set 1") != wanted:
            tracer.problem = f"the tracing table in {tracer.netns.label} is not whole: "
            tracer.problem += tracer.error_text()
        tracer.reader = threading.Thread(
            target=tracer.read, name=f"nftrace:{tracer.netns.label}", daemon=True
        )
        tracer.reader.start()

    def watch(self, step: Step) -> Step:
        """The step, its sending time noted (a probe's window for the drop reasons)."""
        return _Watched(step, self._sent)

    def _sent(self) -> None:
        self.sent_ns.append(time.monotonic_ns())

    def close(self) -> None:
        """Collect the events, then take every table and the tracefs instance away."""
        if self._closed:
            return
        self._closed = True
        try:
            with _no_sigint():
                self._settle()
                for tracer in self.tracers:
                    self._collect(tracer)
                self.closed_ns = time.monotonic_ns()
                self.kfree = self.drops.stop()
        finally:
            for tracer in self.tracers:
                _release(tracer.holder)
                tracer.stderr.close()
                if tracer.fd is not None:
                    os.close(tracer.fd)
                    tracer.fd = None
            if self._held:
                _ONE_AT_A_TIME.release()
                self._held = False

    def _settle(self) -> None:
        """Until no event came for QUIET_S: the kernel reports synchronously, nft prints
        at once; this is only the pipes' delay."""
        deadline = time.monotonic() + QUIET_MAX_S
        seen = -1
        while time.monotonic() < deadline:
            count = sum(len(t.lines) for t in self.tracers)
            if count == seen:
                return
            seen = count
            time.sleep(QUIET_S)

    def _collect(self, tracer: _Tracer) -> None:
        """The namespace's rules as they are now, then the table taken away."""
        if tracer.fd is None:
            return
        try:
            first = self._tables_json(tracer)
            saved = self._run(tracer, ["iptables-nft-save"])
            again = self._tables_json(tracer)
            tracer.book = RuleBook.read(first, saved.stdout, again)
            tracer.legacy = legacy_tables(self._run(tracer, _LEGACY_NAMES).stdout)
        except (OSError, subprocess.SubprocessError) as exc:
            if tracer.problem is None:
                tracer.problem = f"could not read the rules of {tracer.netns.label}: {exc}"
        _release(tracer.holder)
        if tracer.reader is not None:
            tracer.reader.join(timeout=5)
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if self.table in self._nft(tracer, ["list", "tables"]).stdout:
                self._nft(tracer, ["delete", "table", "inet", self.table])

    def _tables_json(self, tracer: _Tracer) -> list[str]:
        """`nft -j list table` of every table but flowtrace runs' own: nft 1.0.6 prints an
        owner table's flags as garbage in JSON, which would spoil a whole ruleset's."""
        listed = self._nft(tracer, ["list", "tables"]).stdout.split("\n")
        docs = []
        for line in listed:
            words = line.split()
            if len(words) == 3 and words[0] == "table" and not is_flowtraces(words[2]):
                docs.append(self._nft(tracer, ["-j", "list", "table", words[1], words[2]]).stdout)
        return docs

    # --- running programs in a namespace -----------------------------------------------------

    def _nft(self, tracer: _Tracer, args: list[str]) -> subprocess.CompletedProcess[str]:
        return self._run(tracer, [str(shutil.which("nft")), *args])

    def _run(self, tracer: _Tracer, argv: list[str]) -> subprocess.CompletedProcess[str]:
        program = shutil.which(argv[0]) or argv[0]
        if not os.path.exists(program):
            return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]} is not installed")
        return subprocess.run(
            [str(shutil.which("nsenter")), tracer.ns_arg, program, *argv[1:]],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=30,
            check=False,
            pass_fds=(tracer.fd,) if tracer.fd is not None else (),
        )

    # --- the report ----------------------------------------------------------------------------

    def report(
        self,
        verdicts: Sequence[Verdict],
        packets: Sequence[Packet],
        points: Sequence[Point],
        ip_ids: Mapping[int, int],
    ) -> dict[str, Any]:
        """The `kernel` section: the traced packets, the checks against flowtrace's own
        reading of the rules, the drop reasons seen."""
        visits = {}
        for tracer in self.tracers:
            events = [ev for t, line in tracer.lines if (ev := parse_event(line, t)) is not None]
            label = tracer.netns.label
            visits[label] = [tracer.book.resolve(v) for v in hook_visits(label, events)]
        keys = kernel_report.ProbeKeys(self.match, ip_ids, self.sent_ns)
        traced = kernel_report.kernel_packets(visits, self.path_netns, keys)
        found = kernel_report.checks(verdicts, packets, points, traced)
        drops = None
        if self.kfree is not None:
            last: dict[int, int] = {}
            for packet in traced:
                if packet.probe is not None and packet.visits:
                    end = max(v.time_ns for v in packet.visits)
                    last[packet.probe] = max(end, last.get(packet.probe, end))
            windows = flight_windows(self.sent_ns, last, self.closed_ns)
            drops = drops_in_windows(self.kfree, windows)
        tables = [
            {
                "netns": t.netns.label,
                "table": f"inet {self.table}",
                "traced": t.problem is None,
                "problem": t.problem,
                "legacy_tables": t.legacy,
            }
            for t in self.tracers
        ]
        notes = [
            f"{t.netns.label} has iptables-legacy tables ({', '.join(t.legacy)}): nftables "
            "tracing cannot see their rules"
            for t in self.tracers
            if t.legacy
        ]
        notes += [
            f"{more} more drops were reported while probe {probe + 1} was out than flowtrace "
            f"keeps ({KEEP_PER_PROBE}, the earliest after its sending)"
            for probe, more in sorted(self.drops.not_kept.items())
        ]
        tracefs = self.drops.problem or f"instance {self.drops.name} (skb:kfree_skb)"
        subject = "lookup" if self.match.kind == "socket" else "probe"
        return kernel_report.report(tables, traced, found, drops, tracefs, notes, subject)


class _Watched:
    """A step whose sending is noted first."""

    def __init__(self, step: Step, on_send: Callable[[], None]) -> None:
        self.step = step
        self.on_send = on_send
        self.timeout_s = step.timeout_s
        self.settle_s = step.settle_s

    def send(self) -> None:
        self.on_send()
        self.step.send()

    def answered(self, pending: Sequence[Sighting]) -> bool:
        return self.step.answered(pending)

    def settled(self, pending: Sequence[Sighting]) -> bool:
        return self.step.settled(pending)


#: The iptables-legacy tables of the namespace nsenter entered (read by `cat` there: the
#: file shows the reader's namespace; reading it loads nothing).
_LEGACY_NAMES = ["cat", "/proc/self/net/ip_tables_names"]


def _subscribed(pid: int) -> bool:
    """Process `pid` has a NETLINK_NETFILTER socket in the NFNLGRP_NFTRACE group."""
    try:
        with open(f"/proc/{pid}/net/netlink") as f:
            rows = f.read().splitlines()[1:]
        sockets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    except OSError:
        return False
    for row in rows:
        cols = row.split()
        if len(cols) < 10 or cols[1] != str(NETLINK_NETFILTER):
            continue
        if int(cols[3], 16) & (1 << (NFNLGRP_NFTRACE - 1)) and f"socket:[{cols[9]}]" in sockets:
            return True
    return False


def _release(holder: subprocess.Popen[str] | None) -> None:
    """Let a holder go: it stops its monitor and deletes its table, then exits."""
    if holder is None or holder.poll() is not None:
        return
    assert holder.stdin is not None
    with contextlib.suppress(BrokenPipeError, ValueError):
        holder.stdin.write("\n")
        holder.stdin.close()
    try:
        holder.wait(timeout=10)
    except subprocess.TimeoutExpired:
        holder.terminate()  # its EXIT trap still runs
        try:
            holder.wait(timeout=5)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


def _stop_stale_owners() -> None:
    """Tracing processes of flowtrace runs that no longer exist (a holder killed outright
    leaves its monitor): the holders remove such runs' tables."""
    mine = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        owner = next(
            (v.split(b"=", 1)[1] for v in env if v.startswith(OWNER_ENV.encode() + b"=")),
            None,
        )
        if owner is None or not owner.isdigit() or int(owner) == mine:
            continue
        if not os.path.exists(f"/proc/{int(owner)}"):
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGKILL)


@contextlib.contextmanager
def _no_sigint() -> Iterator[None]:
    """Ctrl-C does not cut the cleanup short (the main thread only can set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)

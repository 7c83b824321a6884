"""What breaks a path while a run goes on: watched, collected, and the source's last word.

The watcher starts with the run (before the barrier) and is polled as frames are taken
in.  Its sources: the engine's events for the containers on the path (a thread:
endpoints.docker_events), the capture session's word on interfaces that were deleted
(`gone_at`), and the namespaces a netns:/pid: endpoint names (their nsfs inode, checked
every POLL_S).  `faults()` turns them into model.Fault values in time order; the pure
correlate.faults names them in the verdicts.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Sequence
from typing import Any

from flowtrace.correlate.faults import SourceWord
from flowtrace.endpoints.docker_events import ContainerEvent, ContainerEvents
from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError
from flowtrace.model import Fault, Point

#: How often namespaces are checked (a stat each).
POLL_S = 0.05
_NUD = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY", 0x10: "PROBE",
        0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}  # fmt: skip
_UNANSWERED = ("INCOMPLETE", "FAILED")


def _signal_name(number: str) -> str:
    try:
        return signal.Signals(int(number)).name
    except ValueError:
        return f"signal {number}"


def container_faults(events: Sequence[ContainerEvent], points: Sequence[Point]) -> list[Fault]:
    """The engine's events as faults: a stop (with its exit code and the signal that
    caused it), a restart, a removal, a pause; each with the path's points it took."""
    faults = []
    signals: dict[str, str] = {}
    stopped: set[str] = set()
    for ev in sorted(events, key=lambda e: e.time_ns):
        taken = points_of(ev.name, points)
        if ev.action == "kill":
            signals[ev.name] = _signal_name(ev.attributes.get("signal", "0"))
        elif ev.action == "oom":
            signals[ev.name] = "out of memory"
        elif ev.action == "die":
            # Docker says exitCode; Podman's compatible API has said containerExitCode
            code = ev.attributes.get("exitCode", ev.attributes.get("containerExitCode"))
            how = [f"exit {code}"] if code is not None else []
            if ev.name in signals:
                cause = signals.pop(ev.name)
                how.append(cause if cause == "out of memory" else f"after {cause}")
            text = f"{ev.name} stopped" + (f" ({', '.join(how)})" if how else "")
            exit_code = int(code) if code is not None and code.lstrip("-").isdigit() else None
            faults.append(Fault(ev.time_ns, "container-stopped", ev.name, text, taken, exit_code))
            stopped.add(ev.name)
        elif ev.action in ("start", "restart") and ev.name in stopped:
            stopped.discard(ev.name)
            faults.append(
                Fault(
                    ev.time_ns,
                    "container-restarted",
                    ev.name,
                    f"{ev.name} restarted (in a new namespace: the interfaces watched are gone)",
                    taken,
                )
            )
        elif ev.action == "destroy":
            faults.append(
                Fault(ev.time_ns, "container-removed", ev.name, f"{ev.name} was removed", taken)
            )
        elif ev.action == "pause":
            faults.append(
                Fault(
                    ev.time_ns,
                    "container-paused",
                    ev.name,
                    f"{ev.name} was paused (its processes are frozen; its kernel still answers)",
                    taken,
                )
            )
    return faults


def points_of(container: str, points: Sequence[Point]) -> tuple[str, ...]:
    """A container's points on the path: its own, and the veth peers next to them."""
    ids = [p.id for p in points]
    own = {i for i, p in enumerate(points) if p.netns.container == container}
    near = {j for i in own for j in (i - 1, i + 1) if 0 <= j < len(points)}
    taken = own | {j for j in near if points[j].role == "veth-peer"}
    return tuple(ids[i] for i in sorted(taken))


class FaultWatcher:
    """Watches the containers, interfaces and namespaces of one run's points."""

    def __init__(self, points: Sequence[Point]) -> None:
        self.points = list(points)
        self.containers = sorted({p.netns.container for p in points if p.netns.container})
        self._events: ContainerEvents | None = None
        self._namespaces: dict[str, tuple[str, int]] = {}  # label -> (path, inode)
        for p in self.points:
            label = p.netns.label
            if label.startswith(("netns:", "pid:")) or p.netns.path.startswith("/run/netns/"):
                inode = _inode(p.netns.path)
                if inode is not None:
                    self._namespaces.setdefault(label, (p.netns.path, inode))
        self._gone_namespaces: list[Fault] = []
        self._gone_points: dict[str, int] = {}
        self._next_check = 0.0
        #: Sentences about what could not be watched (the engine did not answer).
        self.notes: list[str] = []

    def start(self) -> None:
        if not self.containers:
            return
        try:
            from flowtrace.endpoints import engines

            api = engines.api()
        except FlowtraceError as exc:
            self.notes.append(f"container events are not watched: {exc.message}")
            return
        self._events = ContainerEvents(api, self.containers)
        self._events.start()

    def poll(self, gone_at: dict[str, int] | None = None) -> None:
        """Take in the session's gone interfaces; check the namespaces now and then."""
        if gone_at:
            for point, when in gone_at.items():
                self._gone_points.setdefault(point, when)
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + POLL_S
        for label, (path, inode) in list(self._namespaces.items()):
            if _inode(path) != inode:
                del self._namespaces[label]
                what = (
                    f"process {label.removeprefix('pid:')} exited, and {label}'s namespace with it"
                    if label.startswith("pid:")
                    else f"namespace {label} ({path}) was deleted"
                )
                taken = tuple(p.id for p in self.points if p.netns.label == label)
                self._gone_namespaces.append(
                    Fault(time.time_ns(), "netns-gone", label, what, taken)
                )

    def stop(self) -> None:
        if self._events is not None:
            self._events.stop()
            if self._events.problem:
                self.notes.append(self._events.problem)

    def faults(self) -> list[Fault]:
        found: list[Fault] = []
        if self._events is not None:
            found += container_faults(self._events.events(), self.points)
            if self._events.ended_ns is not None:
                found.append(
                    Fault(
                        self._events.ended_ns,
                        "engine-gone",
                        "engine",
                        "the container engine's event stream ended (the engine stopped or "
                        "restarted): later container events are unknown",
                    )
                )
        found += self._gone_namespaces
        found += [
            Fault(when, "interface-gone", point, f"{point} went away", (point,))
            for point, when in self._gone_points.items()
        ]
        return sorted(found, key=lambda f: f.time_ns)


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def source_word(source: Point, dst_ip: str) -> SourceWord | None:
    """The source's neighbour entry for the next hop towards dst_ip, when it says the next
    hop no longer answers (INCOMPLETE, FAILED); None otherwise or when it cannot be read."""
    try:
        found = run_in_netns(source.netns.path, _next_hop_state, dst_ip)
    except Exception:  # the namespace is gone too: nothing to add
        return None
    if found is None:
        return None
    next_hop, state = found
    if state not in _UNANSWERED:
        return None
    return SourceWord(source.netns.label, next_hop, state)


def _next_hop_state(dst_ip: str) -> tuple[str, str] | None:  # runs inside the namespace
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        routes: Any = ipr.route("get", dst=dst_ip)
        if not routes:
            return None
        attrs = dict(routes[0].get("attrs", []))
        next_hop, oif = attrs.get("RTA_GATEWAY") or dst_ip, attrs.get("RTA_OIF")
        if oif is None:
            return None
        for neigh in ipr.get_neighbours(ifindex=oif):
            if dict(neigh.get("attrs", [])).get("NDA_DST") == next_hop:
                return next_hop, _NUD.get(int(neigh["state"]), hex(int(neigh["state"])))
    return None

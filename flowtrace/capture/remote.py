"""A capture on another host: its points opened by the agent there, its frames streamed here.

The controller compiles the filter (libpcap is here, not in the helper's image) and
asks the agent to open a ring on each of that host's points, exactly as a local capture
does (capture.agent runs a CaptureSession); start() returns once the agent says every
ring is bound, so the run's barrier holds across hosts.  Frames arrive as the agent
reads them, stamped by that host's kernel; each is put on the controller's clock with
the host's measured offset (correlate.clocks) before the run sees it, and numbered as
the run's own point.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from flowtrace.capture.bpf import DEFAULT_SNAPLEN, compile_filter
from flowtrace.capture.ring import RingProfile
from flowtrace.correlate.clocks import ClockOffset
from flowtrace.endpoints.helper import HelperAgent
from flowtrace.model import Frame, Point, PointStats, split_host


class AgentSource:
    """The run's points on one other host, captured by the agent there."""

    def __init__(
        self,
        agent: HelperAgent,
        points: Sequence[Point],
        indexes: Sequence[int],
        filter_expr: str | None,
        offset: ClockOffset,
        profile: RingProfile = RingProfile.TRACE,
    ) -> None:
        self.agent = agent
        self.points = list(points)
        self.indexes = list(indexes)
        self.filter_expr = filter_expr.strip() if filter_expr and filter_expr.strip() else None
        self.offset = offset
        self.profile = profile
        self.retire_ms = profile.retire_ms
        # Compile now, here: a bad expression fails before anything is opened anywhere.
        self._programs = {
            linktype: compile_filter(self.filter_expr, linktype, DEFAULT_SNAPLEN)
            for linktype in {p.linktype for p in self.points}
        }
        self._taken = 0
        self._stats: list[PointStats] | None = None
        self._notes: list[str] = []
        self._started = False

    def _there(self, point: Point) -> Point:
        """The point as the agent names it: its namespace by the host's own path."""
        host, local = split_host(point.netns.path)
        return replace(point, netns=replace(point.netns, path=local)) if host else point

    def start(self) -> None:
        """Every ring on that host is bound when this returns."""
        self.agent.start_capture(
            [self._there(p) for p in self.points],
            self._programs,
            self.profile.name,
            self.filter_expr or "",
        )
        self._started = True

    def stop(self) -> None:
        """Stop the agent's capture; the frames it still held arrive before its answer."""
        if not self._started or self._stats is not None:
            return
        stats, notes = self.agent.stop_capture()
        self._stats, self._notes = stats, notes

    def take(self) -> list[Frame]:
        """Frames that arrived since the last take: the run's point numbers, this clock."""
        new = self.agent.frames[self._taken :]
        self._taken += len(new)
        offset, indexes = self.offset.offset_ns, self.indexes
        return [
            Frame(indexes[index], time_ns - offset, data, orig_len, outbound)
            for index, time_ns, data, orig_len, outbound in new
        ]

    def snapshot(self) -> list[PointStats]:
        if self._stats is not None:
            return list(self._stats)
        return [PointStats(point=p.id) for p in self.points]

    def notes(self) -> list[str]:
        return list(self._notes)

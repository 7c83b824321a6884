"""One live run: open every point, the barrier, send, poll, settle, correlate, record.

Every live command goes through this loop: ping/tcp/udp (run.trace), dns (run.dns)
and capture (run.capture).  The order is the point of the tool: all capture sockets
are bound, with their BPF filter, before anything is sent (the session's start() is
the barrier), so nothing a probe does can be missed.  Then each `Step` (a probe, a DNS
query, a real connection through a docker-proxy) is sent and waited for; its frames
are decoded, correlated into packets, numbered, explained and appended to the pcap
set before the next step, so an interrupted run keeps everything recorded so far.

What differs between commands plugs in through `Hooks`: plain typed callables that
see values (headers, packets) and return values, never the loop's own state.

Frames come from `FrameSource`s: the local capture session for this host's points, and
for each other host an agent's capture (capture.remote), its frames already on this
host's clock.  The loop starts them all before anything is sent and takes from each as
it polls; the rest (decode, correlate, record) does not know where a frame came from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from flowtrace.capture.remote import AgentSource
from flowtrace.capture.session import CaptureSession
from flowtrace.correlate.decode import decode_frame
from flowtrace.correlate.match import correlate
from flowtrace.model import Fault, Frame, Headers, Packet, Point, PointStats, Sighting
from flowtrace.pcap.recorder import TraceRecorder
from flowtrace.run.faults import FaultWatcher
from flowtrace.topology.rewrites import attribute_nat

if TYPE_CHECKING:
    from flowtrace.endpoints.hosts import RemoteHost

#: How often the loop looks for new frames while it waits.
POLL_S = 0.002


class FrameSource(Protocol):
    """Where some of a run's frames come from; started before anything is sent."""

    #: How long the source may hold a frame before handing it over (ms).
    retire_ms: int

    def start(self) -> None:
        """When this returns, every point of the source is capturing."""

    def stop(self) -> None:
        """Let no further frame in; what was captured before is still handed over."""

    def take(self) -> list[Frame]:
        """Frames handed over since the last take: the run's point numbers, this clock."""
        ...

    def snapshot(self) -> list[PointStats]: ...

    def notes(self) -> list[str]: ...


class SessionSource:
    """The local capture session as a FrameSource for some of the run's points."""

    def __init__(self, session: CaptureSession, indexes: Sequence[int]) -> None:
        self.session = session
        self.indexes = list(indexes)
        self._identity = self.indexes == list(range(len(self.indexes)))
        self.retire_ms = session.geometry.retire_ms
        self._taken = 0

    def start(self) -> None:
        self.session.start()

    def stop(self) -> None:
        self.session.stop()

    def take(self) -> list[Frame]:
        new = self.session.frames(since=self._taken)
        self._taken += len(new)
        if self._identity:
            return new
        indexes = self.indexes
        return [replace(f, point=indexes[f.point]) for f in new]

    def snapshot(self) -> list[PointStats]:
        return self.session.snapshot()

    def notes(self) -> list[str]:
        return self.session.notes()


class Step(Protocol):
    """One thing a run sends and then waits for."""

    #: Seconds to wait for the answer; then seconds to let every ring hand over its frames.
    timeout_s: float
    settle_s: float

    def send(self) -> None:
        """Send it (a probe, a query, a connection).  Runs after the barrier."""

    def answered(self, pending: Sequence[Sighting]) -> bool:
        """Stop waiting: the answer is in (`pending`: sightings since the last flush)."""

    def settled(self, pending: Sequence[Sighting]) -> bool:
        """Stop settling: every point has handed over what this step made."""


@dataclass
class Hooks:
    """What a command adds to the loop; each is optional."""

    #: Keep a decoded frame (None: not IP) in the run, or leave it out of trace and set.
    keep: Callable[[Headers | None], bool] | None = None
    #: Number a correlated packet (its probe, its direction): a changed copy.
    number: Callable[[Packet], Packet] | None = None
    #: Rewrites no two sightings show (the source's own stack), added to the packets.
    rewrites: Callable[[list[Packet]], list[Packet]] | None = None
    #: Words that end a packet's pcapng comments (which proxy leg it is on).
    label: Callable[[Packet], str | None] | None = None
    #: Whether a kept frame's headers become a sighting; False keeps the frame for the
    #: pcap set only (NDP, which like ARP explains a loss but is no packet to follow).
    sight: Callable[[Headers], bool] | None = None


class LiveRun:
    """The points of one run, their capture, and what was seen, correlated as it comes."""

    def __init__(
        self,
        points: Sequence[Point],
        capture_filter: str | None,
        hooks: Hooks | None = None,
        *,
        output: Path | None = None,
        hosts: Mapping[str, RemoteHost] | None = None,
    ) -> None:
        self.points = list(points)
        self.point_ids = [p.id for p in self.points]
        self.hooks = hooks or Hooks()
        #: A bulk capture (`output`: the pcapng the session writes) or a traced run whose
        #: frames are kept in memory and recorded by a TraceRecorder.
        self.bulk = output is not None
        here = [i for i, p in enumerate(self.points) if p.netns.host is None]
        self.session: CaptureSession | None = None
        self.sources: list[FrameSource] = []
        if here:
            self.session = CaptureSession(
                [self.points[i] for i in here],
                capture_filter,
                None if output is None else Path(output),
                keep_frames=not self.bulk,
            )
            self.sources.append(SessionSource(self.session, here))
        for name in sorted({p.netns.host for p in self.points if p.netns.host is not None}):
            if hosts is None or name not in hosts or self.bulk:
                raise ValueError(f"points on host {name} need that host connected (traces only)")
            there = [i for i, p in enumerate(self.points) if p.netns.host == name]
            host = hosts[name]
            self.sources.append(
                AgentSource(
                    host.agent, [self.points[i] for i in there], there, capture_filter, host.offset
                )
            )
        #: With points on several hosts, a packet's sightings go in path order: the hosts'
        #: clocks agree only within their offsets' error.
        self.by_path = len({p.netns.host for p in self.points}) > 1
        self.retire_ms = max(source.retire_ms for source in self.sources)
        self.recorder: TraceRecorder | None = None
        #: What breaks the path meanwhile: containers stopping, interfaces going away.
        #: This host's points only: the watcher reads this engine's events, this kernel's
        #: namespaces and the local session's deleted interfaces; a point on another host
        #: is not watched (its agent would have to report its engine's events).
        self.watcher = FaultWatcher([p for p in self.points if p.netns.host is None])
        self.frames: list[Frame] = []
        self.sightings: list[Sighting] = []
        self.packets: list[Packet] = []
        self.stats: list[PointStats] = []
        self.interrupted = False
        self.next_packet_id = 1
        self._flushed_sightings = 0
        self._flushed_frames = 0

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """The barrier: when this returns, every point on every host is capturing (and
        this host's points are watched).

        The sources start side by side (a host's agent answers while the local rings are
        bound); if one fails, those that started are stopped again."""
        self.watcher.start()
        try:
            self._start_sources()
        except BaseException:
            self.watcher.stop()
            raise

    def _start_sources(self) -> None:
        if len(self.sources) == 1:
            self.sources[0].start()
            return
        failures: list[BaseException] = []

        def begin(source: FrameSource) -> None:
            try:
                source.start()
            except BaseException as exc:  # raised below
                failures.append(exc)

        starters = [threading.Thread(target=begin, args=(s,)) for s in self.sources]
        for starter in starters:
            starter.start()
        for starter in starters:
            starter.join()
        if failures:
            self._stop_sources()
            raise failures[0]

    def _stop_sources(self) -> None:
        errors: list[BaseException] = []
        for source in self.sources:
            try:
                source.stop()
            except BaseException as exc:  # every source is stopped first
                errors.append(exc)
        if errors:
            raise errors[0]

    def _gone_at(self) -> dict[str, int]:
        """This host's points whose interface was deleted, and when (the watcher's)."""
        return self.session.gone_at() if self.session is not None else {}

    def stop(self) -> None:
        """Stop the capture and take in (correlate, record) what the rings still held."""
        try:
            self._stop_sources()
        finally:
            by_id = {s.point: s for source in self.sources for s in source.snapshot()}
            self.stats = [by_id.get(p.id, PointStats(point=p.id)) for p in self.points]
            self.watcher.poll(self._gone_at())
            self.watcher.stop()
            if not self.bulk:
                self.absorb()
                self.flush()

    def notes(self) -> list[str]:
        """What went wrong on the way, from every source."""
        return [note for source in self.sources for note in source.notes()]

    @property
    def faults(self) -> list[Fault]:
        """What broke the path during the run, in time order."""
        return self.watcher.faults()

    def __enter__(self) -> LiveRun:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Stop; Ctrl-C is a result (`interrupted`), any other error is recorded as the
        reason the set ends where it does, then raised."""
        self.stop()
        if exc_type is KeyboardInterrupt:
            self.interrupted = True
            return True
        if exc is not None and self.recorder is not None:
            self.recorder.close(self.stats, complete=False, error=f"{type(exc).__name__}: {exc}")
        return False

    # --- steps --------------------------------------------------------------------------

    @property
    def recording_failed(self) -> bool:
        """The set could not be written further (full disk...): send nothing more."""
        return self.recorder is not None and self.recorder.stopped

    @property
    def pending(self) -> list[Sighting]:
        """Sightings taken in since the last flush."""
        return self.sightings[self._flushed_sightings :]

    def step(self, step: Step) -> None:
        """Send, wait for the answer (or the timeout), settle, then correlate and record."""
        step.send()
        deadline = time.monotonic() + step.timeout_s
        while time.monotonic() < deadline:
            self.absorb()
            if step.answered(self.pending):
                break
            time.sleep(POLL_S)
        self.settle(step)

    def settle(self, step: Step) -> None:
        """Let every ring hand over the step's frames, then flush them.

        Done once the step says so (plus two block-retire periods, so a packet still in
        flight, like the source's RST after a SYN-ACK, is not split between two chunks;
        a step whose answer ends its exchange says `linger_s = 0`); otherwise after
        step.settle_s.
        """
        deadline = time.monotonic() + step.settle_s
        linger_s = getattr(step, "linger_s", None)
        if linger_s is None:
            linger_s = 2 * self.retire_ms / 1000
        while time.monotonic() < deadline:
            self.absorb()
            if step.settled(self.pending):
                time.sleep(linger_s)
                break
            time.sleep(POLL_S)
        self.absorb()
        self.flush()

    def wait(
        self,
        duration: float | None,
        count: int | None,
        on_tick: Callable[[list[PointStats]], None] | None = None,
        stop_when: Callable[[], bool] | None = None,
    ) -> None:
        """A bulk capture's one step: record until the duration, the count, Ctrl-C, a
        failed write, or `stop_when`."""
        session = self.session
        assert session is not None

        def check() -> bool:
            self.watcher.poll(session.gone_at())
            return stop_when() if stop_when is not None else False

        session.run(duration=duration, count=count, on_tick=on_tick, stop_when=check)
        self.interrupted = session.interrupted

    # --- decoding, correlation, recording --------------------------------------------------

    def absorb(self) -> None:
        """Decode the frames the sources handed over since last time."""
        self.watcher.poll(self._gone_at())
        keep, sight = self.hooks.keep, self.hooks.sight
        for f in (frame for source in self.sources for frame in source.take()):
            headers = decode_frame(f.data, self.points[f.point].linktype)
            if keep is not None and not keep(headers):
                continue
            index = len(self.frames)
            self.frames.append(f)
            if headers is not None and (sight is None or sight(headers)):
                self.sightings.append(
                    Sighting(self.point_ids[f.point], f.time_ns, headers, f.outbound, index)
                )

    def flush(self) -> list[Packet]:
        """Correlate the sightings since the last flush, number, explain, record them."""
        chunk = sorted(self.pending, key=lambda s: s.time_ns)
        frames = {i: self.frames[i] for i in range(self._flushed_frames, len(self.frames))}
        self._flushed_sightings = len(self.sightings)
        self._flushed_frames = len(self.frames)
        if not chunk and not frames:
            return []
        number = self.hooks.number
        packets = []
        for pkt in correlate(chunk, self.point_ids, by_path=self.by_path):
            pkt = replace(pkt, packet_id=self.next_packet_id)
            self.next_packet_id += 1
            packets.append(number(pkt) if number is not None else pkt)
        if self.hooks.rewrites is not None:
            packets = self.hooks.rewrites(packets)
        packets = attribute_nat(packets, self.points)
        self.packets.extend(packets)
        if self.recorder is not None:
            labels = {}
            if self.hooks.label is not None:
                labels = {p.packet_id: text for p in packets if (text := self.hooks.label(p))}
            self.recorder.write(frames, packets, labels)
        return packets

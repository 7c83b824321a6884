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
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Protocol

from flowtrace.capture.session import CaptureSession
from flowtrace.correlate.decode import decode_frame
from flowtrace.correlate.match import correlate
from flowtrace.model import Fault, Frame, Headers, Packet, Point, PointStats, Sighting
from flowtrace.pcap.recorder import TraceRecorder
from flowtrace.run.faults import FaultWatcher
from flowtrace.topology.rewrites import attribute_nat

#: How often the loop looks for new frames while it waits.
POLL_S = 0.002


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
    ) -> None:
        self.points = list(points)
        self.point_ids = [p.id for p in self.points]
        self.hooks = hooks or Hooks()
        #: A bulk capture (`output`: the pcapng the session writes) or a traced run whose
        #: frames are kept in memory and recorded by a TraceRecorder.
        self.bulk = output is not None
        self.session = CaptureSession(
            self.points,
            capture_filter,
            None if output is None else Path(output),
            keep_frames=not self.bulk,
        )
        self.recorder: TraceRecorder | None = None
        #: What breaks the path meanwhile: containers stopping, interfaces going away.
        self.watcher = FaultWatcher(self.points)
        self.frames: list[Frame] = []
        self.sightings: list[Sighting] = []
        self.packets: list[Packet] = []
        self.stats: list[PointStats] = []
        self.interrupted = False
        self.next_packet_id = 1
        self._taken = 0  # frames the session handed over (kept or not)
        self._flushed_sightings = 0
        self._flushed_frames = 0

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """The barrier: when this returns, every point is capturing (and watched)."""
        self.watcher.start()
        try:
            self.session.start()
        except BaseException:
            self.watcher.stop()
            raise

    def stop(self) -> None:
        """Stop the capture and take in (correlate, record) what the rings still held."""
        try:
            self.session.stop()
        finally:
            self.stats = self.session.snapshot()
            self.watcher.poll(self.session.gone_at())
            self.watcher.stop()
            if not self.bulk:
                self.absorb()
                self.flush()

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
            linger_s = 2 * self.session.geometry.retire_ms / 1000
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

        def check() -> bool:
            self.watcher.poll(self.session.gone_at())
            return stop_when() if stop_when is not None else False

        self.session.run(duration=duration, count=count, on_tick=on_tick, stop_when=check)
        self.interrupted = self.session.interrupted

    # --- decoding, correlation, recording --------------------------------------------------

    def absorb(self) -> None:
        """Decode the frames the session handed over since last time."""
        self.watcher.poll(self.session.gone_at())
        new = self.session.frames(since=self._taken)
        self._taken += len(new)
        keep, sight = self.hooks.keep, self.hooks.sight
        for f in new:
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
        for pkt in correlate(chunk, self.point_ids):
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

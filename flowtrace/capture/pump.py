"""The reader of a capture's rings: one loop per thread or forked worker, and its counters.

A pump reads its rings block by block and appends whole pcapng blocks, one write
per ring block (in C when capture.native has the writer and nothing is kept in
memory), to the session's file (opened with O_APPEND, so several workers can
append side by side and the file is a valid pcapng at every moment), and keeps the
frames in memory when the tracer asks.  Counters live in anonymous shared memory:
each ring has exactly one reader, which is the only writer of that ring's counters,
and the parent reads them at any time.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import signal
import time
from collections.abc import Sequence
from operator import itemgetter
from types import ModuleType

from flowtrace.capture import native
from flowtrace.capture.ring import PacketRing
from flowtrace.model import Frame
from flowtrace.pcap.blocks import BlockWriteError, append_blocks
from flowtrace.pcap.pcapng import enhanced_packet_block

#: Per-point counter slots in shared memory: frames captured, their bytes on the wire,
#: the kernel's received and dropped, the point's state, frames whole in the output
#: file, and when the point's interface went away (ns since the epoch).
CAPTURED, BYTES, RECEIVED, DROPPED, STATE, WRITTEN, GONE_AT = range(7)
_FIELDS = 7
#: Point states.
STATE_OK, STATE_DOWN, STATE_GONE = 0, 1, 2
#: How often a ring's reader collects the kernel's counters (drops show up live).
STATS_INTERVAL_S = 0.5
_POLL_ERRORS = select.POLLERR | select.POLLHUP | select.POLLNVAL
_orig_len = itemgetter(2)
#: Held while forking: a worker sets its own handlers before it takes them.
WORKER_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class SharedCounters:
    """Per-point counters in anonymous shared memory, visible across fork.

    Each slot has exactly one writer (the reader of that ring, or the parent once
    the readers are gone), so no locking is needed; aligned 8-byte stores are atomic.
    The last slot holds the errno of a failed write to the output, if any.
    """

    def __init__(self, points: int) -> None:
        self._map = mmap.mmap(-1, (points * _FIELDS + 1) * 8)
        self._values = memoryview(self._map).cast("q")
        self._write_error_slot = points * _FIELDS

    def add(self, point: int, field: int, amount: int) -> None:
        self._values[point * _FIELDS + field] += amount

    def set(self, point: int, field: int, value: int) -> None:
        self._values[point * _FIELDS + field] = value

    def get(self, point: int, field: int) -> int:
        return self._values[point * _FIELDS + field]

    @property
    def write_error(self) -> int:
        return self._values[self._write_error_slot]

    @write_error.setter
    def write_error(self, value: int) -> None:
        self._values[self._write_error_slot] = value

    def close(self) -> None:
        self._values.release()
        self._map.close()


def write_all(fd: int, data: bytes) -> None:
    """Write everything; a regular file only returns short on a full disk."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Pump:
    """Reads a set of rings until woken, then drains what the kernel still holds.

    Runs as the session's thread or as the body of a forked worker, so it sticks
    to os.write, poll and the shared counters: nothing that takes a lock another
    thread of the parent might have held at fork time.
    """

    def __init__(
        self,
        rings: Sequence[tuple[int, PacketRing]],
        counters: SharedCounters,
        *,
        out_fd: int | None,
        wake_fd: int,
        keep: list[Frame] | None,
        retire_ms: int,
        parent_pid: int | None = None,
    ) -> None:
        self._rings = list(rings)
        self._counters = counters
        self._out_fd = out_fd
        self._wake_fd = wake_fd
        self._keep = keep
        self._retire_ms = retire_ms
        self._parent_pid = parent_pid
        self._stop_requested = False
        #: The C writer (capture.native), for a pump that writes and keeps nothing.
        self._writer = native.ringpcap() if keep is None and out_fd is not None else None

    def request_stop(self) -> None:
        """Ask the loop to finish at its next wake-up (a worker's SIGTERM handler)."""
        self._stop_requested = True

    def run(self) -> None:
        poller = select.poll()
        by_fd: dict[int, tuple[int, PacketRing]] = {}
        for index, ring in self._rings:
            by_fd[ring.fileno()] = (index, ring)
            poller.register(ring.fileno(), select.POLLIN | select.POLLERR)
        poller.register(self._wake_fd, select.POLLIN)
        next_stats = time.monotonic() + STATS_INTERVAL_S
        woken = False
        while not (woken or self._stop_requested or self._orphaned()):
            for fd, mask in poller.poll(int(STATS_INTERVAL_S * 1000)):
                if fd == self._wake_fd:
                    woken = True
                    continue
                index, ring = by_fd[fd]
                self._consume(index, ring)
                if mask & _POLL_ERRORS:
                    self._on_error(index, ring)
            now = time.monotonic()
            if now >= next_stats:
                self._collect_stats()
                next_stats = now + STATS_INTERVAL_S
        self._drain()
        self._collect_stats()

    def _orphaned(self) -> bool:
        """A worker whose parent died (SIGKILL) stops instead of capturing forever."""
        return self._parent_pid is not None and os.getppid() != self._parent_pid

    def _consume(self, index: int, ring: PacketRing) -> None:
        """Turn every ready block of one ring into one write (and kept Frames)."""
        if self._writer is not None:
            self._consume_native(index, ring, self._writer)
            return
        counters = self._counters
        for _ in range(ring.geometry.block_count):
            frames = ring.read_block()
            if frames is None:
                return
            if self._out_fd is not None and counters.write_error:
                self._out_fd = None  # another reader's write failed: the file takes no more
            if self._out_fd is not None:
                blob = b"".join(
                    [
                        enhanced_packet_block(index, time_ns, data, orig_len, outbound)
                        for time_ns, data, orig_len, outbound in frames
                    ]
                )
                try:
                    append_blocks(self._out_fd, blob)
                    counters.add(index, WRITTEN, len(frames))
                except BlockWriteError as exc:  # the file still ends on a whole block
                    counters.add(index, WRITTEN, exc.kept_packets)
                    counters.write_error = exc.errno or -1
                    self._out_fd = None
            if self._keep is not None:
                self._keep.extend(
                    [
                        Frame(index, time_ns, data, orig_len, outbound)
                        for time_ns, data, orig_len, outbound in frames
                    ]
                )
            counters.add(index, CAPTURED, len(frames))
            counters.add(index, BYTES, sum(map(_orig_len, frames)))
            if counters.get(index, STATE) == STATE_DOWN:
                counters.set(index, STATE, STATE_OK)

    def _consume_native(self, index: int, ring: PacketRing, writer: ModuleType) -> None:
        """The same in C: every ready block to EPBs and one write each, counted here."""
        counters = self._counters
        fd = -1 if self._out_fd is None else self._out_fd
        captured, wire_bytes, error, written = ring.drain_to(writer, index, fd)
        if written:
            counters.add(index, WRITTEN, written)
        if error:
            counters.write_error = error
            self._out_fd = None
        if captured:
            counters.add(index, CAPTURED, captured)
            counters.add(index, BYTES, wire_bytes)
            if counters.get(index, STATE) == STATE_DOWN:
                counters.set(index, STATE, STATE_OK)

    def _on_error(self, index: int, ring: PacketRing) -> None:
        """ENETDOWN: the link went down (it may come back) or was deleted (it won't).

        Reading the error clears it.  A deleted interface's ring stays in the poll
        set: its last, part-filled block still retires and is read like any other.
        """
        error = ring.take_error()
        if ring.interface_gone():
            if self._counters.get(index, STATE) != STATE_GONE:
                self._counters.set(index, GONE_AT, time.time_ns())
            self._counters.set(index, STATE, STATE_GONE)
        elif error:
            self._counters.set(index, STATE, STATE_DOWN)

    def _collect_stats(self) -> None:
        for index, ring in self._rings:
            received, dropped = ring.read_stats()
            self._counters.add(index, RECEIVED, received)
            self._counters.add(index, DROPPED, dropped)

    def _drain(self) -> None:
        """Read what the kernel still holds: a part-filled block retires after retire_ms."""
        deadline = time.monotonic() + (2 * self._retire_ms + 50) / 1000
        poller = select.poll()
        for _, ring in self._rings:
            poller.register(ring.fileno(), select.POLLIN)
        while True:
            for index, ring in self._rings:
                self._consume(index, ring)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not any(ring.pending() for _, ring in self._rings):
                return
            poller.poll(max(1, int(min(remaining, self._retire_ms / 1000) * 1000)))


def worker_main(pump: Pump, signal_mask: set[int | signal.Signals]) -> None:
    """Body of a forked worker: Ctrl-C is the parent's business, SIGTERM stops cleanly."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: pump.request_stop())
        signal.pthread_sigmask(signal.SIG_SETMASK, signal_mask)
        pump.run()
        code = 0
    except BaseException:
        with contextlib.suppress(OSError):
            import traceback  # only a worker that failed prints one

            os.write(2, traceback.format_exc().encode(errors="replace"))
    finally:
        os._exit(code)

"""A capture over many observation points at once, written as one pcapng.

The session is the barrier the tracer relies on: start() opens, filters and binds
a ring on every point before it returns, so any packet sent afterwards is seen.
Then pumps (pump.py) read the rings and append whole pcapng blocks to one file.

For bulk capture the rings are split between forked worker processes (they inherit
the rings the parent opened and mapped), and each block goes from the ring to the
pcapng in C (capture/_ringpcap.c, see capture.native; the pure-Python reader is the
fallback); the tracer uses one in-process thread and keeps the frames in memory as
well (a trace's few frames cost microseconds in Python).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType

from flowtrace._version import __version__
from flowtrace.capture import native
from flowtrace.capture.bpf import DEFAULT_SNAPLEN, compile_filter
from flowtrace.capture.pump import (
    BYTES,
    CAPTURED,
    DROPPED,
    GONE_AT,
    RECEIVED,
    STATE,
    STATE_DOWN,
    STATE_GONE,
    STATE_OK,
    STATS_INTERVAL_S,
    WORKER_SIGNALS,
    WRITTEN,
    Pump,
    SharedCounters,
    worker_main,
    write_all,
)
from flowtrace.capture.ring import PacketRing, RingProfile
from flowtrace.errors import FlowtraceError, SetWriteError
from flowtrace.model import Frame, Point, PointStats
from flowtrace.pcap.blocks import BlockWriteError, append_blocks
from flowtrace.pcap.pcapng import (
    interface_description_block,
    interface_statistics_block,
    section_header_block,
)

__all__ = ["STATE_DOWN", "STATE_GONE", "STATE_OK", "STATS_INTERVAL_S", "TICK_S", "CaptureSession"]

#: How often run() calls its on_tick with live counters.
TICK_S = 0.5


class CaptureSession:
    """Capture on many points at once into one pcapng (and/or memory).

    keep_frames=True is the tracer's mode: one in-process reader thread, small
    rings that hand frames over within a few ms (RingProfile.TRACE), frames()
    returns them.  Otherwise the rings are split between `workers` forked processes
    (default: one per point, at most one per CPU); workers=0 reads them in a thread
    instead.  `profile` chooses the rings' tuning when keep_frames alone does not;
    `ring_mb` and `retire_ms` override single values of it; `programs` are filters
    already compiled, by link type.
    """

    def __init__(
        self,
        points: Sequence[Point],
        filter_expr: str | None,
        output: Path | None,
        *,
        keep_frames: bool = False,
        workers: int | None = None,
        profile: RingProfile | None = None,
        ring_mb: float | None = None,
        retire_ms: int | None = None,
        programs: Mapping[int, bytes] | None = None,
    ) -> None:
        if not points:
            raise FlowtraceError("nothing to capture: no observation points")
        if keep_frames and workers:
            raise ValueError("keep_frames needs the in-process reader (workers=0)")
        self.points = tuple(points)
        self.filter_expr = filter_expr.strip() if filter_expr and filter_expr.strip() else None
        self.output = Path(output) if output is not None else None
        self.keep_frames = keep_frames
        if workers is None:
            workers = 0 if keep_frames else min(len(self.points), os.cpu_count() or 1)
        self.workers = max(0, min(workers, len(self.points)))
        if profile is None:
            profile = RingProfile.TRACE if keep_frames else RingProfile.BULK
        self.profile = profile
        self.geometry = profile.geometry(ring_mb, retire_ms)
        # Compile now: a bad expression fails before anything is opened.  `programs`
        # (by link type) were compiled elsewhere: an agent on another host gets them from
        # the controller and needs no libpcap of its own.
        self._programs = (
            dict(programs)
            if programs is not None
            else {
                linktype: compile_filter(self.filter_expr, linktype, DEFAULT_SNAPLEN)
                for linktype in {p.linktype for p in self.points}
            }
        )
        #: True when run() ended because of Ctrl-C or SIGTERM.
        self.interrupted = False
        self._rings: list[PacketRing] = []
        self._counters: SharedCounters | None = None
        self._out_fd: int | None = None
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: list[BaseException] = []
        self._worker_pids: dict[int, list[int]] = {}
        self._frames: list[Frame] = []
        self._final: list[PointStats] | None = None
        self._final_states: list[int] = []
        self._final_written: list[int] = []
        self._final_gone_at: list[int] = []
        self._write_failure = 0
        self._notes: list[str] = []
        self._closers: list[threading.Thread] = []
        self._started = False
        self._stopped = False

    # --- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Open every point's ring, write the pcapng header, start the readers.

        When this returns, any packet crossing any point is captured.
        """
        if self._started:
            return
        try:
            self._rings.extend(self._open_rings())
            self._counters = SharedCounters(len(self.points))
            if self.output is not None:
                self._out_fd = self._open_output(self.output)
            self._wake = os.pipe()
            self._started = True
            if self.output is not None and not self.keep_frames:
                native.say_once_if_python()
            if self.workers == 0:
                self._start_thread()
            else:
                self._start_workers()
        except BaseException:
            self._started = True
            with contextlib.suppress(Exception):
                self.stop()
            raise

    def _open_rings(self) -> list[PacketRing]:
        """Open every point's ring side by side: binding a packet socket waits for an RCU
        grace period, so one after another costs ~15 ms a point.  All or nothing."""
        results: list[PacketRing | BaseException | None] = [None] * len(self.points)

        def open_one(i: int, point: Point) -> None:
            try:
                results[i] = PacketRing.open(point, self._programs[point.linktype], self.geometry)
            except BaseException as exc:  # handed back below
                results[i] = exc

        openers = [
            threading.Thread(target=open_one, args=(i, point), name=f"open {point.id}")
            for i, point in enumerate(self.points)
        ]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join()
        rings = [r for r in results if isinstance(r, PacketRing)]
        errors = [r for r in results if not isinstance(r, PacketRing)]
        if errors:
            for ring in rings:
                ring.close()
            error = errors[0]
            raise error if error is not None else RuntimeError("a ring did not open")
        return rings

    def _open_output(self, path: Path) -> int:
        try:  # owner-only, as the set's other files (a set's folder creates it so first)
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600
            )
        except OSError as exc:
            raise SetWriteError(f"cannot write {path}: {exc.strerror}", exc.errno or 0) from None
        header = [section_header_block(f"flowtrace {__version__}")]
        for point in self.points:
            header.append(
                interface_description_block(
                    point.id,
                    point.description,
                    linktype=point.linktype,
                    snaplen=DEFAULT_SNAPLEN,
                    tsresol_ns=True,
                    filter_expr=self.filter_expr,
                    mac=_mac_bytes(point.mac),
                )
            )
        try:
            write_all(fd, b"".join(header))
        except OSError as exc:
            os.close(fd)
            raise SetWriteError(f"cannot write {path}: {exc.strerror}", exc.errno or 0) from None
        return fd

    def _pump(self, indexes: Sequence[int], parent_pid: int | None) -> Pump:
        assert self._counters is not None and self._wake is not None
        return Pump(
            [(i, self._rings[i]) for i in indexes],
            self._counters,
            out_fd=self._out_fd,
            wake_fd=self._wake[0],
            keep=self._frames if self.keep_frames else None,
            retire_ms=self.geometry.retire_ms,
            parent_pid=parent_pid,
        )

    def _start_thread(self) -> None:
        pump = self._pump(range(len(self.points)), None)

        def body() -> None:
            try:
                pump.run()
            except BaseException as exc:  # reported by stop()
                self._thread_error.append(exc)

        self._thread = threading.Thread(target=body, name="flowtrace-capture", daemon=True)
        self._thread.start()

    def _start_workers(self) -> None:
        parent = os.getpid()
        for worker in range(self.workers):
            indexes = list(range(worker, len(self.points), self.workers))
            pump = self._pump(indexes, parent)
            # Hold Ctrl-C and SIGTERM until the worker has its own handlers.
            held = signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_SIGNALS)
            try:
                pid = os.fork()
                if pid == 0:  # the worker: never returns
                    worker_main(pump, held)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, held)
            self._worker_pids[pid] = indexes

    def stop(self) -> None:
        """Stop the intake, drain, collect the final counters, append one ISB per point.

        Frames that crossed a point before stop() was called are kept; none after.
        Idempotent; safe to call from a finally after Ctrl-C.
        """
        if not self._started or self._stopped:
            return
        self._stopped = True
        counters = self._counters
        try:
            for ring in self._rings:
                ring.shut_intake()
            if self._wake is not None:
                os.write(self._wake[1], b"x")
            drain_s = (2 * self.geometry.retire_ms + 50) / 1000
            if self._thread is not None:
                self._thread.join(drain_s + STATS_INTERVAL_S + 5)
            self._reap_workers(drain_s + STATS_INTERVAL_S + 5)
            if counters is not None:
                for index, ring in enumerate(self._rings):
                    received, dropped = ring.read_stats()
                    counters.add(index, RECEIVED, received)
                    counters.add(index, DROPPED, dropped)
                if self._out_fd is not None and not counters.write_error:
                    self._write_statistics(counters)
        finally:
            self._release(counters)
        if self._thread_error:
            raise self._thread_error[0]

    def _reap_workers(self, timeout_s: float) -> None:
        """Wait for every worker; one that hangs is terminated, one that died is noted."""
        deadline = time.monotonic() + timeout_s
        for pid, indexes in self._worker_pids.items():
            status = _wait_pid(pid, deadline)
            if status is None:
                os.kill(pid, signal.SIGKILL)
                status = _wait_pid(pid, time.monotonic() + 5)
            if status is not None and not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                names = ", ".join(self.points[i].id for i in indexes)
                how = (
                    f"signal {os.WTERMSIG(status)}"
                    if os.WIFSIGNALED(status)
                    else f"status {os.waitstatus_to_exitcode(status)}"
                )
                self._notes.append(f"the capture worker for {names} died ({how})")

    def _write_statistics(self, counters: SharedCounters) -> None:
        now = time.time_ns()
        blocks = []
        for index, point in enumerate(self.points):
            state = counters.get(index, STATE)
            blocks.append(
                interface_statistics_block(
                    index,
                    now,
                    counters.get(index, RECEIVED),
                    counters.get(index, DROPPED),
                    comment=f"{point.id} went away during the capture"
                    if state == STATE_GONE
                    else None,
                )
            )
        assert self._out_fd is not None
        try:
            append_blocks(self._out_fd, b"".join(blocks))
        except BlockWriteError as exc:  # the statistics do not fit: the packets stay whole
            counters.write_error = exc.errno or -1

    def _release(self, counters: SharedCounters | None) -> None:
        self._write_failure = counters.write_error if counters is not None else 0
        if counters is not None:
            self._final = self._read_counters(counters)
            self._final_states = [counters.get(i, STATE) for i in range(len(self.points))]
            self._final_written = [counters.get(i, WRITTEN) for i in range(len(self.points))]
            self._final_gone_at = [counters.get(i, GONE_AT) for i in range(len(self.points))]
            counters.close()
            self._counters = None
        # Closing a packet socket waits for two RCU grace periods (20-40 ms here): the
        # bridges get their promiscuity back now, and the sockets close side by side in
        # the background while the caller correlates and records (wait_closed() joins).
        for ring in self._rings:
            ring.drop_promisc()
        self._closers = [
            threading.Thread(target=ring.close, name="flowtrace-close", daemon=True)
            for ring in self._rings
        ]
        for closer in self._closers:
            closer.start()
        if self._out_fd is not None:
            os.close(self._out_fd)
            self._out_fd = None
        if self._wake is not None:
            for fd in self._wake:
                os.close(fd)
            self._wake = None

    def wait_closed(self) -> None:
        """Wait until every ring's socket is closed (stop() leaves that to threads)."""
        for closer in self._closers:
            closer.join()

    def __enter__(self) -> CaptureSession:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the `flowtrace capture` loop ---------------------------------------------------

    def run(
        self,
        duration: float | None = None,
        count: int | None = None,
        on_tick: Callable[[list[PointStats]], None] | None = None,
        stop_when: Callable[[], bool] | None = None,
    ) -> list[PointStats]:
        """Capture until `duration` seconds, at least `count` packets in all, or Ctrl-C.

        Calls on_tick with live counters about twice a second; SIGTERM ends the run
        like Ctrl-C.  A write to the output that failed (a full disk) ends it too, and
        so does `stop_when` returning True (the set's folder was removed).  Always
        stops the session and returns the final counters.
        """
        self.start()
        deadline = None if duration is None else time.monotonic() + duration
        next_tick = time.monotonic()
        try:
            with _sigterm_as_interrupt():
                while True:
                    stats = self.snapshot()
                    now = time.monotonic()
                    if on_tick is not None and now >= next_tick:
                        on_tick(stats)
                        next_tick = now + TICK_S
                    if count is not None and sum(s.packets for s in stats) >= count:
                        break
                    if deadline is not None and now >= deadline:
                        break
                    if len(self.gone_points()) == len(self.points):
                        break
                    if self.write_failure or (stop_when is not None and stop_when()):
                        break
                    pause = 0.05 if deadline is None else min(0.05, max(0.0, deadline - now))
                    time.sleep(pause)
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            self.stop()
        return self.snapshot()

    # --- what was seen ------------------------------------------------------------------

    def snapshot(self) -> list[PointStats]:
        """Live per-point counters: frames captured, bytes on the wire, kernel drops."""
        if self._counters is not None:
            return self._read_counters(self._counters)
        if self._final is not None:
            return list(self._final)
        return [PointStats(point=p.id) for p in self.points]

    def _read_counters(self, counters: SharedCounters) -> list[PointStats]:
        return [
            PointStats(
                point=point.id,
                packets=counters.get(i, CAPTURED),
                drops=counters.get(i, DROPPED),
                bytes=counters.get(i, BYTES),
            )
            for i, point in enumerate(self.points)
        ]

    def gone_points(self) -> list[str]:
        """Ids of the points whose interface was deleted during the capture."""
        if self._counters is not None:
            states = [self._counters.get(i, STATE) for i in range(len(self.points))]
        else:
            states = self._final_states
        return [p.id for p, s in zip(self.points, states, strict=False) if s == STATE_GONE]

    @property
    def write_failure(self) -> int:
        """The errno of the first write to the output that failed (0: none did)."""
        if self._counters is not None:
            return self._counters.write_error
        return self._write_failure

    def written(self) -> list[int]:
        """Per point: frames whole in the output file (fewer than captured after a failure)."""
        if self._counters is not None:
            return [self._counters.get(i, WRITTEN) for i in range(len(self.points))]
        return list(self._final_written) or [0] * len(self.points)

    def gone_at(self) -> dict[str, int]:
        """Point id -> when its interface was deleted (ns since the epoch)."""
        if self._counters is not None:
            times = [self._counters.get(i, GONE_AT) for i in range(len(self.points))]
        else:
            times = self._final_gone_at
        return {p.id: t for p, t in zip(self.points, times, strict=False) if t}

    def notes(self) -> list[str]:
        """Plain sentences about what went wrong on the way (gone interfaces, dead workers)."""
        gone = [f"{point} went away during the capture" for point in self.gone_points()]
        return gone + list(self._notes)

    @property
    def worker_pids(self) -> list[int]:
        return list(self._worker_pids)

    def frames(self, since: int = 0) -> list[Frame]:
        """Frames read so far, from position `since` on, in the order read.

        The order is the kernel's per point; points interleave block by block.
        A poller that remembers how many it has seen passes that as `since`.
        """
        if not self.keep_frames:
            raise RuntimeError("frames() needs CaptureSession(..., keep_frames=True)")
        return self._frames[since:]


def _wait_pid(pid: int, deadline: float) -> int | None:
    """waitpid with a deadline: the raw status, or None if still running."""
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        if done:
            return status
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.01)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """While capturing from the main thread, SIGTERM ends the run like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _mac_bytes(mac: str | None) -> bytes | None:
    """'02:42:ac:11:00:02' -> 6 bytes for if_MACaddr; anything else -> None."""
    if not mac:
        return None
    try:
        raw = bytes.fromhex(mac.replace(":", "").replace("-", ""))
    except ValueError:
        return None
    return raw if len(raw) == 6 else None

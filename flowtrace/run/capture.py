"""`flowtrace capture`: record all matching traffic on every point of a path, or on named points.

The set has the same shape as a trace's: capture.pcapng (one interface per point,
ns timestamps, drop counts in Interface Statistics Blocks) and manifest.json, written
when every point is capturing (complete: false) and again at the end, so an
interrupted capture still leaves a readable set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowtrace.capture.bpf import compile_filter
from flowtrace.endpoints import engines
from flowtrace.endpoints.resolve import resolve
from flowtrace.errors import ExitStatus, FlowtraceError, NotFoundError, SetWriteError
from flowtrace.model import Point, PointStats
from flowtrace.pcap.pcapset import CAPTURE_FILE, PcapSet, start_manifest
from flowtrace.pcap.trim import trim_to_count
from flowtrace.run.loop import LiveRun
from flowtrace.topology.kernel import read_state
from flowtrace.topology.route import probe_kind_of, resolve_route


@dataclass
class CaptureResult:
    directory: Path
    pcapng: Path
    points: list[Point]
    stats: list[PointStats]
    interrupted: bool
    #: Seconds from the moment every point was capturing to the end of the capture.
    duration_s: float
    notes: list[str] = field(default_factory=list)
    #: Packets the last ring blocks held beyond --count, left out of the set.
    trimmed: int = 0
    #: Why the set could not be written to its end (a full disk...), in one line.
    write_error: str | None = None


def usage_error(message: str) -> FlowtraceError:
    """A mistake in what the user typed: exit status 2, like click's own usage errors."""
    return FlowtraceError(message, ExitStatus.USAGE)


def named_point(spec: str) -> Point:
    """`c1/eth0`, `host/docker0`, `netns:lab/eth0`: an interface in an endpoint's namespace."""
    endpoint_spec, sep, ifname = spec.rpartition("/")
    if not sep or not endpoint_spec or not ifname:
        raise usage_error(f"bad point {spec!r}: write ENDPOINT/IFNAME, e.g. c1/eth0")
    endpoint = resolve(endpoint_spec)
    state = read_state(endpoint.netns.path)
    link = state.link_by_name(ifname)
    if link is None:
        names = ", ".join(lk.name for lk in state.links)
        raise NotFoundError(f"{endpoint_spec} has no interface {ifname!r} (it has {names})")
    return Point(
        id=f"{endpoint.netns.label}/{link.name}",
        netns=endpoint.netns,
        ifname=link.name,
        ifindex=link.index,
        role="named",
        promisc=link.kind == "bridge",
        mac=link.mac,
        addresses=state.addresses_of(link.index),
    )


def check_arguments(
    src: str | None,
    dst: str | None,
    points: Sequence[str],
    filter_expr: str | None,
    duration: float | None,
    count: int | None,
) -> None:
    """Refuse what cannot work before anything is resolved or opened (exit status 2)."""
    if duration is not None and duration <= 0:
        raise usage_error(f"bad duration {duration:g}: give seconds > 0")
    if count is not None and count <= 0:
        raise usage_error(f"bad count {count}: give a number > 0")
    if (src or dst) and not (src and dst):
        raise usage_error("capture needs both SRC and DST (or --point ENDPOINT/IFNAME)")
    if not (src or dst or points):
        raise usage_error("nothing to capture: give SRC DST or --point ENDPOINT/IFNAME")
    if filter_expr and filter_expr.strip():
        try:
            compile_filter(filter_expr.strip())
        except FlowtraceError as exc:
            if type(exc) is FlowtraceError:  # a syntax error, not a missing libpcap
                raise usage_error(exc.message) from None
            raise


def choose_points(
    src: str | None, dst: str | None, points: Sequence[str]
) -> tuple[list[Point], list[str]]:
    """The path's points from src to dst (if given), then the named ones, without repeats."""
    chosen: list[Point] = []
    notes: list[str] = []
    if src and dst:
        route = resolve_route(src, dst, probe_kind_of(dst))
        chosen.extend(route.plan.points)
        notes.extend([*route.src.notes, *route.dst.notes, *route.plan.notes])
    for spec in points:
        point = named_point(spec)
        if all(p.id != point.id for p in chosen):
            chosen.append(point)
    return chosen, notes


def capture(
    src: str | None = None,
    dst: str | None = None,
    points: Sequence[str] = (),
    filter_expr: str | None = None,
    duration: float | None = None,
    count: int | None = None,
    output_dir: str | Path | None = None,
    on_tick: Callable[[list[PointStats], float], None] | None = None,
    command: str = "",
    on_ready: Callable[[list[Point], Path], None] | None = None,
) -> CaptureResult:
    """Record every matching packet on the path from src to dst, or on the named points.

    Stops after `duration` seconds, after exactly `count` packets (over all points:
    the earliest `count` are kept), or on Ctrl-C/SIGTERM; the set is valid in every
    case.  on_ready(points, folder) runs once every point is capturing: traffic
    sent from then on is recorded.
    """
    check_arguments(src, dst, points, filter_expr, duration, count)
    chosen, notes = choose_points(src, dst, points)
    label_src = src or chosen[0].id
    label_dst = dst or (chosen[-1].id if len(chosen) > 1 else "capture")
    pcap_set = PcapSet.create(output_dir, label_src, label_dst, CAPTURE_FILE)
    try:
        live = LiveRun(chosen, filter_expr, output=pcap_set.capture_path)
        live.start()  # the barrier
        session = live.session  # a capture is of this host's points only
        assert session is not None
    except BaseException:
        pcap_set.discard()  # a capture that never started leaves nothing behind
        raise
    ready_at = time.monotonic()
    tick = None
    if on_tick is not None:

        def tick(stats: list[PointStats]) -> None:
            on_tick(stats, time.monotonic() - ready_at)

    failure: BaseException | None = None
    try:
        pcap_set.start(
            start_manifest(
                "capture",
                command,
                CAPTURE_FILE,
                chosen,
                src=src,
                dst=dst,
                filter=session.filter_expr,
                engine=engines.used_meta(),
                notes=notes,
            )
        )
        if on_ready is not None:
            on_ready(chosen, pcap_set.directory)
        live.wait(duration, count, tick, stop_when=pcap_set.folder_gone)
    except SetWriteError:
        pass  # the first manifest did not fit: the set is closed below, and says so
    except BaseException as exc:  # on_ready failed: the set is still closed and described
        failure = exc
        raise
    finally:
        live.stop()
        elapsed = time.monotonic() - ready_at
        trimmed = 0
        final = live.stats
        if session.write_failure or pcap_set.folder_gone():
            pcap_set.failed(session.write_failure)
        kept = sum(s.packets for s in final)
        if pcap_set.failure is not None:
            kept = sum(session.written())
        elif count is not None and kept > count:
            trimmed, final = _trim_stats(pcap_set.capture_path, count, final)
        all_notes = notes + session.notes()
        extra: dict[str, Any] = {}
        if failure is not None:
            extra["error"] = f"{type(failure).__name__}: {failure}"
        elif pcap_set.failure is not None:
            extra["error"] = pcap_set.failure_message(kept)
            extra["packets_in_set"] = kept
        try:
            pcap_set.finish(
                final,
                duration_s=round(elapsed, 3),
                interrupted=live.interrupted,
                trimmed=trimmed,
                notes=all_notes,
                complete=failure is None,
                **extra,
            )
        finally:
            pcap_set.close()
    return CaptureResult(
        pcap_set.directory,
        pcap_set.capture_path,
        chosen,
        final,
        live.interrupted,
        elapsed,
        all_notes,
        trimmed,
        pcap_set.failure_message(kept),
    )


def _trim_stats(pcapng: Path, count: int, stats: list[PointStats]) -> tuple[int, list[PointStats]]:
    kept, kept_bytes = trim_to_count(pcapng, count, len(stats))
    trimmed = sum(s.packets for s in stats) - sum(kept)
    return trimmed, [
        PointStats(s.point, packets, s.drops, nbytes)
        for s, packets, nbytes in zip(stats, kept, kept_bytes, strict=True)
    ]

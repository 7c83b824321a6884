"""`flowtrace capture`: record all matching traffic on every point of a path, or on named points.

The set has the same shape as a trace's: capture.pcapng (one interface per point,
ns timestamps, drop counts in Interface Statistics Blocks) and manifest.json, written
when every point is capturing (complete: false) and again at the end, so an
interrupted capture still leaves a readable set.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from flowtrace.errors import ExitStatus, FlowtraceError, NotFoundError
from flowtrace.model import Point, PointStats

PCAPNG_NAME = "capture.pcapng"
MANIFEST_NAME = "manifest.json"

_BLOCK_HEADER = struct.Struct("<II")
_EPB_FIELDS = struct.Struct("<IIIII")  # interface id, time high, time low, caplen, orig_len
_BLOCK_EPB = 6


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


def usage_error(message: str) -> FlowtraceError:
    """A mistake in what the user typed: exit status 2, like click's own usage errors."""
    return FlowtraceError(message, ExitStatus.USAGE)


def named_point(spec: str) -> Point:
    """`c1/eth0`, `host/docker0`, `netns:lab/eth0`: an interface in an endpoint's namespace."""
    from flowtrace.endpoints.resolve import resolve
    from flowtrace.topology.kernel import read_state

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
    from flowtrace.capture.bpf import compile_filter

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
        from flowtrace import api

        kind = "tcp" if ":" in dst.removeprefix("netns:").removeprefix("pid:") else "icmp"
        path_points, path_notes = api.path(src, dst, kind)  # type: ignore[arg-type]
        chosen.extend(path_points)
        notes.extend(path_notes)
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
    from flowtrace.capture.session import CaptureSession
    from flowtrace.pcap.pcapset import claim_set_dir, new_set_dir, write_manifest

    check_arguments(src, dst, points, filter_expr, duration, count)
    chosen, notes = choose_points(src, dst, points)
    label_src = src or chosen[0].id
    label_dst = dst or (chosen[-1].id if len(chosen) > 1 else "capture")
    made_folder = output_dir is None or not Path(output_dir).exists()
    if output_dir is None:
        directory = new_set_dir(None, label_src, label_dst)
    else:
        directory = claim_set_dir(output_dir)
    pcapng = directory / PCAPNG_NAME
    try:
        session = CaptureSession(chosen, filter_expr, pcapng)
        session.start()
    except BaseException:
        _remove_failed_set(directory, made_folder)
        raise
    ready_at = time.monotonic()
    manifest = _start_manifest(command, src, dst, session.filter_expr, chosen, notes)
    write_manifest(directory / MANIFEST_NAME, manifest)
    tick = None
    if on_tick is not None:

        def tick(stats: list[PointStats]) -> None:
            on_tick(stats, time.monotonic() - ready_at)

    try:
        if on_ready is not None:
            on_ready(chosen, directory)
        session.run(duration=duration, count=count, on_tick=tick)
    except BaseException:
        session.stop()  # on_ready failed: the set is still closed and described
        raise
    finally:
        elapsed = time.monotonic() - ready_at
        trimmed = 0
        final = session.snapshot()
        if count is not None and sum(s.packets for s in final) > count:
            trimmed, final = _trim_stats(pcapng, count, final)
        manifest.update(
            {
                "complete": True,
                "ended": datetime.now(UTC).isoformat(),
                "duration_s": round(elapsed, 3),
                "points": [
                    dict(entry, packets=s.packets, drops=s.drops)
                    for entry, s in zip(manifest["points"], final, strict=True)
                ],
                "stats": [
                    {"point": s.point, "packets": s.packets, "drops": s.drops, "bytes": s.bytes}
                    for s in final
                ],
                "interrupted": session.interrupted,
                "trimmed": trimmed,
                "notes": notes + session.notes(),
            }
        )
        write_manifest(directory / MANIFEST_NAME, manifest)
    return CaptureResult(
        directory,
        pcapng,
        chosen,
        final,
        session.interrupted,
        elapsed,
        notes + session.notes(),
        trimmed,
    )


def _start_manifest(
    command: str,
    src: str | None,
    dst: str | None,
    filter_expr: str | None,
    points: Sequence[Point],
    notes: list[str],
) -> dict[str, Any]:
    from flowtrace._version import __version__
    from flowtrace.pcap.pcapset import MANIFEST_FORMAT, library_versions, point_entry

    return {
        "format": MANIFEST_FORMAT,
        "flowtrace": __version__,
        "kind": "capture",
        "command": command,
        "src": src,
        "dst": dst,
        "filter": filter_expr,
        "pcapng": PCAPNG_NAME,
        "kernel": os.uname().release,
        "versions": library_versions(),
        "points": [point_entry(p) for p in points],
        "notes": notes,
        "started": datetime.now(UTC).isoformat(),
        "complete": False,
    }


def _remove_failed_set(directory: Path, made_folder: bool) -> None:
    """A capture that never started leaves nothing behind (the user's own folder stays)."""
    for name in (PCAPNG_NAME, MANIFEST_NAME):
        (directory / name).unlink(missing_ok=True)
    if made_folder:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _trim_stats(pcapng: Path, count: int, stats: list[PointStats]) -> tuple[int, list[PointStats]]:
    kept, kept_bytes = trim_to_count(pcapng, count, len(stats))
    trimmed = sum(s.packets for s in stats) - sum(kept)
    return trimmed, [
        PointStats(s.point, packets, s.drops, nbytes)
        for s, packets, nbytes in zip(stats, kept, kept_bytes, strict=True)
    ]


def _blocks(handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(type, whole block) of a little-endian pcapng flowtrace wrote; stops at a cut block."""
    while True:
        head = handle.read(8)
        if len(head) < 8:
            return
        block_type, length = _BLOCK_HEADER.unpack(head)
        if length < 12:
            raise FlowtraceError(f"{handle.name}: corrupt block of length {length}")
        rest = handle.read(length - 8)
        if len(rest) < length - 8:
            return
        yield block_type, head + rest


def trim_to_count(pcapng: Path, count: int, interfaces: int) -> tuple[list[int], list[int]]:
    """Keep only the `count` earliest packets of a capture file, every other block as it is.

    The capture's workers hand over whole ring blocks, so a capture stopped at
    --count holds a few more packets than asked; the file is rewritten without them
    (ties in time are broken by file order) and replaced atomically.  Returns the
    packets and bytes on the wire kept per interface.
    """
    times = array("q")
    with open(pcapng, "rb") as handle:
        for block_type, block in _blocks(handle):
            if block_type == _BLOCK_EPB:
                _, high, low, _, _ = _EPB_FIELDS.unpack_from(block, 8)
                times.append((high << 32) | low)
    if len(times) <= count:
        return _tally(pcapng, interfaces)
    cutoff = sorted(times)[count - 1]
    at_cutoff = count - sum(1 for t in times if t < cutoff)
    del times
    packets = [0] * interfaces
    nbytes = [0] * interfaces
    partial = pcapng.with_name(f".{pcapng.name}.{os.getpid()}.tmp")
    try:
        with open(pcapng, "rb") as source, open(partial, "wb") as target:
            for block_type, block in _blocks(source):
                if block_type == _BLOCK_EPB:
                    interface, high, low, _, orig_len = _EPB_FIELDS.unpack_from(block, 8)
                    time_ns = (high << 32) | low
                    if time_ns > cutoff:
                        continue
                    if time_ns == cutoff:
                        if at_cutoff == 0:
                            continue
                        at_cutoff -= 1
                    if interface < interfaces:
                        packets[interface] += 1
                        nbytes[interface] += orig_len
                target.write(block)
            target.flush()
            os.fsync(target.fileno())
        os.replace(partial, pcapng)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return packets, nbytes


def _tally(pcapng: Path, interfaces: int) -> tuple[list[int], list[int]]:
    packets = [0] * interfaces
    nbytes = [0] * interfaces
    with open(pcapng, "rb") as handle:
        for block_type, block in _blocks(handle):
            if block_type == _BLOCK_EPB:
                interface, _, _, _, orig_len = _EPB_FIELDS.unpack_from(block, 8)
                if interface < interfaces:
                    packets[interface] += 1
                    nbytes[interface] += orig_len
    return packets, nbytes

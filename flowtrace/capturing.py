"""`flowtrace capture`: record all matching traffic on every point of a path, or on named points.

The set has the same shape as a trace's: capture.pcapng (one interface per point,
ns timestamps, drop counts in Interface Statistics Blocks) and manifest.json, written
at the start (complete: false) and again at the end, so an interrupted capture still
leaves a readable set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowtrace import __version__
from flowtrace.errors import FlowtraceError, NotFoundError
from flowtrace.model import Point, PointStats

PCAPNG_NAME = "capture.pcapng"


@dataclass
class CaptureResult:
    directory: Path
    pcapng: Path
    points: list[Point]
    stats: list[PointStats]
    interrupted: bool
    duration_s: float
    notes: list[str] = field(default_factory=list)


def named_point(spec: str) -> Point:
    """`c1/eth0`, `host/docker0`, `netns:lab/eth0`: an interface in an endpoint's namespace."""
    from flowtrace.endpoints.resolve import resolve
    from flowtrace.topology.kernel import read_state

    endpoint_spec, sep, ifname = spec.rpartition("/")
    if not sep or not endpoint_spec or not ifname:
        raise FlowtraceError(f"bad point {spec!r}: write ENDPOINT/IFNAME, e.g. c1/eth0")
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
) -> CaptureResult:
    """Record every matching packet on the path from src to dst, or on the named points."""
    from flowtrace.capture.session import CaptureSession
    from flowtrace.pcap.pcapset import new_set_dir, write_manifest

    if duration is not None and duration <= 0:
        raise FlowtraceError(f"bad duration {duration}: give seconds > 0")
    if count is not None and count <= 0:
        raise FlowtraceError(f"bad count {count}: give a number > 0")
    chosen: list[Point] = []
    notes: list[str] = []
    if src or dst:
        if not (src and dst):
            raise FlowtraceError("capture needs both SRC and DST (or --point ENDPOINT/IFNAME)")
        from flowtrace import api

        kind = "tcp" if ":" in dst.removeprefix("netns:").removeprefix("pid:") else "icmp"
        path_points, path_notes = api.path(src, dst, kind)  # type: ignore[arg-type]
        chosen.extend(path_points)
        notes.extend(path_notes)
    for spec in points:
        point = named_point(spec)
        if all(p.id != point.id for p in chosen):
            chosen.append(point)
    if not chosen:
        raise FlowtraceError("nothing to capture: give SRC DST or --point ENDPOINT/IFNAME")

    label_src = src or chosen[0].id
    label_dst = dst or (chosen[-1].id if len(chosen) > 1 else "capture")
    if output_dir is not None and (
        not Path(output_dir).exists() or not any(Path(output_dir).iterdir())
    ):
        directory = Path(output_dir)
        directory.mkdir(parents=True, exist_ok=True)
    else:
        directory = new_set_dir(output_dir, label_src, label_dst)
    pcapng = directory / PCAPNG_NAME
    manifest: dict[str, Any] = {
        "flowtrace": __version__,
        "kind": "capture",
        "command": command,
        "src": src,
        "dst": dst,
        "filter": filter_expr,
        "pcapng": PCAPNG_NAME,
        "points": [
            {
                "id": p.id,
                "netns": p.netns.label,
                "container": p.netns.container,
                "ifname": p.ifname,
                "role": p.role,
                "description": p.description,
            }
            for p in chosen
        ],
        "notes": notes,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": False,
    }
    session = CaptureSession(chosen, filter_expr, pcapng)
    write_manifest(directory / "manifest.json", manifest)
    started = time.monotonic()
    tick = None
    if on_tick is not None:

        def tick(stats: list[PointStats]) -> None:
            on_tick(stats, time.monotonic() - started)

    try:
        stats = session.run(duration=duration, count=count, on_tick=tick)
    finally:
        final = session.snapshot()
        manifest.update(
            {
                "ended": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "stats": [
                    {"point": s.point, "packets": s.packets, "drops": s.drops, "bytes": s.bytes}
                    for s in final
                ],
                "interrupted": session.interrupted,
                "notes": notes + session.notes(),
                "complete": True,
            }
        )
        write_manifest(directory / "manifest.json", manifest)
    return CaptureResult(
        directory,
        pcapng,
        chosen,
        stats,
        session.interrupted,
        time.monotonic() - started,
        notes + session.notes(),
    )

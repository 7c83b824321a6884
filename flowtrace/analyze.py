"""Correlate a recorded set offline: flows, packets hop by hop, NAT events, hop latency.

Reads flowtrace's own sets and sets it did not write (a multi-interface pcapng such
as tcpdump captures merged with mergecap; several classic pcaps, one point each).
The pass is a stream: frames are decoded and correlated as they are read, packets are
handed to a callback and dropped, and only per-flow and per-hop summaries (histograms
of fixed size) are kept, so memory does not grow with the set's length.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

from flowtrace.errors import CaptureFormatError, NotFoundError
from flowtrace.model import Namespace, NatEvent, Packet, Point, PointStats, Sighting, Trace

FlowKey = tuple[str, str, int | None, str, int | None]


@dataclass
class FlowSummary:
    key: FlowKey  # (proto, src, sport, dst, dport) as the initiator sent it
    requests: int = 0
    replies: int = 0
    first_ns: int = 0
    last_ns: int = 0
    nat: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        proto, src, sport, dst, dport = self.key
        return {
            "proto": proto,
            "src": src,
            "sport": sport,
            "dst": dst,
            "dport": dport,
            "requests": self.requests,
            "replies": self.replies,
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "nat": sorted(self.nat),
        }


@dataclass
class Analysis:
    """What a pass over a set found. `trace` holds packets only when kept (notebooks)."""

    trace: Trace
    frames: int = 0
    undecoded: int = 0
    packet_count: int = 0
    flows: dict[FlowKey, FlowSummary] = field(default_factory=dict)
    nat: dict[tuple[str, str, str, str, str], tuple[NatEvent, int]] = field(default_factory=dict)
    hops: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    truncated: bool = False
    sources: list[str] = field(default_factory=list)


def _flow_key(pkt: Packet) -> FlowKey:
    s = pkt.first if pkt.direction == "request" else pkt.last
    h = s.headers
    sport = h.sport if h.sport is not None else h.icmp_id
    if pkt.direction == "request":
        return (h.proto_name, h.src, sport, h.dst, h.dport)
    return (h.proto_name, h.dst, h.dport if h.dport is not None else h.icmp_id, h.src, h.sport)


def _points_from(reader: Any, manifest: dict[str, Any] | None) -> list[Point]:
    by_name = {}
    if manifest:
        for entry in manifest.get("points", []):
            by_name[entry.get("id")] = entry
    points = []
    for iface in reader.interfaces:
        info = by_name.get(iface.name, {})
        label = info.get("netns") or (iface.name.split("/", 1)[0] if "/" in iface.name else "")
        ns = Namespace("", label or iface.name, 0, info.get("container"))
        ifname = info.get("ifname") or iface.name.rsplit("/", 1)[-1]
        points.append(
            Point(
                iface.name,
                ns,
                ifname,
                iface.index,
                info.get("role", "named"),
                linktype=iface.linktype,
            )
        )
    return points


def analyze(
    path: str | Path | Sequence[str | Path],
    keep_packets: bool = True,
    on_packet: Callable[[Packet], None] | None = None,
    window_ns: int = 2_000_000_000,
) -> Analysis:
    """One streaming pass over a set; packets go to on_packet (and the trace if kept)."""
    from flowtrace.correlate.match import correlate
    from flowtrace.correlate.stats import HopStats
    from flowtrace.pcap.pcapset import read_manifest
    from flowtrace.pcap.reader import open_capture

    paths = [path] if isinstance(path, str | Path) else list(path)
    for p in paths:
        if not Path(p).exists():
            raise NotFoundError(f"{p}: no such file or folder")
    manifest = None
    if len(paths) == 1 and Path(paths[0]).is_dir():
        manifest = read_manifest(Path(paths[0]) / "manifest.json")
    reader = open_capture(paths if len(paths) > 1 else paths[0])
    analysis = Analysis(trace=Trace((), ()))
    kept: list[Packet] = []
    with reader:
        points = _points_from(reader, manifest)
        order = [p.id for p in points]
        if manifest and manifest.get("points"):
            order = [e["id"] for e in manifest["points"]]

        def sightings() -> Iterator[Sighting]:
            from flowtrace.correlate.decode import decode_frame

            nonlocal points
            linktypes: list[int] = [p.linktype for p in points]
            names: list[str] = [p.id for p in points]
            for index, rec in enumerate(reader):
                analysis.frames += 1
                if rec.interface >= len(names):  # an interface described mid-file
                    points = _points_from(reader, manifest)
                    linktypes = [p.linktype for p in points]
                    names = [p.id for p in points]
                headers = decode_frame(rec.data, linktypes[rec.interface])
                if headers is None:
                    analysis.undecoded += 1
                    continue
                yield Sighting(names[rec.interface], rec.time_ns, headers, rec.outbound, index)

        for pkt in correlate(sightings(), order, window_ns):
            analysis.packet_count += 1
            if on_packet is not None:
                on_packet(pkt)
            if keep_packets:
                kept.append(pkt)
            key = _flow_key(pkt)
            flow = analysis.flows.get(key)
            if flow is None:
                flow = analysis.flows[key] = FlowSummary(key, first_ns=pkt.first.time_ns)
            if pkt.direction == "request":
                flow.requests += 1
            else:
                flow.replies += 1
            flow.last_ns = max(flow.last_ns, pkt.last.time_ns)
            for ev in pkt.nat:
                flow.nat.add(ev.kind)
                nat_key = (ev.kind, ev.between[0], ev.between[1], str(ev.before), str(ev.after))
                seen = analysis.nat.get(nat_key)
                analysis.nat[nat_key] = (ev, (seen[1] if seen else 0) + 1)
            sights = pkt.sightings
            for a, b in pairwise(sights):
                hop = (pkt.direction, a.point, b.point)
                stats = analysis.hops.get(hop)
                if stats is None:
                    stats = analysis.hops[hop] = HopStats()
                stats.add(b.time_ns - a.time_ns)
        analysis.truncated = bool(reader.truncated)
        analysis.sources = list(reader.sources)
        stats_by_iface = reader.latest_stats()
    if analysis.frames == 0 and not points:
        raise CaptureFormatError(f"{path}: holds no interfaces and no packets")
    point_stats = tuple(
        PointStats(points[i].id, s.received or 0, s.dropped or 0)
        for i, s in sorted(stats_by_iface.items())
        if i < len(points)
    )
    meta: dict[str, object] = {"title": f"flowtrace analyze {path}", "source": str(path)}
    if manifest:
        meta["manifest"] = manifest
    analysis.trace = Trace(tuple(points), tuple(kept), (), point_stats, meta)
    return analysis


def summary_dict(analysis: Analysis) -> dict[str, Any]:
    """Everything but the packets: flows, NAT events with counts, per-hop statistics."""
    from flowtrace.output.jsonout import nat_dict, point_dict

    return {
        "points": [point_dict(p) for p in analysis.trace.points],
        "frames": analysis.frames,
        "undecoded": analysis.undecoded,
        "packets": analysis.packet_count,
        "truncated": analysis.truncated,
        "flows": [f.as_dict() for f in analysis.flows.values()],
        "nat": [dict(nat_dict(ev), count=n) for ev, n in analysis.nat.values()],
        "hops": [
            dict({"direction": d, "from": a, "to": b}, **stats.summary())
            for (d, a, b), stats in analysis.hops.items()
        ],
        "stats": [
            {"point": s.point, "packets": s.packets, "drops": s.drops} for s in analysis.trace.stats
        ],
    }

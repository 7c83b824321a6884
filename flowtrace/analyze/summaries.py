"""What a pass over a set keeps: per-flow and per-hop summaries, never the packets.

Memory grows with the number of distinct flows and hops, not with the packets: each
packet is folded into its flow's counters and its hops' fixed-size histograms, then
dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from flowtrace._version import __version__
from flowtrace.correlate.stats import HopStats
from flowtrace.model import NatEvent, Packet, Trace
from flowtrace.output.hostview import clock_errors, hop_error
from flowtrace.output.jsonout import SCHEMA_VERSION, nat_dict, point_dict

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
    #: NDP frames a trace recorded to explain a loss: like its ARP, no packet it follows.
    ndp_frames: int = 0
    packet_count: int = 0
    flows: dict[FlowKey, FlowSummary] = field(default_factory=dict)
    nat: dict[tuple[str, str, str, str, str], tuple[NatEvent, int]] = field(default_factory=dict)
    #: (direction, packet kind, from point, to point) -> HopStats: a SYN's hops and its
    #: RST's are told apart (see Headers.kind).
    hops: dict[tuple[str, str, str, str], Any] = field(default_factory=dict)
    truncated: bool = False
    sources: list[str] = field(default_factory=list)
    #: Plain sentences about the set: what looks wrong with it and what to do.
    notes: list[str] = field(default_factory=list)


class Summaries:
    """Folds each packet of a pass into the analysis's flows, NAT rewrites and hop statistics.

    Runs once per packet of captures of millions, so what repeats from packet to
    packet is worked out once: the NAT key of a rewrite (the correlator hands the same
    NatEvent object to every packet of a flow) and the HopStats of each hop of a path.
    """

    def __init__(self, analysis: Analysis) -> None:
        self.analysis = analysis
        #: id(event) -> (event, its key in analysis.nat); the event is held so its id stays its own.
        self._nat_keys: dict[int, tuple[NatEvent, tuple[str, str, str, str, str]]] = {}
        #: (direction, kind, points in path order) -> the HopStats of each hop, in order.
        self._paths: dict[tuple[str, str, tuple[str, ...]], list[Any]] = {}

    def add(self, pkt: Packet) -> None:
        analysis = self.analysis
        sightings = pkt.sightings
        key = flow_key(pkt)
        flow = analysis.flows.get(key)
        if flow is None:
            flow = analysis.flows[key] = FlowSummary(key, first_ns=sightings[0].time_ns)
        if pkt.direction == "request":
            flow.requests += 1
        else:
            flow.replies += 1
        last_ns = sightings[-1].time_ns
        if last_ns > flow.last_ns:
            flow.last_ns = last_ns
        for ev in pkt.nat:
            flow.nat.add(ev.kind)
            nat_key = self._nat_key(ev)
            seen = analysis.nat.get(nat_key)
            analysis.nat[nat_key] = (ev, (seen[1] if seen else 0) + 1)
        if len(sightings) > 1:
            kind = sightings[0].headers.kind
            path = (pkt.direction, kind, tuple([s.point for s in sightings]))
            hops = self._paths.get(path) or self._hops_of(path)
            before = sightings[0].time_ns
            for stats, s in zip(hops, sightings[1:], strict=True):
                stats.add(s.time_ns - before)
                before = s.time_ns

    def _nat_key(self, ev: NatEvent) -> tuple[str, str, str, str, str]:
        known = self._nat_keys.get(id(ev))
        if known is not None and known[0] is ev:
            return known[1]
        if len(self._nat_keys) >= _SUMMARY_CACHE_LIMIT:
            self._nat_keys.clear()
        key = (ev.kind, ev.between[0], ev.between[1], str(ev.before), str(ev.after))
        self._nat_keys[id(ev)] = (ev, key)
        return key

    def _hops_of(self, path: tuple[str, str, tuple[str, ...]]) -> list[Any]:
        if len(self._paths) >= _SUMMARY_CACHE_LIMIT:
            self._paths.clear()
        direction, kind, points = path
        hops = []
        for a, b in pairwise(points):
            stats = self.analysis.hops.get((direction, kind, a, b))
            if stats is None:
                stats = self.analysis.hops[(direction, kind, a, b)] = HopStats()
            hops.append(stats)
        self._paths[path] = hops
        return hops


#: Entries the per-packet caches hold before they start over (memory stays bounded).
_SUMMARY_CACHE_LIMIT = 1 << 14


def flow_key(pkt: Packet) -> FlowKey:
    s = pkt.first if pkt.direction == "request" else pkt.last
    h = s.headers
    sport = h.sport if h.sport is not None else h.icmp_id
    if pkt.direction == "request":
        return (h.proto_name, h.src, sport, h.dst, h.dport)
    return (h.proto_name, h.dst, h.dport if h.dport is not None else h.icmp_id, h.src, h.sport)


def summary_dict(analysis: Analysis) -> dict[str, Any]:
    """Everything but the packets: flows, NAT events with counts, per-hop statistics (with
    the bound the hosts' clocks put on a hop between two hosts, `error_ns`)."""
    trace = analysis.trace
    points = {p.id: p for p in trace.points}
    errors = clock_errors(trace.meta)
    return {
        "schema": SCHEMA_VERSION,
        "flowtrace": __version__,
        "sources": list(analysis.sources),
        "points": [point_dict(p) for p in analysis.trace.points],
        "frames": analysis.frames,
        "undecoded": analysis.undecoded,
        "ndp_frames": analysis.ndp_frames,
        "packets": analysis.packet_count,
        "truncated": analysis.truncated,
        "flows": [f.as_dict() for f in analysis.flows.values()],
        "nat": [dict(nat_dict(ev), count=n) for ev, n in analysis.nat.values()],
        "hops": [
            dict(
                {"direction": d, "kind": kind, "from": a, "to": b},
                **stats.summary(),
                error_ns=hop_error(points, errors, a, b),
            )
            for (d, kind, a, b), stats in analysis.hops.items()
        ],
        "hosts": trace.meta.get("hosts") or [],
        "tunnels": trace.meta.get("tunnels") or [],
        "stats": [
            {"point": s.point, "packets": s.packets, "drops": s.drops} for s in analysis.trace.stats
        ],
        "notes": list(analysis.notes),
    }

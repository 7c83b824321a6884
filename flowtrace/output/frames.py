"""A trace as pandas DataFrames, for notebooks: one row per sighting, or one per hop.

The column order and dtypes are fixed (see SIGHTING_COLUMNS and HOP_COLUMNS) so that
notebooks, tests and plots can rely on them whatever the trace holds, even when it is
empty.  pandas is imported inside the functions: the CLI imports this module for the
NAT wording alone.  Nothing here imports matplotlib.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from flowtrace.model import NatEvent, Packet, Trace

if TYPE_CHECKING:
    import pandas

#: Columns of to_dataframe(), in order, with their pandas dtypes.  Ports and ICMP
#: fields are nullable (Int64) because only some protocols have them; text is "string".
SIGHTING_COLUMNS: dict[str, str] = {
    "packet_id": "int64",
    "probe": "Int64",
    "direction": "string",
    "hop": "int64",
    "point": "string",
    "netns": "string",
    "container": "string",
    "role": "string",
    "time_ns": "int64",
    "t_us": "float64",
    "t_trace_us": "float64",
    "delta_us": "float64",
    "src": "string",
    "dst": "string",
    "sport": "Int64",
    "dport": "Int64",
    "proto": "string",
    "icmp_id": "Int64",
    "icmp_seq": "Int64",
    "ip_id": "int64",
    "ttl": "int64",
    "nat": "string",
}

#: Columns of hops_dataframe(), in order, with their pandas dtypes.
HOP_COLUMNS: dict[str, str] = {
    "packet_id": "int64",
    "probe": "Int64",
    "direction": "string",
    "hop": "int64",
    "from_point": "string",
    "to_point": "string",
    "delta_us": "float64",
    "nat": "string",
}


def nat_label(event: NatEvent) -> str:
    """How a rewrite reads to a person: "SNAT 172.17.0.2 -> 203.0.113.1" (NatEvent.label)."""
    return event.label


def nat_hop_index(packet: Packet, event: NatEvent) -> int | None:
    """Index of the sighting that first shows `event`'s rewrite, or None if none does.

    That is the sighting at `between[1]` whose predecessor is `between[0]`; if the
    correlator recorded a pair that is not adjacent (a point missed the packet), it is
    the first sighting at `between[1]`.
    """
    points = [s.point for s in packet.sightings]
    before, after = event.between
    for hop in range(1, len(points)):
        if (points[hop - 1], points[hop]) == (before, after):
            return hop
    return next((hop for hop, point in enumerate(points) if point == after), None)


def nat_by_hop(packet: Packet) -> dict[int, str]:
    """NAT labels of a packet keyed by sighting index (see nat_hop_index), joined by "; "."""
    labels: dict[int, list[str]] = {}
    for event in packet.nat:
        hop = nat_hop_index(packet, event)
        if hop is not None:
            labels.setdefault(hop, []).append(nat_label(event))
    return {hop: "; ".join(texts) for hop, texts in labels.items()}


def _frame(columns: dict[str, list[object]], dtypes: dict[str, str]) -> pandas.DataFrame:
    import pandas as pd

    return pd.DataFrame({name: pd.array(columns[name], dtype=dtypes[name]) for name in dtypes})


def _trace_start_ns(trace: Trace) -> int:
    return min((s.time_ns for pkt in trace.packets for s in pkt.sightings), default=0)


def _point_facts(trace: Trace) -> dict[str, tuple[str | None, str | None, str | None]]:
    """Point id -> (netns label, container, role); points unknown to the trace get NA."""
    return {p.id: (p.netns.label, p.netns.container, p.role) for p in trace.points}


def to_dataframe(trace: Trace) -> pandas.DataFrame:
    """One row per sighting, in packet order and then path order (see SIGHTING_COLUMNS).

    t_us counts from the packet's first sighting, t_trace_us from the trace's first
    sighting, delta_us from the previous sighting of the same packet (NaN on its first).
    `nat` holds the rewrite that happened between the previous hop and this one.
    """
    columns: dict[str, list[object]] = {name: [] for name in SIGHTING_COLUMNS}
    facts = _point_facts(trace)
    trace_start = _trace_start_ns(trace)
    for packet in trace.packets:
        nat = nat_by_hop(packet)
        first_ns = packet.sightings[0].time_ns if packet.sightings else 0
        previous_ns: int | None = None
        for hop, sighting in enumerate(packet.sightings):
            hdr = sighting.headers
            netns, container, role = facts.get(sighting.point, (None, None, None))
            row: dict[str, object] = {
                "packet_id": packet.packet_id,
                "probe": packet.probe,
                "direction": packet.direction,
                "hop": hop,
                "point": sighting.point,
                "netns": netns,
                "container": container,
                "role": role,
                "time_ns": sighting.time_ns,
                "t_us": (sighting.time_ns - first_ns) / 1000,
                "t_trace_us": (sighting.time_ns - trace_start) / 1000,
                "delta_us": float("nan")
                if previous_ns is None
                else (sighting.time_ns - previous_ns) / 1000,
                "src": hdr.src,
                "dst": hdr.dst,
                "sport": hdr.sport,
                "dport": hdr.dport,
                "proto": hdr.proto_name,
                "icmp_id": hdr.icmp_id,
                "icmp_seq": hdr.icmp_seq,
                "ip_id": hdr.ip_id,
                "ttl": hdr.ttl,
                "nat": nat.get(hop, ""),
            }
            for name, value in row.items():
                columns[name].append(value)
            previous_ns = sighting.time_ns
    return _frame(columns, SIGHTING_COLUMNS)


def iter_hops(packet: Packet) -> Iterator[tuple[int, str, str, int]]:
    """(hop index, from point, to point, delta in ns) for each neighbouring pair of sightings."""
    sightings = packet.sightings
    for hop in range(1, len(sightings)):
        before, after = sightings[hop - 1], sightings[hop]
        yield hop, before.point, after.point, after.time_ns - before.time_ns


def hops_dataframe(trace: Trace) -> pandas.DataFrame:
    """One row per hop per packet (see HOP_COLUMNS): the latency between neighbouring points.

    `hop` is the index of the sighting the hop arrives at, so it joins to_dataframe()'s
    rows on (packet_id, hop); group by (direction, from_point, to_point) for per-hop
    latency over many probes.
    """
    columns: dict[str, list[object]] = {name: [] for name in HOP_COLUMNS}
    for packet in trace.packets:
        nat = nat_by_hop(packet)
        for hop, from_point, to_point, delta_ns in iter_hops(packet):
            row: dict[str, object] = {
                "packet_id": packet.packet_id,
                "probe": packet.probe,
                "direction": packet.direction,
                "hop": hop,
                "from_point": from_point,
                "to_point": to_point,
                "delta_us": delta_ns / 1000,
                "nat": nat.get(hop, ""),
            }
            for name, value in row.items():
                columns[name].append(value)
    return _frame(columns, HOP_COLUMNS)

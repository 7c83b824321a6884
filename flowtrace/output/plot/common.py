"""What both figures share: the figure itself, which packets to draw, their kinds, titles, colours.

Every figure is built as a matplotlib Figure directly, never through pyplot: nothing global
is left open, a notebook shows the returned object, and a script saves it.  Each figure
carries an Agg canvas so it can be drawn and saved without a display.
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from flowtrace.errors import ExitStatus, FlowtraceError, NotFoundError
from flowtrace.model import Address, Packet, Trace

NOTHING_TO_PLOT = "nothing to plot: the trace has no packets"
DIRECTIONS = ("request", "reply")
COLORS = {"request": "#1f6fb4", "reply": "#d9600b"}
LOST_COLOR = "#c62828"
NOTEBOOK_DPI = 100
_TCP_FLAG_NAMES = ((0x02, "SYN"), (0x10, "ACK"), (0x04, "RST"), (0x01, "FIN"))
_ICMP_KINDS = {
    1: {8: "echo request", 0: "echo reply", 3: "unreachable", 11: "time exceeded"},
    58: {128: "echo request", 129: "echo reply", 1: "unreachable", 3: "time exceeded"},
}


class TraceFigure(Figure):
    """A Figure that shows itself in Jupyter even when pyplot was never imported.

    IPython displays a matplotlib Figure only after pyplot has set up its inline
    backend; a figure built without pyplot would print as "<Figure ...>".
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=NOTEBOOK_DPI)
        return buffer.getvalue()


def new_figure(width: float, height: float) -> TraceFigure:
    figure = TraceFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def require_packets(trace: Trace) -> None:
    if not any(packet.sightings for packet in trace.packets):
        raise FlowtraceError(NOTHING_TO_PLOT)


def path_order(trace: Trace) -> list[str]:
    """Point ids top to bottom: the trace's path order, then points only the packets name."""
    order = [point.id for point in trace.points]
    known = set(order)
    for packet in trace.packets:
        named = [s.point for s in packet.sightings] + [p for ev in packet.nat for p in ev.between]
        for point in named:
            if point not in known:
                known.add(point)
                order.append(point)
    return order


def netns_label(trace: Trace, point_id: str) -> str:
    try:
        return trace.point(point_id).netns.label
    except KeyError:
        return point_id.rsplit("/", 1)[0]


def probe_key(packet: Packet) -> tuple[int, int]:
    """Packets of one probe share a time origin; a captured packet (no probe) is its own."""
    return (0, packet.probe) if packet.probe is not None else (1, packet.packet_id)


def packet_kind(packet: Packet) -> str:
    """What a packet is, in a word or two: "SYN", "SYN+ACK", "RST", "echo request", "udp"."""
    h = packet.first.headers
    if h.proto == 6 and h.tcp_flags is not None:
        names = [name for bit, name in _TCP_FLAG_NAMES if h.tcp_flags & bit]
        return "+".join(names) or "no flags"
    if h.proto in _ICMP_KINDS and h.icmp_type is not None:
        return _ICMP_KINDS[h.proto].get(h.icmp_type, f"{h.proto_name} type {h.icmp_type}")
    return h.proto_name


def kinds_by_direction(packets: Iterable[Packet]) -> dict[str, list[str]]:
    """Each direction's packet kinds in order of first appearance.

    A TCP probe sends a SYN and then (its kernel having no socket) a RST, both requests:
    drawn or summarised together they would make one median of two different packets.
    """
    kinds: dict[str, list[str]] = {}
    for packet in packets:
        seen = kinds.setdefault(packet.direction, [])
        kind = packet_kind(packet)
        if kind not in seen:
            seen.append(kind)
    return kinds


def trace_title(trace: Trace, shown: int | None = None, legend_note: str = "") -> str:
    """A headline like "172.17.0.2 (c1) -> 172.17.0.3 (c2), icmp: 100 probes, 200 packets",
    then a line with the verdicts ("98 replied, 2 lost after host/docker0") and `legend_note`.
    """
    requests = [p for p in trace.packets if p.direction == "request" and p.sightings]
    walked = max(
        requests or [p for p in trace.packets if p.sightings], key=lambda p: len(p.sightings)
    )
    first, last = walked.first, walked.last
    src = f"{first.src} ({netns_label(trace, first.point)})"
    dst = first.dst if first.dport is None else str(Address(first.dst, first.dport))
    dst += f" ({netns_label(trace, last.point)})"
    probes = {p.probe for p in trace.packets if p.probe is not None}
    counts = [f"{len(probes)} probe{'s' * (len(probes) != 1)}"] if probes else []
    total = len(trace.packets)
    counts.append(f"{total} packet{'s' * (total != 1)}")
    if shown is not None and shown < total:
        counts.append(f"showing {shown}")
    title = f"{src} -> {dst}, {first.headers.proto_name}: {', '.join(counts)}"
    # Verdict's own wording: "lost after host/docker0", "lost before the first point".
    outcomes = Counter(str(replace(v, detail="")) for v in trace.verdicts)
    verdicts = ", ".join(f"{n} {outcome}" for outcome, n in outcomes.items())
    second = "; ".join(part for part in (verdicts, legend_note) if part)
    return f"{title}\n{second}" if second else title


def select_packets(
    trace: Trace, packets: Iterable[int | Packet] | None, max_packets: int
) -> list[Packet]:
    """The packets to draw: the chosen ones, thinned to whole probes spread evenly."""
    if packets is None:
        chosen = [p for p in trace.packets if p.sightings]
    else:
        by_id = {p.packet_id: p for p in trace.packets}
        chosen = []
        for item in packets:
            packet_id = item.packet_id if isinstance(item, Packet) else int(item)
            if packet_id not in by_id:
                raise NotFoundError(f"packet {packet_id} is not in the trace")
            chosen.append(by_id[packet_id])
        chosen = [p for p in chosen if p.sightings]
        if not chosen:
            raise FlowtraceError("nothing to plot: none of the chosen packets was seen")
    if max_packets < 1:
        raise FlowtraceError("max_packets must be at least 1", ExitStatus.USAGE)
    if len(chosen) <= max_packets:
        return chosen
    groups: dict[tuple[int, int], list[Packet]] = {}
    for packet in chosen:
        groups.setdefault(probe_key(packet), []).append(packet)
    keep = max(1, len(groups) * max_packets // len(chosen))
    keys = list(groups)
    picked = {keys[round(i)] for i in np.linspace(0, len(keys) - 1, keep)}
    return [p for p in chosen if probe_key(p) in picked]

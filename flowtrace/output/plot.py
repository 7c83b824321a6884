"""Figures of a trace for notebooks and `flowtrace plot`: the hop timeline and per-hop latency.

Every function builds a matplotlib Figure directly, never through pyplot: nothing global
is left open, a notebook shows the returned object, and a script saves it.  Each figure
carries an Agg canvas so it can be drawn and saved without a display.
"""

from __future__ import annotations

import io
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator

from flowtrace.errors import ExitStatus, FlowtraceError, NotFoundError
from flowtrace.model import Address, NatEvent, Packet, Trace
from flowtrace.output.frames import iter_hops, nat_hop_index, nat_label

PlotKind = Literal["timeline", "latency", "both"]

NOTHING_TO_PLOT = "nothing to plot: the trace has no packets"
DIRECTIONS = ("request", "reply")
COLORS = {"request": "#1f6fb4", "reply": "#d9600b"}
MARKERS = {"request": "v", "reply": "^"}  # requests walk down the path, replies back up
NAT_COLOR = "#7b1fa2"
LOST_COLOR = "#c62828"
BAND_COLOR = "#f1f3f5"
FORMATS = {".png": "png", ".svg": "svg"}
PNG_DPI = 150
NOTEBOOK_DPI = 100
#: Above this many packets a direction is drawn as faint lines plus its bold median path.
OVERLAY_FROM = 4
#: Line styles of a direction's packet kinds, in order of appearance (SYN, then RST...).
KIND_STYLES = ("-", "--", ":", "-.")
_TCP_FLAG_NAMES = ((0x02, "SYN"), (0x10, "ACK"), (0x04, "RST"), (0x01, "FIN"))
_ICMP_KINDS = {
    1: {8: "echo request", 0: "echo reply", 3: "unreachable", 11: "time exceeded"},
    58: {128: "echo request", 129: "echo reply", 1: "unreachable", 3: "time exceeded"},
}

#: A hop is called slow when its median is this many times the typical hop's median and
#: this many µs above it: a veth hop at 10 µs beside bridge hops at 3 µs is not news.
SLOW_FACTOR = 2.0
SLOW_MARGIN_US = 20.0
BOX_HEIGHT = 0.6


class TraceFigure(Figure):
    """A Figure that shows itself in Jupyter even when pyplot was never imported.

    IPython displays a matplotlib Figure only after pyplot has set up its inline
    backend; a figure built without pyplot would print as "<Figure ...>".
    """

    def _repr_png_(self) -> bytes:
        buffer = io.BytesIO()
        self.savefig(buffer, format="png", dpi=NOTEBOOK_DPI)
        return buffer.getvalue()


def _figure(width: float, height: float) -> TraceFigure:
    figure = TraceFigure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _require_packets(trace: Trace) -> None:
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


def _netns_label(trace: Trace, point_id: str) -> str:
    try:
        return trace.point(point_id).netns.label
    except KeyError:
        return point_id.rsplit("/", 1)[0]


def _probe_key(packet: Packet) -> tuple[int, int]:
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


def _kinds_by_direction(packets: Iterable[Packet]) -> dict[str, list[str]]:
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


def _title(trace: Trace, shown: int | None = None, legend_note: str = "") -> str:
    """A headline like "172.17.0.2 (c1) -> 172.17.0.3 (c2), icmp: 100 probes, 200 packets",
    then a line with the verdicts ("98 replied, 2 lost after host/docker0") and `legend_note`.
    """
    requests = [p for p in trace.packets if p.direction == "request" and p.sightings]
    walked = max(
        requests or [p for p in trace.packets if p.sightings], key=lambda p: len(p.sightings)
    )
    first, last = walked.first, walked.last
    src = f"{first.src} ({_netns_label(trace, first.point)})"
    dst = first.dst if first.dport is None else str(Address(first.dst, first.dport))
    dst += f" ({_netns_label(trace, last.point)})"
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


def _select(trace: Trace, packets: Iterable[int | Packet] | None, max_packets: int) -> list[Packet]:
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
        groups.setdefault(_probe_key(packet), []).append(packet)
    keep = max(1, len(groups) * max_packets // len(chosen))
    keys = list(groups)
    picked = {keys[round(i)] for i in np.linspace(0, len(keys) - 1, keep)}
    return [p for p in chosen if _probe_key(p) in picked]


@dataclass(frozen=True)
class _NatMark:
    """One annotation: a rewrite shared by several packets, drawn once at its hop."""

    text: str
    x: float
    y: float


def _nat_marks(
    packets: Sequence[Packet], rows: dict[str, int], offset_us: Callable[[Packet, int], float]
) -> list[_NatMark]:
    """Group the packets' NAT events by hop and rewrite; place each group at its median time."""
    groups: dict[tuple[str, str, str], list[tuple[NatEvent, float, str]]] = {}
    for packet in packets:
        for event in packet.nat:
            hop = nat_hop_index(packet, event)
            if hop is None:
                continue
            ip_only = replace(event, before=Address(event.before.ip), after=Address(event.after.ip))
            key = (packet.direction, packet.sightings[hop].point, nat_label(ip_only))
            groups.setdefault(key, []).append((event, offset_us(packet, hop), packet_kind(packet)))
    marks = []
    for (_direction, point, ip_text), members in groups.items():
        labels = {nat_label(event) for event, _, _ in members}
        text = labels.pop() if len(labels) == 1 else f"{ip_text}, ports vary"
        details = []
        rule = members[0][0].rule
        if rule:
            # The target is what a reader recognises: "-j MASQUERADE", "-j DNAT --to-...".
            details.append(
                "rule: " + ("-j " + rule.split(" -j ", 1)[1] if " -j " in rule else rule)
            )
        kinds = Counter(kind for _, _, kind in members)
        if len(kinds) > 1:
            details.append(" + ".join(f"{n} {kind}" for kind, n in kinds.items()))
        elif len(members) > 1:
            details.append(f"{len(members)} packets")
        if details:
            text += "\n" + ", ".join(details)
        # Point at the first kind's packets (the SYN, not the RST that follows it).
        first_kind = members[0][2]
        x = statistics.median(offset for _, offset, kind in members if kind == first_kind)
        marks.append(_NatMark(text=text, x=x, y=float(rows[point])))
    return marks


def _spread(wanted: Sequence[float], gap: float, low: float, high: float) -> list[float]:
    """Move label positions apart by at least `gap`, keeping them within [low, high]."""
    order = sorted(range(len(wanted)), key=lambda i: wanted[i])
    placed = [0.0] * len(wanted)
    previous = low - gap
    for i in order:
        previous = max(wanted[i], previous + gap, low)
        placed[i] = previous
    overflow = previous - high
    if overflow > 0:
        for i in order:
            placed[i] = max(low, placed[i] - overflow)
    return placed


def _namespace_bands(ax: Axes, trace: Trace, order: Sequence[str]) -> None:
    """Shade every other run of rows in one namespace: "inside c1" and "host" read at a glance."""
    runs: list[tuple[str, int, int]] = []
    for row, point in enumerate(order):
        label = _netns_label(trace, point)
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], row)
        else:
            runs.append((label, row, row))
    for index, (_label, first, last) in enumerate(runs):
        if index % 2 == 0:
            ax.axhspan(first - 0.5, last + 0.5, color=BAND_COLOR, zorder=0, lw=0)


def hop_timeline(
    trace: Trace, packets: Iterable[int | Packet] | None = None, max_packets: int = 400
) -> Figure:
    """Each packet as a line through the points it was seen at (top = source), time on X.

    Time counts from the probe's first sighting, so many probes overlay: beyond a few per
    direction they are drawn faint with their median path in bold.  NAT rewrites are
    labelled in a column to the right with an arrow to the hop where they happen.
    `packets` picks packet ids (or Packets) to draw; more than `max_packets` are thinned
    to whole probes spread evenly over the trace.
    """
    _require_packets(trace)
    shown = _select(trace, packets, max_packets)
    order = path_order(trace)
    rows = {point: row for row, point in enumerate(order)}
    origin: dict[tuple[int, int], int] = {}
    for packet in shown:
        key = _probe_key(packet)
        origin[key] = min(origin.get(key, packet.first.time_ns), packet.first.time_ns)

    def offset_us(packet: Packet, hop: int) -> float:
        return (packet.sightings[hop].time_ns - origin[_probe_key(packet)]) / 1000

    height = max(3.8, 0.62 * len(order) + 2.2)
    figure = _figure(11.0, height)
    ax = figure.add_subplot()
    _namespace_bands(ax, trace, order)
    legend: list[Line2D] = []
    overlaid = False
    kinds = _kinds_by_direction(shown)
    for direction in DIRECTIONS:
        for rank, kind in enumerate(kinds.get(direction, [])):
            walks = [p for p in shown if p.direction == direction and packet_kind(p) == kind]
            style = KIND_STYLES[min(rank, len(KIND_STYLES) - 1)]
            # Hop times are written for the first kind only: the probe and its answer.
            _draw_walks(ax, walks, rows, offset_us, direction, style, label_hops=rank == 0)
            overlaid |= len(walks) >= OVERLAY_FROM
            label = direction if len(kinds[direction]) == 1 else f"{direction}: {kind}"
            if len(walks) > 1:
                label += f" ({len(walks)})"
            legend.append(
                Line2D(
                    [],
                    [],
                    color=COLORS[direction],
                    marker=MARKERS[direction],
                    lw=2.2,
                    ls=style,
                    markersize=7,
                    label=label,
                )
            )
    lost = _draw_lost(ax, trace, shown, rows, offset_us)
    if lost:
        legend.append(
            Line2D([], [], color=LOST_COLOR, marker="X", lw=0, markersize=8, label=f"lost ({lost})")
        )

    ax.set_yticks(range(len(order)), order)
    ax.set_ylim(len(order) - 0.5, -0.5)  # top = source
    ends: dict[str, list[float]] = {}
    for packet in shown:
        ends.setdefault(packet.direction, []).append(offset_us(packet, len(packet.sightings) - 1))
    right = _time_right(ends)
    beyond = [x for times in ends.values() for x in times if x > right]
    # Room on the left for the requests' hop labels; the time axis itself starts at 0.
    ax.set_xlim(-0.16 * right, right)
    ax.spines["bottom"].set_bounds(0, right)
    ax.set_xticks([t for t in ax.get_xticks() if 0 <= t <= right])
    ax.grid(axis="x", color="#d0d4d8", lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    xlabel = (
        "µs since the first sighting" if len(origin) == 1 else "µs since the probe's first sighting"
    )
    if beyond:
        xlabel += (
            f" ({len(beyond)} packets run past the right edge, the last to {max(beyond):.0f} µs)"
        )
    ax.set_xlabel(xlabel)
    note = "faint: each probe, bold: median path, labels: median hop time" if overlaid else ""
    ax.set_title(_title(trace, len(shown), note), loc="left", fontsize=11)
    _annotate_nat(ax, _nat_marks(shown, rows, offset_us), len(order), height)
    # Long handles, so a dashed kind (a RST after its SYN) shows its dashes beside the marker.
    figure.legend(
        handles=legend,
        loc="outside lower center",
        ncols=len(legend),
        frameon=False,
        handlelength=3.6 if any(line.get_linestyle() != "-" for line in legend) else 2.0,
    )
    return figure


def _time_right(ends: dict[str, list[float]]) -> float:
    """The right end of the time axis, given when each packet was last seen, per direction.

    A few outliers (a softirq deferred by hundreds of µs) would squash the typical path
    into a sliver, so the view stops at the far-out fence of each direction's arrival
    times (third quartile + 3 IQR); the caller counts the packets beyond it.
    """
    latest = max(max(times) for times in ends.values())
    fence = 0.0
    for times in ends.values():
        q1, median, q3 = (float(q) for q in np.percentile(times, [25, 50, 75]))
        fence = max(fence, q3 + 3 * max(q3 - q1, 0.1 * median))
    return max(min(latest, fence), 1.0) * 1.05


def _draw_walks(
    ax: Axes,
    walks: Sequence[Packet],
    rows: dict[str, int],
    offset_us: Callable[[Packet, int], float],
    direction: str,
    style: str = "-",
    label_hops: bool = True,
) -> None:
    """One kind of packet: every packet's line, and for many packets a bold median path on top."""
    color, marker = COLORS[direction], MARKERS[direction]
    overlay = len(walks) >= OVERLAY_FROM
    lines = [
        [(offset_us(p, hop), rows[s.point]) for hop, s in enumerate(p.sightings)] for p in walks
    ]
    alpha = min(0.5, max(0.07, 3.0 / len(walks))) if overlay else 0.95
    ax.add_collection(
        LineCollection(
            lines,
            colors=color,
            linewidths=0.9 if overlay else 2.0,
            linestyles=style,
            alpha=alpha,
            zorder=2,
        )
    )
    xs = [x for line in lines for x, _ in line]
    ys = [y for line in lines for _, y in line]
    ax.scatter(
        xs, ys, marker=marker, s=14 if overlay else 50, color=color, alpha=alpha, lw=0, zorder=3
    )
    if overlay:
        path, times = _median_path(walks, offset_us)
        ys_median = [rows[point] for point in path]
        ax.plot(times, ys_median, color=color, lw=2.4, ls=style, zorder=4)
        ax.scatter(
            times, ys_median, marker=marker, s=60, color=color, edgecolors="white", lw=0.8, zorder=5
        )
        if label_hops:
            _label_deltas(ax, times, ys_median, direction)
    elif len(walks) == 1 and label_hops:
        walk = walks[0]
        times = [offset_us(walk, hop) for hop in range(len(walk.sightings))]
        _label_deltas(ax, times, [rows[s.point] for s in walk.sightings], direction)


def _median_path(
    walks: Sequence[Packet], offset_us: Callable[[Packet, int], float]
) -> tuple[tuple[str, ...], list[float]]:
    """The most common sequence of points and the median arrival time at each of them."""
    sequences = Counter(tuple(s.point for s in p.sightings) for p in walks)
    path = sequences.most_common(1)[0][0]
    members = [p for p in walks if tuple(s.point for s in p.sightings) == path]
    times = np.median(
        [[offset_us(p, hop) for hop in range(len(path))] for p in members], axis=0
    ).tolist()
    return path, times


def _label_deltas(ax: Axes, times: Sequence[float], ys: Sequence[int], direction: str) -> None:
    """Write each hop's time next to the middle of its segment: "+7.9 µs".

    Requests are labelled on their left and replies on their right, so where a reply
    starts right after its request arrives the two labels face away from each other.
    """
    left = direction == "request"
    for (x0, y0), (x1, y1) in pairwise(zip(times, ys, strict=True)):
        ax.annotate(
            f"+{x1 - x0:.1f} µs",
            xy=((x0 + x1) / 2, (y0 + y1) / 2),
            xytext=(-7 if left else 7, 0),
            textcoords="offset points",
            fontsize=7.5,
            color=COLORS[direction],
            va="center",
            ha="right" if left else "left",
            zorder=6,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )


def _draw_lost(
    ax: Axes,
    trace: Trace,
    shown: Sequence[Packet],
    rows: dict[str, int],
    offset_us: Callable[[Packet, int], float],
) -> int:
    """Mark where each lost probe's request was last seen; return how many were marked."""
    lost = {v.probe for v in trace.verdicts if v.outcome == "lost"}
    ends = [
        (offset_us(p, len(p.sightings) - 1), rows[p.last.point])
        for p in shown
        if p.direction == "request" and p.probe in lost
    ]
    if ends:
        xs, ys = zip(*ends, strict=True)
        ax.scatter(xs, ys, marker="X", s=70, color=LOST_COLOR, edgecolors="white", lw=0.6, zorder=6)
    return len(ends)


def _annotate_nat(ax: Axes, marks: Sequence[_NatMark], n_rows: int, height_in: float) -> None:
    """Labels in a column right of the plot, spread so they never overlap, arrows to the hop."""
    if not marks:
        return
    row_height_in = max(0.2, (height_in - 2.2) / max(n_rows, 1))
    gap = 0.42 / row_height_in
    label_ys = _spread([m.y for m in marks], gap, -0.5 + gap / 2, n_rows - 0.5 - gap / 2)
    for mark, label_y in zip(marks, label_ys, strict=True):
        ax.scatter(
            [mark.x], [mark.y], s=170, facecolors="none", edgecolors=NAT_COLOR, lw=1.6, zorder=7
        )
        annotation = ax.annotate(
            mark.text,
            xy=(mark.x, mark.y),
            xytext=(1.02, label_y),
            textcoords=("axes fraction", "data"),
            fontsize=8.5,
            color=NAT_COLOR,
            ha="left",
            va="center",
            arrowprops={
                "arrowstyle": "-|>",
                "color": NAT_COLOR,
                "lw": 0.9,
                "shrinkA": 4,
                "shrinkB": 7,
                "alpha": 0.8,
            },
            zorder=7,
        )
        annotation.set_gid("nat")


HopKey = tuple[str, str, str, str]  # (direction, packet kind or "", from point, to point)


def _hop_kind(packet: Packet, kinds: dict[str, list[str]]) -> str:
    """The packet's kind when its direction has several (SYN and RST), else ""."""
    return packet_kind(packet) if len(kinds.get(packet.direction, ())) > 1 else ""


def _hop_samples(trace: Trace, kinds: dict[str, list[str]]) -> dict[HopKey, list[float]]:
    """Deltas in µs per (direction, kind, from, to): requests first, kinds in order of
    appearance, hops in the order walked."""
    samples: dict[HopKey, list[float]] = {}
    position: dict[HopKey, list[int]] = {}
    for packet in trace.packets:
        kind = _hop_kind(packet, kinds)
        for hop, before, after, delta_ns in iter_hops(packet):
            key = (packet.direction, kind, before, after)
            samples.setdefault(key, []).append(delta_ns / 1000)
            position.setdefault(key, []).append(hop)
    rank = {direction: i for i, direction in enumerate(DIRECTIONS)}

    def order(key: HopKey) -> tuple[int, int, float]:
        direction, kind = key[0], key[1]
        kind_rank = kinds[direction].index(kind) if kind else 0
        return (rank.get(direction, len(rank)), kind_rank, statistics.median(position[key]))

    return {key: samples[key] for key in sorted(samples, key=order)}


def _nat_kinds(trace: Trace, kinds: dict[str, list[str]]) -> dict[HopKey, str]:
    """The NAT kinds seen on each hop (see _hop_samples): "SNAT", "DNAT" or "DNAT+SNAT"."""
    found: dict[HopKey, set[str]] = {}
    for packet in trace.packets:
        for event in packet.nat:
            hop = nat_hop_index(packet, event)
            if hop is None or hop == 0:
                continue
            before, after = packet.sightings[hop - 1].point, packet.sightings[hop].point
            key = (packet.direction, _hop_kind(packet, kinds), before, after)
            found.setdefault(key, set()).add(event.kind)
    return {key: "+".join(sorted(nat)) for key, nat in found.items()}


def _draw_box(
    ax: Axes, values: Sequence[float], y: float, color: str, slow: bool, gid: str
) -> None:
    """A horizontal box (quartiles, median, whiskers to the last point within 1.5 IQR).

    Drawn from patches and lines rather than Axes.boxplot, which reads every rcParam and
    so imports pyplot as a side effect.
    """
    q1, median, q3 = (float(q) for q in np.percentile(values, [25, 50, 75]))
    reach = 1.5 * (q3 - q1)
    low = min(v for v in values if v >= q1 - reach)
    high = max(v for v in values if v <= q3 + reach)
    half = BOX_HEIGHT / 2
    edge = LOST_COLOR if slow else color
    box = Rectangle(
        (q1, y - half),
        q3 - q1,
        BOX_HEIGHT,
        facecolor=to_rgba(color, 0.18),
        edgecolor=edge,
        lw=2.0 if slow else 1.2,
        zorder=2,
    )
    box.set_gid(gid)
    ax.add_patch(box)
    for xs, ys in (
        ([low, q1], [y, y]),
        ([q3, high], [y, y]),
        ([low, low], [y - half / 2, y + half / 2]),
        ([high, high], [y - half / 2, y + half / 2]),
    ):
        ax.plot(xs, ys, color="#666666", lw=1.0, zorder=1)
    ax.plot([median, median], [y - half, y + half], color="#222222", lw=2.0, zorder=4)


def _slow_hops(medians: Sequence[float]) -> set[int]:
    """Hops whose median is well above the median hop's (SLOW_FACTOR and SLOW_MARGIN_US)."""
    typical = statistics.median(medians)
    if len(medians) < 3 or typical <= 0:
        return set()
    return {
        i
        for i, m in enumerate(medians)
        if m >= SLOW_FACTOR * typical and m - typical >= SLOW_MARGIN_US
    }


def hop_latency(trace: Trace, log_scale: bool | None = None) -> Figure:
    """Per-hop latency over all probes: one box with its points per hop, requests and replies apart.

    The x axis turns logarithmic when the deltas span more than a factor of 30 (outliers
    would squash the boxes otherwise); `log_scale` forces the choice.  The median of each
    hop is written at the right; a hop whose median is well above the typical hop's
    (SLOW_FACTOR times and SLOW_MARGIN_US more) is outlined in red, so it stands out.
    """
    _require_packets(trace)
    kinds = _kinds_by_direction(trace.packets)
    samples = _hop_samples(trace, kinds)
    if not samples:
        raise FlowtraceError("nothing to plot: no packet was seen at two points, so no hop latency")
    nat = _nat_kinds(trace, kinds)
    keys = list(samples)
    ys: list[float] = []
    for index, key in enumerate(keys):
        gap = 0.7 if index and key[:2] != keys[index - 1][:2] else 0.0
        ys.append((ys[-1] + 1.0 + gap) if ys else 0.0)
    data = [samples[key] for key in keys]
    medians = [statistics.median(values) for values in data]
    slow = _slow_hops(medians)
    flat = [v for values in data for v in values]
    if log_scale is None:
        log_scale = min(flat) > 0 and max(flat) / min(flat) > 30
    elif log_scale and min(flat) <= 0:
        raise FlowtraceError("cannot use a log scale: some hops took no time or went backwards")

    figure = _figure(11.0, max(3.4, 0.5 * (ys[-1] + 1) + 2.0))
    ax = figure.add_subplot()
    jitter = np.random.default_rng(0)
    for index, (key, values, y) in enumerate(zip(keys, data, ys, strict=True)):
        color = COLORS.get(key[0], "#555555")
        series = f"{key[0]} {key[1]}" if key[1] else key[0]
        _draw_box(ax, values, y, color, index in slow, f"hop-box:{series}:{key[2]} -> {key[3]}")
        ax.scatter(
            values,
            y + jitter.uniform(-0.2, 0.2, len(values)),
            s=10,
            color=color,
            alpha=min(0.6, max(0.15, 25 / len(values))),
            lw=0,
            zorder=3,
        )

    ax.set_yticks(ys, [f"{kind}: {a} -> {b}" if kind else f"{a} -> {b}" for _, kind, a, b in keys])
    for tick, key in zip(ax.get_yticklabels(), keys, strict=True):
        tick.set_color(COLORS.get(key[0], "#555555"))
    ax.set_ylim(ys[-1] + 0.6, -0.6)
    if log_scale:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda _v, _pos: ""))
    else:
        ax.set_xlim(left=0)
    ax.grid(axis="x", which="major", color="#d0d4d8", lw=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_xlabel("time from the previous point (µs" + (", log scale)" if log_scale else ")"))

    counts = {len(values) for values in data}
    each = f", {counts.pop()} per hop" if len(counts) == 1 else ""
    headline = _title(trace).split("\n")[0]
    ax.set_title(f"Per-hop latency{each}\n{headline}", loc="left", fontsize=11)
    ax.annotate(
        "median",
        xy=(1.01, 1.0),
        xycoords="axes fraction",
        fontsize=8.5,
        color="#444444",
        va="bottom",
        ha="left",
    )
    for index, (key, y) in enumerate(zip(keys, ys, strict=True)):
        text = f"{medians[index]:.1f} µs"
        if key in nat:
            text += f"  {nat[key]}"
        if not each:
            text += f"  n={len(data[index])}"
        ax.annotate(
            text,
            xy=(1.01, y),
            xycoords=("axes fraction", "data"),
            fontsize=9,
            va="center",
            ha="left",
            color=LOST_COLOR if index in slow else "#222222",
            fontweight="bold" if index in slow else "normal",
        ).set_gid("median")
    legend = [
        Patch(facecolor=to_rgba(COLORS[d], 0.18), edgecolor=COLORS[d], label=d)
        for d in DIRECTIONS
        if any(key[0] == d for key in keys)
    ]
    if slow:
        legend.append(
            Patch(
                facecolor="white",
                edgecolor=LOST_COLOR,
                lw=2.0,
                label=f"slow: median ≥ {SLOW_FACTOR:g}× the typical hop, +{SLOW_MARGIN_US:g} µs",
            )
        )
    figure.legend(handles=legend, loc="outside lower center", ncols=len(legend), frameon=False)
    return figure


def image_format(path: Path | str) -> str:
    """The format render() writes for this file name ("png" or "svg"), or a usage error.

    Callers check the name before loading a set, so a typo fails at once.
    """
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise FlowtraceError(
            f"cannot write {path.name!r}: name a .png or .svg file", ExitStatus.USAGE
        )
    return fmt


def render(trace: Trace, path: Path | str, kind: PlotKind = "both") -> list[Path]:
    """Write the figures as PNG or SVG (by the file's extension); return the paths written.

    "both" writes two files named after `path`: out.png -> out-timeline.png, out-latency.png.
    Both figures are built before anything is written, so an error leaves no half result.
    """
    path = Path(path)
    fmt = image_format(path)
    builders: dict[str, Callable[[Trace], Figure]] = {
        "timeline": hop_timeline,
        "latency": hop_latency,
    }
    if kind == "both":
        targets = [(name, path.with_name(f"{path.stem}-{name}{path.suffix}")) for name in builders]
    elif kind in builders:
        targets = [(kind, path)]
    else:
        raise FlowtraceError(
            f"unknown plot kind {kind!r}: use timeline, latency or both", ExitStatus.USAGE
        )
    figures = [(builders[name](trace), target) for name, target in targets]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for figure, target in figures:
            figure.savefig(target, format=fmt, dpi=PNG_DPI if fmt == "png" else "figure")
    except OSError as exc:
        raise FlowtraceError(
            f"cannot write {exc.filename or path}: {exc.strerror or exc}"
        ) from None
    return [target for _, target in targets]

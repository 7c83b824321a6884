"""The hop timeline: each packet as a line through the points it was seen at, time on X.

Many probes overlay from their own first sighting; NAT rewrites are labelled in a column
to the right with an arrow to the hop where they happen.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from flowtrace.model import Address, NatEvent, Packet, Trace
from flowtrace.output.frames import nat_hop_index, nat_label
from flowtrace.output.plot.common import (
    COLORS,
    DIRECTIONS,
    LOST_COLOR,
    kinds_by_direction,
    netns_label,
    new_figure,
    packet_kind,
    path_order,
    probe_key,
    require_packets,
    select_packets,
    trace_title,
)

MARKERS = {"request": "v", "reply": "^"}  # requests walk down the path, replies back up
NAT_COLOR = "#7b1fa2"
BAND_COLOR = "#f1f3f5"
#: Above this many packets a direction is drawn as faint lines plus its bold median path.
OVERLAY_FROM = 4
#: Line styles of a direction's packet kinds, in order of appearance (SYN, then RST...).
KIND_STYLES = ("-", "--", ":", "-.")


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
    require_packets(trace)
    shown = select_packets(trace, packets, max_packets)
    order = path_order(trace)
    rows = {point: row for row, point in enumerate(order)}
    origin: dict[tuple[int, int], int] = {}
    for packet in shown:
        key = probe_key(packet)
        origin[key] = min(origin.get(key, packet.first.time_ns), packet.first.time_ns)

    def offset_us(packet: Packet, hop: int) -> float:
        return (packet.sightings[hop].time_ns - origin[probe_key(packet)]) / 1000

    height = max(3.8, 0.62 * len(order) + 2.2)
    figure = new_figure(11.0, height)
    ax = figure.add_subplot()
    _namespace_bands(ax, trace, order)
    legend: list[Line2D] = []
    overlaid = False
    kinds = kinds_by_direction(shown)
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
    ax.set_title(trace_title(trace, len(shown), note), loc="left", fontsize=11)
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
        label = netns_label(trace, point)
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], row)
        else:
            runs.append((label, row, row))
    for index, (_label, first, last) in enumerate(runs):
        if index % 2 == 0:
            ax.axhspan(first - 0.5, last + 0.5, color=BAND_COLOR, zorder=0, lw=0)

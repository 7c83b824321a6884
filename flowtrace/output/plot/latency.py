"""Per-hop latency over all probes: one box with its points per hop, requests and replies apart."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator

from flowtrace.errors import FlowtraceError
from flowtrace.model import Packet, Trace
from flowtrace.output.frames import iter_hops, nat_hop_index
from flowtrace.output.plot.common import (
    COLORS,
    DIRECTIONS,
    LOST_COLOR,
    kinds_by_direction,
    new_figure,
    packet_kind,
    require_packets,
    trace_title,
)

#: A hop is called slow when its median is this many times the typical hop's median and
#: this many µs above it: a veth hop at 10 µs beside bridge hops at 3 µs is not news.
SLOW_FACTOR = 2.0
SLOW_MARGIN_US = 20.0
BOX_HEIGHT = 0.6


def hop_latency(trace: Trace, log_scale: bool | None = None) -> Figure:
    """Per-hop latency over all probes: one box with its points per hop, requests and replies apart.

    The x axis turns logarithmic when the deltas span more than a factor of 30 (outliers
    would squash the boxes otherwise); `log_scale` forces the choice.  The median of each
    hop is written at the right; a hop whose median is well above the typical hop's
    (SLOW_FACTOR times and SLOW_MARGIN_US more) is outlined in red, so it stands out.
    """
    require_packets(trace)
    kinds = kinds_by_direction(trace.packets)
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

    figure = new_figure(11.0, max(3.4, 0.5 * (ys[-1] + 1) + 2.0))
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
    headline = trace_title(trace).split("\n")[0]
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

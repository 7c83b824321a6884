"""The figures: they render, name the right hops, keep labels apart, and leave no pyplot state."""

from __future__ import annotations

import io
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from itertools import combinations, pairwise
from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from sample_traces import (
    DOCKER0,
    OUTSIDE_ETH0,
    UPLINK,
    dnat_walk,
    docker0_ping,
    empty_trace,
    snat_walk,
)

from flowtrace.errors import ExitStatus, FlowtraceError, NotFoundError
from flowtrace.model import Address, NatEvent, Trace
from flowtrace.output.frames import hops_dataframe
from flowtrace.output.plot import (
    NOTHING_TO_PLOT,
    TraceFigure,
    hop_latency,
    hop_timeline,
    render,
)
from flowtrace.output.plot.timeline import _spread

#: tests/unit, where sample_traces.py lives.
UNIT_TESTS = Path(__file__).parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ping() -> Trace:
    return docker0_ping()


@pytest.fixture(scope="module")
def snat() -> Trace:
    return snat_walk()


@pytest.fixture(autouse=True)
def no_pyplot_figures_left() -> Iterator[None]:
    yield
    if "matplotlib.pyplot" in sys.modules:
        assert sys.modules["matplotlib.pyplot"].get_fignums() == []


def png_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def ytick_rows(figure: Figure) -> dict[str, float]:
    ax = figure.axes[0]
    ticks = zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)
    return {label.get_text(): tick for label, tick in ticks}


def nat_annotations(figure: Figure) -> list[Annotation]:
    return [t for t in figure.axes[0].texts if isinstance(t, Annotation) and t.get_gid() == "nat"]


def legend_texts(figure: Figure) -> list[str]:
    return [text.get_text() for legend in figure.legends for text in legend.get_texts()]


def test_timeline_renders_points_top_down_in_path_order(ping: Trace) -> None:
    figure = hop_timeline(ping)
    assert png_bytes(figure).startswith(PNG_MAGIC)
    ax = figure.axes[0]
    rows = ytick_rows(figure)
    assert list(rows) == [p.id for p in ping.points]
    bottom, top = ax.get_ylim()
    assert top < rows["c1/eth0"] < rows["c2/eth0"] < bottom  # the source is on top
    texts = legend_texts(figure)
    assert any(t.startswith("request") for t in texts)
    assert any(t.startswith("reply") for t in texts)
    assert "100 probes, 200 packets" in ax.get_title(loc="left")
    assert "172.17.0.2 (c1) -> 172.17.0.3 (c2)" in ax.get_title(loc="left")
    segments = sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))
    assert segments == 200


def test_figures_show_themselves_in_jupyter_without_pyplot() -> None:
    # IPython calls _repr_png_ on objects it has no formatter for (no pyplot imported).
    figure = hop_timeline(dnat_walk())
    assert isinstance(figure, TraceFigure)
    assert figure._repr_png_().startswith(PNG_MAGIC)


def test_timeline_annotates_nat_at_the_hop_where_it_happens(snat: Trace) -> None:
    figure = hop_timeline(snat)
    rows = ytick_rows(figure)
    by_text = {a.get_text().split("\n")[0]: a for a in nat_annotations(figure)}
    assert set(by_text) == {
        "SNAT 172.17.0.2 -> 203.0.113.1",
        "DNAT 203.0.113.1 -> 172.17.0.2 (reverses SNAT)",
    }
    snat_mark = by_text["SNAT 172.17.0.2 -> 203.0.113.1"]
    assert snat_mark.xy[1] == rows[UPLINK.id]
    assert "MASQUERADE" in snat_mark.get_text() and "20 packets" in snat_mark.get_text()
    assert by_text["DNAT 203.0.113.1 -> 172.17.0.2 (reverses SNAT)"].xy[1] == rows[DOCKER0.id]
    # The arrow points at the median time the rewritten packet reached that point.
    reached = [
        (p.sightings[3].time_ns - p.first.time_ns) / 1000
        for p in snat.packets
        if p.direction == "request"
    ]
    assert snat_mark.xy[0] == pytest.approx(statistics.median(reached))


def test_dnat_annotation_names_the_published_port() -> None:
    figure = hop_timeline(dnat_walk())
    rows = ytick_rows(figure)
    (dnat,) = [a for a in nat_annotations(figure) if a.get_text().startswith("DNAT")]
    assert dnat.get_text().split("\n")[0] == "DNAT 203.0.113.1:8080 -> 172.17.0.4:80"
    assert dnat.xy[1] == rows[DOCKER0.id]


def with_crowded_nat(trace: Trace) -> Trace:
    """Add rewrites so that three labels want rows 3 and 4 and two want the same row."""
    extra_request = NatEvent(
        "DNAT", (UPLINK.id, OUTSIDE_ETH0.id), Address("203.0.113.2"), Address("203.0.113.9")
    )
    extra_reply = NatEvent(
        "SNAT", (OUTSIDE_ETH0.id, UPLINK.id), Address("203.0.113.2"), Address("203.0.113.8")
    )
    packets = tuple(
        replace(p, nat=(*p.nat, extra_request if p.direction == "request" else extra_reply))
        for p in trace.packets
    )
    return replace(trace, packets=packets)


def test_nat_labels_do_not_collide_or_leave_the_figure(snat: Trace) -> None:
    figure = hop_timeline(with_crowded_nat(snat))
    marks = nat_annotations(figure)
    assert len(marks) == 4
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    renderer = canvas.get_renderer()
    # Text.get_window_extent: the label itself, without the arrow an Annotation adds.
    boxes = [Text.get_window_extent(mark, renderer) for mark in marks]
    for a, b in combinations(boxes, 2):
        assert not a.overlaps(b)
    frame = figure.bbox
    for box in boxes:
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1
        assert frame.y0 <= box.y0 and box.y1 <= frame.y1
    # Y tick labels stay inside too (long namespace labels on the left).
    for label in figure.axes[0].get_yticklabels():
        assert label.get_window_extent(renderer).x0 >= frame.x0


def test_spread_keeps_a_gap_and_stays_in_bounds() -> None:
    placed = _spread([3.0, 3.0, 4.0, 0.0], gap=0.6, low=-0.2, high=4.2)
    ordered = sorted(placed)
    assert all(b - a >= 0.6 - 1e-9 for a, b in pairwise(ordered))
    assert min(placed) >= -0.2 and max(placed) <= 4.2 + 1e-9
    assert placed[3] == 0.0  # a label with room stays where it was wanted


def test_one_probe_gets_per_hop_times() -> None:
    trace = dnat_walk()
    figure = hop_timeline(trace)
    hop_texts = [t.get_text() for t in figure.axes[0].texts if t.get_text().endswith(" µs")]
    expected = [f"+{d / 1000:.1f} µs" for packet in trace.packets for d in packet.hop_deltas_ns()]
    assert sorted(hop_texts) == sorted(expected)
    assert figure.axes[0].get_xlabel() == "µs since the first sighting"


def test_thinning_keeps_whole_probes(ping: Trace) -> None:
    figure = hop_timeline(ping, max_packets=50)
    ax = figure.axes[0]
    segments = sum(len(c.get_segments()) for c in ax.collections if isinstance(c, LineCollection))
    assert segments == 50
    assert "showing 50" in ax.get_title(loc="left")


def test_chosen_packets_and_unknown_ids(ping: Trace) -> None:
    figure = hop_timeline(ping, packets=[1, 2])
    assert legend_texts(figure) == ["request", "reply"]
    with pytest.raises(NotFoundError, match="packet 9999 is not in the trace"):
        hop_timeline(ping, packets=[9999])


def test_lost_probes_are_marked_and_outliers_counted() -> None:
    trace = docker0_ping(probes=30, lost_probes={4, 17})
    figure = hop_timeline(trace)
    assert "lost (2)" in legend_texts(figure)
    assert "28 replied, 2 lost after host/docker0; faint" in figure.axes[0].get_title(loc="left")
    # The seeded outliers run past the 95th percentile view and are counted, not hidden.
    assert "packets run past the right edge" in figure.axes[0].get_xlabel()


def hop_boxes(figure: Figure) -> list[str]:
    return [
        gid.removeprefix("hop-box:")
        for gid in (p.get_gid() or "" for p in figure.axes[0].patches)
        if gid.startswith("hop-box:")
    ]


def test_latency_has_one_box_per_hop_with_its_median(ping: Trace) -> None:
    figure = hop_latency(ping)
    assert png_bytes(figure).startswith(PNG_MAGIC)
    hops = hops_dataframe(ping)
    boxes = hop_boxes(figure)
    assert len(boxes) == 8
    assert boxes[:4] == [
        "request:c1/eth0 -> host/veth1a2b3c4",
        "request:host/veth1a2b3c4 -> host/docker0",
        "request:host/docker0 -> host/veth5d6e7f8",
        "request:host/veth5d6e7f8 -> c2/eth0",
    ]
    assert all(box.startswith("reply:") for box in boxes[4:])
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels == [box.split(":", 1)[1] for box in boxes]
    medians = [t.get_text() for t in figure.axes[0].texts if t.get_gid() == "median"]
    expected = hops.groupby(["direction", "from_point", "to_point"]).delta_us.median()
    for box, text in zip(boxes, medians, strict=True):
        direction, hop = box.split(":", 1)
        before, after = hop.split(" -> ")
        assert text == f"{expected[(direction, before, after)]:.1f} µs"
    # Seeded outliers reach hundreds of µs beside 2-20 µs hops: a log axis.
    assert figure.axes[0].get_xscale() == "log"
    # No hop is unusually slow on a plain docker0 path: nothing is flagged.
    assert not any(t.get_fontweight() == "bold" for t in figure.axes[0].texts)


def test_latency_flags_a_slow_hop() -> None:
    trace = docker0_ping(probes=40, request_delay_us={"c2/eth0": 150})
    figure = hop_latency(trace)
    bold = [t.get_text() for t in figure.axes[0].texts if t.get_fontweight() == "bold"]
    assert len(bold) == 1 and bold[0].startswith("16")  # 150 µs netem + the veth hop
    slow_box = next(
        p
        for p in figure.axes[0].patches
        if p.get_gid() == ("hop-box:request:host/veth5d6e7f8 -> c2/eth0")
    )
    assert slow_box.get_linewidth() > 1.5
    assert any("slow" in text for text in legend_texts(figure))


def test_latency_marks_nat_hops_and_uses_linear_scale_for_small_spread() -> None:
    figure = hop_latency(dnat_walk())
    medians = [t.get_text() for t in figure.axes[0].texts if t.get_gid() == "median"]
    assert sum(1 for text in medians if text.endswith("DNAT")) == 1
    assert sum(1 for text in medians if text.endswith("SNAT")) == 1
    assert figure.axes[0].get_xscale() == "linear"
    assert len(hop_boxes(figure)) == 8


@pytest.mark.parametrize("plot", [hop_timeline, hop_latency])
def test_empty_trace_is_a_clear_error(plot: object) -> None:
    with pytest.raises(FlowtraceError, match=f"^{NOTHING_TO_PLOT}$"):
        plot(empty_trace())  # type: ignore[operator]


def test_render_writes_both_kinds_by_extension(tmp_path: Path) -> None:
    trace = snat_walk(probes=5)
    written = render(trace, tmp_path / "snat.png")
    assert written == [tmp_path / "snat-timeline.png", tmp_path / "snat-latency.png"]
    for path in written:
        assert path.read_bytes().startswith(PNG_MAGIC)
    (svg,) = render(trace, tmp_path / "out" / "t.svg", kind="timeline")
    assert svg == tmp_path / "out" / "t.svg"
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text


def test_render_refuses_bad_requests_without_writing(tmp_path: Path) -> None:
    with pytest.raises(FlowtraceError, match=NOTHING_TO_PLOT):
        render(empty_trace(), tmp_path / "empty.png")
    with pytest.raises(FlowtraceError, match=r"name a \.png or \.svg file") as bad_name:
        render(snat_walk(probes=2), tmp_path / "plot.jpg")
    assert bad_name.value.status == ExitStatus.USAGE
    with pytest.raises(FlowtraceError, match="unknown plot kind"):
        render(snat_walk(probes=2), tmp_path / "plot.png", kind="pie")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_plotting_never_imports_pyplot() -> None:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(UNIT_TESTS)!r})\n"
        "import tempfile, pathlib\n"
        "from sample_traces import snat_walk\n"
        "from flowtrace.output.plot import render\n"
        "with tempfile.TemporaryDirectory() as out:\n"
        "    render(snat_walk(3), pathlib.Path(out) / 'p.png')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

"""`flowtrace plot` and the figures of the committed example sets (no root, no Docker).

The command runs as a user runs it (a subprocess), so exit codes and stderr are the real
ones.  The figure tests pin what the real TCP set needs to stay readable: a probe's SYN and
the RST that follows it are different packets and are drawn and summarised apart.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.text import Annotation

import flowtrace
from flowtrace.model import Trace
from flowtrace.output.frames import nat_hop_index
from flowtrace.output.plot import hop_latency, hop_timeline, packet_kind

EXAMPLES = Path(__file__).resolve().parents[3] / "captures" / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def flowtrace_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowtrace", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def dnat() -> Trace:
    return flowtrace.load(EXAMPLES / "dnat-outside-web")


def test_plot_writes_both_figures_as_png(tmp_path: Path) -> None:
    target = tmp_path / "figures" / "ping.png"
    result = flowtrace_cli("plot", str(EXAMPLES / "ping-c1-c2"), "-o", str(target))
    assert result.returncode == 0, result.stderr
    written = [
        tmp_path / "figures" / "ping-timeline.png",
        tmp_path / "figures" / "ping-latency.png",
    ]
    assert result.stdout.split() == [str(path) for path in written]
    for path in written:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 10_000
    assert not target.exists()


def test_plot_one_kind_as_svg(tmp_path: Path) -> None:
    target = tmp_path / "nat.svg"
    result = flowtrace_cli(
        "plot", str(EXAMPLES / "snat-c1-outside"), "-o", str(target), "--kind", "timeline"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(target)]
    c1_ip = flowtrace.load(EXAMPLES / "snat-c1-outside").packets[0].first.src
    text = target.read_text()
    assert "<svg" in text and f"SNAT {c1_ip} -&gt; 203.0.113.1" in text


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["-o", "out.jpg"], 2, "flowtrace: cannot write 'out.jpg': name a .png or .svg file"),
        (["-o", "out"], 2, "flowtrace: cannot write 'out': name a .png or .svg file"),
    ],
)
def test_plot_refuses_a_name_it_cannot_write(
    tmp_path: Path, args: list[str], status: int, message: str
) -> None:
    args = [args[0], str(tmp_path / args[1])]
    result = flowtrace_cli("plot", str(EXAMPLES / "ping-c1-c2"), *args)
    assert result.returncode == status
    assert result.stderr.replace(str(tmp_path) + "/", "").splitlines() == [message]
    assert list(tmp_path.iterdir()) == []


def test_plot_of_a_missing_set_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-set"
    result = flowtrace_cli("plot", str(missing), "-o", str(tmp_path / "out.png"))
    assert result.returncode == 5
    assert result.stderr.splitlines() == [f"flowtrace: {missing}: no such file or folder"]
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_plot_of_a_file_that_is_no_capture_is_one_line(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.pcapng"
    bogus.write_text("not a capture\n")
    result = flowtrace_cli("plot", str(bogus), "-o", str(tmp_path / "out.png"))
    assert result.returncode == 9
    assert result.stderr.splitlines() == [f"flowtrace: {bogus}: not a pcap or pcapng file"]


# --- figures of the real TCP set: SYN and RST apart ---------------------------------------------


def test_timeline_draws_each_kind_of_packet_as_its_own_series(dnat: Trace) -> None:
    figure = hop_timeline(dnat)
    legend = [text.get_text() for legend in figure.legends for text in legend.get_texts()]
    assert legend == ["request: SYN (5)", "request: RST (5)", "reply (5)"]
    styles = [handle.get_linestyle() for handle in figure.legends[0].legend_handles]
    assert styles[0] == "-" and styles[1] != "-"  # the RST is dashed


def test_timeline_marks_the_dnat_once_at_the_syns(dnat: Trace) -> None:
    figure = hop_timeline(dnat)
    marks = [t for t in figure.axes[0].texts if isinstance(t, Annotation) and t.get_gid() == "nat"]
    (dnat_mark,) = [m for m in marks if m.get_text().startswith("DNAT")]
    assert dnat_mark.get_text().endswith("5 SYN + 5 RST")
    syn_arrivals = sorted(
        (p.sightings[hop].time_ns - p.first.time_ns) / 1000
        for p in dnat.packets
        if packet_kind(p) == "SYN"
        for hop in [nat_hop_index(p, p.nat[0])]
        if hop is not None
    )
    assert dnat_mark.xy[0] == pytest.approx(syn_arrivals[len(syn_arrivals) // 2])


def test_latency_keeps_syn_and_rst_hops_apart(dnat: Trace) -> None:
    figure = hop_latency(dnat)
    boxes = [
        gid.removeprefix("hop-box:")
        for gid in (patch.get_gid() or "" for patch in figure.axes[0].patches)
        if gid.startswith("hop-box:")
    ]
    assert [box.split(":")[0] for box in boxes] == (
        ["request SYN"] * 4 + ["request RST"] * 4 + ["reply"] * 4
    )
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels[1] == "SYN: host/ft-uplink -> host/docker0"
    assert labels[5] == "RST: host/ft-uplink -> host/docker0"
    web_veth = dnat.points[-2].id
    assert labels[8] == f"web/eth0 -> {web_veth}"
    medians = [t.get_text() for t in figure.axes[0].texts if t.get_gid() == "median"]
    assert medians[1].endswith("DNAT") and medians[5].endswith("DNAT")
    assert medians[10].endswith("SNAT")
    assert "5 per hop" in figure.axes[0].get_title(loc="left")

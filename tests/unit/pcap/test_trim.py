"""pcap.trim: a capture cut to its earliest N packets."""

from __future__ import annotations

from pathlib import Path

from sample_frames import C1_IP, OUTSIDE_IP, START_NS, echo, snat_ping

from flowtrace.pcap.pcapng import PcapngWriter
from flowtrace.pcap.reader import open_capture
from flowtrace.pcap.trim import trim_to_count


def _capture_file(path: Path, frames: list[tuple[int, int, bytes]], points: int) -> Path:
    """A capture the way the engine writes it: points interleave block by block, then ISBs."""
    with path.open("wb") as handle:
        writer = PcapngWriter(handle)
        for index in range(points):
            writer.add_interface(f"p{index}")
        for point in range(points):
            for p, t, d in frames:
                if p == point:
                    writer.write_packet(p, t, d, outbound=True)
        for point in range(points):
            writer.write_stats(point, START_NS + 10**9, 100, 0)
    return path


def test_trim_to_count_keeps_the_earliest_packets_and_the_statistics(tmp_path: Path) -> None:
    frames = snat_ping(4)[:20]
    path = _capture_file(tmp_path / "capture.pcapng", frames, 3)
    packets, nbytes = trim_to_count(path, 7, 3)
    earliest = sorted(frames, key=lambda f: f[1])[:7]
    assert packets == [sum(1 for f in earliest if f[0] == i) for i in range(3)]
    assert nbytes == [sum(len(f[2]) for f in earliest if f[0] == i) for i in range(3)]
    with open_capture(path) as reader:
        records = list(reader)
        assert len(reader.latest_stats()) == 3 and not reader.truncated
    kept = sorted((r.interface, r.time_ns, r.data) for r in records)
    assert all(r.outbound is True for r in records)  # the direction flag survives
    assert kept == sorted(earliest)
    assert trim_to_count(path, 50, 3) == (packets, nbytes)  # fewer than asked: untouched


def test_trim_to_count_breaks_ties_in_file_order(tmp_path: Path) -> None:
    same_time = [(0, START_NS, echo(C1_IP, OUTSIDE_IP, 8, 1, n, n)) for n in range(5)]
    path = _capture_file(tmp_path / "capture.pcapng", same_time, 1)
    assert trim_to_count(path, 2, 1)[0] == [2]
    with open_capture(path) as reader:
        assert [r.data for r in reader] == [same_time[0][2], same_time[1][2]]

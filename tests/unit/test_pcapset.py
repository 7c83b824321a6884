"""Pcap set folders: names, never overwriting, atomic manifests, finding the captures."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from flowtrace._version import __version__
from flowtrace.errors import CaptureFormatError, FlowtraceError, NotFoundError
from flowtrace.model import Endpoint, Namespace, Point, PointStats
from flowtrace.pcap.pcapset import (
    claim_set_dir,
    find_capture_files,
    finish_manifest,
    new_manifest,
    new_set_dir,
    read_manifest,
    safe_name,
    write_manifest,
)

NOW = datetime(2024, 6, 7, 12, 30, 45, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("c1", "c1"),
        ("netns:lab", "netns_lab"),
        ("fd00::2", "fd00_2"),
        ("../../etc/passwd", "etc_passwd"),
        ("pid:42", "pid_42"),
        ("...", "x"),
        ("a" * 100, "a" * 40),
    ],
)
def test_safe_name(text: str, expected: str) -> None:
    assert safe_name(text) == expected


def test_new_set_dir_name(tmp_path: Path) -> None:
    folder = new_set_dir(tmp_path / "caps", "c1", "netns:lab", now=NOW)
    assert folder == tmp_path / "caps" / "20240607T123045Z-c1-netns_lab"
    assert folder.is_dir() and not any(folder.iterdir())


def test_new_set_dir_uses_utc(tmp_path: Path) -> None:
    local = NOW.astimezone(timezone(timedelta(hours=2)))
    assert new_set_dir(tmp_path, "a", "b", now=local).name == "20240607T123045Z-a-b"


def test_new_set_dir_never_reuses_a_folder(tmp_path: Path) -> None:
    first = new_set_dir(tmp_path, "c1", "c2", now=NOW)
    (first / "trace.pcapng").write_bytes(b"old")
    second = new_set_dir(tmp_path, "c1", "c2", now=NOW)
    third = new_set_dir(tmp_path, "c1", "c2", now=NOW)
    assert [second.name, third.name] == [f"{first.name}-2", f"{first.name}-3"]
    assert (first / "trace.pcapng").read_bytes() == b"old"


def test_new_set_dir_defaults_to_captures_under_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    folder = new_set_dir(None, "host", "1.2.3.4", now=NOW)
    assert folder.resolve() == tmp_path / "captures" / "20240607T123045Z-host-1.2.3.4"


def test_new_set_dir_under_a_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "captures").write_text("a file")
    with pytest.raises(FlowtraceError, match="cannot create a capture folder"):
        new_set_dir(tmp_path / "captures", "a", "b")


def test_claim_set_dir(tmp_path: Path) -> None:
    fresh = claim_set_dir(tmp_path / "out" / "run1")
    assert fresh.is_dir()
    assert claim_set_dir(fresh) == fresh, "an empty folder may be used"
    (fresh / "manifest.json").write_text("{}")
    with pytest.raises(FlowtraceError, match="already holds captures"):
        claim_set_dir(fresh)
    other = tmp_path / "other"
    other.mkdir()
    (other / "old.pcap").write_bytes(b"x")
    with pytest.raises(FlowtraceError, match="already holds captures"):
        claim_set_dir(other)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FlowtraceError, match="is not a folder"):
        claim_set_dir(tmp_path / "file")


def test_manifest_round_trip_and_no_temporary_left(tmp_path: Path) -> None:
    manifest = {"complete": False, "started": NOW, "path": tmp_path, "name": "ünï"}
    write_manifest(tmp_path, manifest)
    assert os.listdir(tmp_path) == ["manifest.json"]
    assert read_manifest(tmp_path) == {
        "complete": False,
        "started": NOW.isoformat(),
        "path": str(tmp_path),
        "name": "ünï",
    }
    write_manifest(tmp_path / "manifest.json", {"complete": True})
    assert read_manifest(tmp_path / "manifest.json") == {"complete": True}
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_failed_manifest_write_keeps_the_old_one(tmp_path: Path) -> None:
    write_manifest(tmp_path, {"complete": False})
    with pytest.raises(TypeError, match="not JSON"):
        write_manifest(tmp_path, {"complete": True, "bad": object()})
    assert read_manifest(tmp_path) == {"complete": False}
    assert os.listdir(tmp_path) == ["manifest.json"]


def test_read_manifest_missing_and_broken(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    assert read_manifest(tmp_path / "nowhere" / "manifest.json") is None
    (tmp_path / "manifest.json").write_text('{"complete": fal')
    with pytest.raises(CaptureFormatError, match=r"manifest.json: not valid JSON \(.* line 1\)"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(CaptureFormatError, match="must be a JSON object"):
        read_manifest(tmp_path)


def test_find_capture_files(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("b.pcap", "a.pcapng", "c.cap", "notes.txt", ".hidden.pcap"):
        (plain / name).write_bytes(b"x")
    (plain / "sub.pcap").mkdir()
    assert find_capture_files(plain) == [plain / "a.pcapng", plain / "b.pcap", plain / "c.cap"]
    assert find_capture_files(plain / "b.pcap") == [plain / "b.pcap"]
    assert find_capture_files(str(plain / "*.pcap*")) == [plain / "a.pcapng", plain / "b.pcap"]

    trace_set = tmp_path / "set"
    trace_set.mkdir()
    for name in ("trace.pcapng", "extra.pcap"):
        (trace_set / name).write_bytes(b"x")
    assert find_capture_files(trace_set) == [trace_set / "trace.pcapng"]
    (trace_set / "capture.pcapng").write_bytes(b"x")
    write_manifest(trace_set, {"pcapng": "capture.pcapng"})
    assert find_capture_files(trace_set) == [trace_set / "capture.pcapng"]


def test_find_capture_files_errors(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no pcapng or pcap files in this folder"):
        find_capture_files(tmp_path)
    with pytest.raises(NotFoundError, match="no such file or folder"):
        find_capture_files(tmp_path / "missing")
    with pytest.raises(NotFoundError, match="no file matches"):
        find_capture_files(tmp_path / "*.pcap")


def make_points() -> tuple[Endpoint, Endpoint, list[Point]]:
    c1 = Namespace("/proc/101/ns/net", "c1", 4026532001, container="c1")
    host = Namespace("/proc/1/ns/net", "host", 4026531992)
    points = [
        Point("c1/eth0", c1, "eth0", 2, "source", addresses=("172.17.0.2",)),
        Point("host/docker0", host, "docker0", 3, "bridge", promisc=True),
    ]
    src = Endpoint("c1", c1, ("172.17.0.2",), ip="172.17.0.2")
    dst = Endpoint("203.0.113.9:80", host, ip="203.0.113.9", port=80)
    return src, dst, points


def test_manifest_at_start_and_end(tmp_path: Path) -> None:
    src, dst, points = make_points()
    started = new_manifest(
        "trace",
        ["flowtrace", "trace", "c1", "203.0.113.9:80"],
        "trace.pcapng",
        points,
        endpoints={"src": src, "dst": dst},
        tools={"iptables": "1.8.9"},
        started=NOW,
    )
    write_manifest(tmp_path, started)
    on_disk = read_manifest(tmp_path)
    assert on_disk is not None
    assert on_disk["complete"] is False and on_disk["ended"] is None
    assert on_disk["flowtrace_version"] == __version__
    assert on_disk["kernel"] == os.uname().release
    assert on_disk["versions"]["iptables"] == "1.8.9" and "python" in on_disk["versions"]
    assert on_disk["started"] == "2024-06-07T12:30:45+00:00"
    assert on_disk["pcapng"] == "trace.pcapng"
    assert on_disk["endpoints"]["dst"] == {
        "spec": "203.0.113.9:80",
        "netns": "host",
        "container": None,
        "ip": "203.0.113.9",
        "port": 80,
        "addresses": [],
    }
    assert [p["id"] for p in on_disk["points"]] == ["c1/eth0", "host/docker0"]
    assert on_disk["points"][0]["description"] == "netns=c1 container=c1 role=source"
    assert on_disk["points"][1]["netns_path"] == "/proc/1/ns/net"

    finished = finish_manifest(
        on_disk,
        [PointStats("c1/eth0", packets=4, drops=0), PointStats("host/docker0", 3, 1)],
        ended=NOW + timedelta(seconds=2),
        verdicts=["replied"],
    )
    write_manifest(tmp_path, finished)
    final = read_manifest(tmp_path)
    assert final is not None
    assert final["complete"] is True
    assert final["ended"] == "2024-06-07T12:30:47+00:00"
    assert [(p["packets"], p["drops"]) for p in final["points"]] == [(4, 0), (3, 1)]
    assert final["verdicts"] == ["replied"]
    assert on_disk["complete"] is False, "finish_manifest returns a copy"
    json.dumps(final)  # plain JSON all the way down

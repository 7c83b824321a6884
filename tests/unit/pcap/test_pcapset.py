"""Pcap set folders: names, never overwriting, atomic manifests, finding the captures."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from flowtrace._version import __version__
from flowtrace.errors import CaptureFormatError, FlowtraceError, NotFoundError
from flowtrace.model import Namespace, Point, PointStats
from flowtrace.pcap.pcapset import (
    CAPTURE_FILE,
    MANIFEST_FORMAT,
    TRACE_FILE,
    PcapSet,
    claim_set_dir,
    find_capture_files,
    new_set_dir,
    read_manifest,
    safe_name,
    start_manifest,
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


def make_points() -> list[Point]:
    c1 = Namespace("/proc/101/ns/net", "c1", 4026532001, container="c1")
    host = Namespace("/proc/1/ns/net", "host", 4026531992)
    return [
        Point("c1/eth0", c1, "eth0", 2, "source", addresses=("172.17.0.2",)),
        Point("host/docker0", host, "docker0", 3, "bridge", promisc=True),
    ]


def test_manifest_at_start_and_end(tmp_path: Path) -> None:
    points = make_points()
    pcap_set = PcapSet.create(tmp_path / "set", "c1", "203.0.113.9", TRACE_FILE)
    started = start_manifest(
        "tcp", "flowtrace tcp c1 203.0.113.9:80", TRACE_FILE, points, count=1, notes=["n"]
    )
    pcap_set.start(started)
    on_disk = read_manifest(pcap_set.directory)
    assert on_disk is not None
    assert on_disk["format"] == MANIFEST_FORMAT == "flowtrace-pcapset/2"
    assert on_disk["complete"] is False and "ended" not in on_disk
    assert on_disk["flowtrace"] == __version__
    assert on_disk["kernel"] == os.uname().release
    assert "python" in on_disk["versions"] and on_disk["python"] == on_disk["versions"]["python"]
    assert datetime.fromisoformat(on_disk["started"]).tzinfo is not None
    assert (on_disk["kind"], on_disk["pcapng"], on_disk["count"]) == ("tcp", TRACE_FILE, 1)
    assert [p["id"] for p in on_disk["points"]] == ["c1/eth0", "host/docker0"]
    assert on_disk["points"][0]["description"] == "netns=c1 container=c1 role=source"
    assert on_disk["points"][1]["netns_path"] == "/proc/1/ns/net"

    pcap_set.finish(
        [PointStats("c1/eth0", packets=4, drops=0, bytes=400), PointStats("host/docker0", 3, 1)],
        verdicts=[{"probe": 0, "outcome": "replied"}],
    )
    final = read_manifest(pcap_set.directory)
    assert final is not None
    # the kernel dropped one packet at host/docker0: the set is not whole, and says why
    assert final["complete"] is False and final["ended"] >= final["started"]
    assert final["incomplete"] == "the kernel dropped packets before capture: host/docker0 (1)"
    assert [(p["packets"], p["drops"]) for p in final["points"]] == [(4, 0), (3, 1)]
    assert final["stats"][0] == {"point": "c1/eth0", "packets": 4, "drops": 0, "bytes": 400}
    assert final["verdicts"] == [{"probe": 0, "outcome": "replied"}]
    assert started["complete"] is False, "finish_manifest returns a copy"
    json.dumps(final)  # plain JSON all the way down


def test_a_set_that_never_started_is_taken_back(tmp_path: Path) -> None:
    made = PcapSet.create(tmp_path / "new", "c1", "c2", CAPTURE_FILE)
    made.start({"complete": False})
    made.capture_path.write_bytes(b"")
    made.discard()
    assert not made.directory.exists()
    own = tmp_path / "mine"
    own.mkdir()
    kept = PcapSet.create(own, "c1", "c2", CAPTURE_FILE)
    kept.start({"complete": False})
    kept.discard()
    assert own.is_dir() and not any(own.iterdir())  # the user's own folder stays, empty


def test_library_versions_are_what_importlib_metadata_says() -> None:
    import platform
    from importlib import metadata

    from flowtrace.pcap.pcapset import RECORDED_LIBRARIES, library_versions

    expected = {"python": platform.python_version()}
    expected.update({name: metadata.version(name) for name in RECORDED_LIBRARIES})
    assert library_versions() == expected

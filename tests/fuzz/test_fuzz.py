"""Hostile files against the reader and the analyze pass: every case the issue names, the
inputs that ever crashed the fuzzer, and a short coverage-guided run (atheris)."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fuzz_target import REGRESSIONS, check, split

from flowtrace.analyze import analyze, summary_dict
from flowtrace.errors import CaptureFormatError, ExitStatus, FlowtraceError
from flowtrace.output.jsonstream import JsonDocument

REPO = Path(__file__).resolve().parents[2]
#: Seconds the suite fuzzes for (a longer run by hand: see fuzz_target.py).
FUZZ_SECONDS = float(os.environ.get("FLOWTRACE_FUZZ_SECONDS", "30"))

#: What each hand-made hostile input must give: a note in the result, or a one-line error.
EXPECTED = {
    "manifest-points-a-string": ("note", "manifest.points: expected a list, found a string"),
    "manifest-points-numbers": ("note", "manifest.points[0]: expected an object, found a number"),
    "manifest-point-without-id": ("note", "manifest.points[0]: no 'id'"),
    "manifest-addresses-a-number": (
        "note",
        "manifest.points[0].addresses: expected a list, found a number",
    ),
    "manifest-nested-100000": ("note", "nested deeper than"),
    "manifest-5000-digit-integer": ("note", "a number of more than 4,300 digits"),
    "manifest-pcapng-outside-the-folder": ("note", "'../../etc/passwd' is not a file name"),
    "manifest-names-points-the-capture-lacks": (
        "note",
        "the manifest lists points the capture has no interface for: c9/eth0",
    ),
    "manifest-count-beyond-64-bits": ("note", "manifest.count: 22-digit number, beyond 64 bits"),
    "pcapng-declares-a-2-GiB-block": (
        "error",
        "declares 2,147,483,648 bytes, more than the 16 MiB",
    ),
    "pcap-header-then-zeros": ("note", "4,096 empty records in a row from offset 24"),
    "pcap-declares-a-2-GiB-record": ("error", "declares 2,147,483,647 bytes, more than the 16 MiB"),
    "pcapng-run-of-unknown-blocks": ("note", "4,096 empty records in a row"),
    "pcapng-good-packets-then-a-corrupt-block": ("error", "corrupt block at offset 39836"),
}


def _set_from(data: bytes, folder: Path) -> Path:
    manifest, capture = split(data)
    (folder / "trace.pcapng").write_bytes(capture)
    if manifest is None:
        return folder / "trace.pcapng"
    (folder / "manifest.json").write_bytes(manifest)
    return folder


@pytest.mark.parametrize("name", sorted(p.name for p in REGRESSIONS.iterdir()))
def test_every_regression_input_ends_in_a_result_or_one_line(name: str, tmp_path: Path) -> None:
    data = (REGRESSIONS / name).read_bytes()
    started = time.monotonic()
    check(data, tmp_path)  # raises only for a crash
    assert time.monotonic() - started < 10, "bounded time"
    if name not in EXPECTED:
        return  # a minimized fuzzer crash: not crashing is the test
    how, words = EXPECTED[name]
    target = _set_from(data, tmp_path)
    if how == "error":
        with pytest.raises(CaptureFormatError) as caught:
            analyze(target, keep_packets=False)
        assert words in caught.value.message and "\n" not in caught.value.message
    else:
        analysis = analyze(target, keep_packets=False)
        assert any(words in note for note in analysis.notes), analysis.notes


def test_every_case_the_issue_names_is_covered() -> None:
    assert set(EXPECTED) <= {p.name for p in REGRESSIONS.iterdir()}


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """Run call in a thread; fail (rather than hang the suite) if it blocks."""
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(call())
        except BaseException as exc:
            box.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert box, f"still blocked after {seconds} s"
    return box[0]


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "capture.pcapng"
    os.mkfifo(fifo)
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "sock.pcap"))
    cases = [(fifo, "a FIFO (named pipe)"), (Path("/dev/zero"), "a character device")]
    cases.append((tmp_path / "sock.pcap", "a socket"))
    try:
        for path, words in cases:
            error = _within(5, lambda path=path: analyze(path))
            assert isinstance(error, CaptureFormatError), error
            assert f"is {words}, not a file" in error.message
    finally:
        server.close()


def test_a_fifo_as_a_sets_manifest_is_a_note_and_the_capture_is_read(tmp_path: Path) -> None:
    example = REPO / "captures/examples/ping-c1-c2"
    (tmp_path / "trace.pcapng").write_bytes((example / "trace.pcapng").read_bytes())
    os.mkfifo(tmp_path / "manifest.json")
    analysis = _within(10, lambda: analyze(tmp_path, keep_packets=False))
    assert not isinstance(analysis, BaseException), analysis
    assert analysis.packet_count == 40
    assert any("manifest.json: is a FIFO (named pipe)" in note for note in analysis.notes)


def test_plot_and_load_refuse_a_fifo_in_one_line(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "x.pcapng")
    for args in (["plot", str(tmp_path / "x.pcapng"), "-o", str(tmp_path / "p.png")],
                 ["analyze", str(tmp_path / "x.pcapng")]):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "flowtrace", *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == ExitStatus.BAD_CAPTURE, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "FIFO" in result.stderr


def test_analyze_json_is_whole_json_or_nothing_on_errors(tmp_path: Path) -> None:
    good = (REPO / "captures/examples/ping-c1-c2/trace.pcapng").read_bytes()
    for name, data in (("late", good + b"\x06\x00\x00\x00\x0d\x00\x00\x00" + b"x" * 40),
                       ("early", b"\x0a\x0d\x0d\x0a" + bytes(40))):  # fmt: skip
        path = tmp_path / f"{name}.pcapng"
        path.write_bytes(data)
        result = subprocess.run(
            [sys.executable, "-m", "flowtrace", "analyze", "--json", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == ExitStatus.BAD_CAPTURE, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        if result.stdout:
            document = json.loads(result.stdout)
            assert document["error"]["status"] == ExitStatus.BAD_CAPTURE


def test_a_json_document_closed_by_an_error_after_packets_went_out() -> None:
    out = io.StringIO()
    document = JsonDocument(out, batch=2)
    analysis = analyze(REPO / "captures/examples/ping-c1-c2", keep_packets=True)
    for pkt in analysis.trace.packets[:5]:
        document.packet(pkt)
    document.fail(9, "corrupt block at offset 1")
    parsed = json.loads(out.getvalue())
    assert len(parsed["packets"]) == 5 and parsed["error"]["message"] == "corrupt block at offset 1"
    out = io.StringIO()
    JsonDocument(out).fail(9, "nothing was written")
    assert out.getvalue() == ""
    out = io.StringIO()
    finished = JsonDocument(out)
    finished.finish(summary_dict(analysis))
    assert json.loads(out.getvalue())["packets"] == []


def test_a_short_coverage_guided_run_finds_no_crash(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    target = Path(__file__).parent / "fuzz_target.py"
    subprocess.run([sys.executable, str(target), "--seed", str(corpus)], check=True)
    result = subprocess.run(
        [
            sys.executable,
            str(target),
            f"-max_total_time={FUZZ_SECONDS:g}",
            "-rss_limit_mb=2048",
            "-timeout=20",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS + 120,
        cwd=tmp_path,
    )
    crashes = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(("crash", "oom")))
    assert result.returncode == 0 and not crashes, result.stderr[-3000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", result.stderr)
    assert done is not None and int(done[1]) > 100, result.stderr[-2000:]
    print(f"fuzz: {done[1]} inputs in {done[2]} s, no crash")


def test_errors_of_the_reader_are_flowtrace_errors() -> None:
    assert issubclass(CaptureFormatError, FlowtraceError)

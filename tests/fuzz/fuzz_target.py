"""Coverage-guided fuzzing of the capture reader and the analyze pass (atheris).

One input is a capture file alone, or a whole set (manifest.json + trace.pcapng):

    byte 0 even:  the rest is a capture file (pcapng or classic pcap)
    byte 0 odd:   bytes 1-4 are the manifest's length L (little-endian), then L bytes of
                  manifest.json, then the capture file

`check` reads it as `flowtrace analyze` and `flowtrace analyze --json` do.  A
FlowtraceError (one line, its own exit status) is a fine answer; any other exception
is a crash, and so is a --json document that does not parse.

By hand (a longer run; crashes land in the current folder as crash-<sha1>):

    .venv/bin/python tests/fuzz/fuzz_target.py -max_total_time=2400 -rss_limit_mb=2048 \\
        -timeout=20 /tmp/ft-corpus   # seed it first: python tests/fuzz/fuzz_target.py --seed DIR

Minimize a crash with `-minimize_crash=1 -runs=10000 crash-...` and commit the result to
tests/data/fuzz/ (tests/fuzz/test_fuzz.py replays every file there).
"""

from __future__ import annotations

import io
import json
import struct
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "captures" / "examples"
REGRESSIONS = REPO / "tests" / "data" / "fuzz"


def split(data: bytes) -> tuple[bytes | None, bytes]:
    """(manifest or None, capture file) from one fuzz input."""
    if not data or data[0] % 2 == 0:
        return None, data[1:]
    if len(data) < 5:
        return b"", b""
    (length,) = struct.unpack_from("<I", data, 1)
    length = min(length, len(data) - 5)
    return data[5 : 5 + length], data[5 + length :]


def join(manifest: bytes | None, capture: bytes) -> bytes:
    """The fuzz input for a capture file and, optionally, its set's manifest."""
    if manifest is None:
        return b"\x00" + capture
    return b"\x01" + struct.pack("<I", len(manifest)) + manifest + capture


def check(data: bytes, folder: Path) -> None:
    """Read one input as analyze does; raise only for a crash (never a FlowtraceError)."""
    from flowtrace.analyze import analyze, summary_dict
    from flowtrace.errors import FlowtraceError
    from flowtrace.output.jsonstream import JsonDocument

    manifest, capture = split(data)
    for child in folder.iterdir():
        child.unlink()
    (folder / "trace.pcapng").write_bytes(capture)
    if manifest is not None:
        (folder / "manifest.json").write_bytes(manifest)
    target = folder if manifest is not None else folder / "trace.pcapng"
    out = io.StringIO()
    document = JsonDocument(out, batch=4)
    try:
        analysis = analyze(target, keep_packets=False, on_packet=document.packet)
    except FlowtraceError as exc:
        document.fail(int(exc.status), exc.message)
    else:
        document.finish(summary_dict(analysis))
    text = out.getvalue()
    if text:
        json.loads(text)  # whole JSON, or nothing


def seed(corpus: Path) -> int:
    """Write the starting inputs: every example set, whole and as its pcapng alone."""
    corpus.mkdir(parents=True, exist_ok=True)
    count = 0
    for example in sorted(EXAMPLES.iterdir()):
        capture = (example / "trace.pcapng").read_bytes()
        manifest = (example / "manifest.json").read_bytes()
        for number, data in enumerate((join(None, capture), join(manifest, capture))):
            (corpus / f"{example.name}-{number}").write_bytes(data)
            count += 1
    for regression in sorted(REGRESSIONS.glob("*")):
        (corpus / f"regression-{regression.name}").write_bytes(regression.read_bytes())
        count += 1
    return count


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seed":
        print(f"seeded {seed(Path(sys.argv[2]))} inputs into {sys.argv[2]}")
        return
    import atheris

    with atheris.instrument_imports(include=["flowtrace"]):
        import flowtrace.analyze
        import flowtrace.output.jsonstream  # noqa: F401 - instrumented for coverage

    folder = Path(tempfile.mkdtemp(prefix="ft-fuzz-"))

    def one_input(data: bytes) -> None:
        check(data, folder)

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

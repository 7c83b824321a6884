"""The C EPB scanner (_pcapscan.c) reads every file exactly as the Python loop does.

Each input is read twice, with the scanner and without it (the pure-Python path a
machine without a compiler runs), and everything a reader yields or says must be
equal: the records (types included), truncation, the problem note and any error.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtrace import native
from flowtrace.errors import CaptureFormatError
from flowtrace.pcap import pcapng_source
from flowtrace.pcap.reader import open_capture

REPO = Path(__file__).resolve().parents[3]
SCAN = pcapng_source._SCAN

pytestmark = pytest.mark.skipif(
    native.load("flowtrace.pcap._pcapscan") is None,
    reason="the C scanner is not built (no compiler): only the Python path exists here",
)

Outcome = tuple[list[tuple[object, ...]], bool, list[str], str | None]


def read_with(data: bytes, scan: object, chunk: int | None = None) -> Outcome:
    """What a reader yields and says of `data`, with the given scanner (None: Python)."""
    saved = pcapng_source._SCAN
    pcapng_source._SCAN = scan  # type: ignore[assignment]
    records: list[tuple[object, ...]] = []
    error = None
    try:
        reader = open_capture(io.BytesIO(data))
        if chunk is not None:
            for source in reader._sources:
                source.chunk_size = chunk
        with reader:
            for record in reader:
                records.append((type(record), *((type(f), f) for f in record)))
        truncated, problems = reader.truncated, reader.problems
    except CaptureFormatError as err:
        error, truncated, problems = str(err), False, []
    finally:
        pcapng_source._SCAN = saved
    return records, truncated, problems, error


def assert_same(data: bytes, chunk: int | None = None) -> Outcome:
    native_outcome = read_with(data, SCAN, chunk)
    assert native_outcome == read_with(data, None, chunk)
    return native_outcome


# Blocks built by hand, in either byte order.


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def block(order: str, block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def shb(order: str) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order: str, linktype: int, tsresol: int | None, tsoffset: int | None) -> bytes:
    options = option(order, 2, b"eth0")
    if tsresol is not None:
        options += option(order, 9, bytes([tsresol]))
    if tsoffset is not None:
        options += option(order, 14, struct.pack(order + "q", tsoffset))
    body = struct.pack(order + "HHI", linktype, 0, 65535) + options + option(order, 0, b"")
    return block(order, 1, body)


OPTION_KINDS = ("flags", "packet_id", "dropcount", "comment", "unknown", "end", "bad_size")


def epb_options(order: str, kinds: list[str], flags: int, number: int) -> bytes:
    parts = {
        "flags": option(order, 2, struct.pack(order + "I", flags)),
        "packet_id": option(order, 5, struct.pack(order + "Q", number)),
        "dropcount": option(order, 4, struct.pack(order + "Q", number * 3)),
        "comment": option(order, 1, b"a comment\0"),
        "unknown": option(order, 0x0BAD, b"xyz"),
        "end": option(order, 0, b""),
        "bad_size": option(order, 2, b"\x01\x02"),  # epb_flags of 2 bytes: ignored
    }
    return b"".join(parts[kind] for kind in kinds)


@st.composite
def pcapng_files(draw: st.DrawFn) -> bytes:
    """Sections of either byte order, interfaces of several link types and units, EPBs
    with every option layout, other blocks between them; then maybe damage."""
    out = b""
    for _ in range(draw(st.integers(1, 2))):
        order = draw(st.sampled_from(["<", ">"]))
        out += shb(order)
        interfaces = draw(st.integers(1, 3))
        for _ in range(interfaces):
            linktype = draw(st.sampled_from([1, 113, 276, 101]))
            tsresol = draw(st.sampled_from([None, 9, 6, 3, 0x8A, 0x3F, 0xFF]))
            tsoffset = draw(st.sampled_from([None, 0, 1000, -5]))
            out += idb(order, linktype, tsresol, tsoffset)
        for number in range(draw(st.integers(0, 12))):
            kind = draw(st.sampled_from(["epb"] * 6 + ["isb", "unknown", "spb"]))
            if kind == "isb":
                out += block(order, 5, struct.pack(order + "III", 0, 0, 7))
                continue
            if kind == "unknown":
                out += block(order, 0x0BAD, b"\0" * 4)
                continue
            if kind == "spb":
                out += block(order, 3, struct.pack(order + "I", 4) + b"spb!")
                continue
            frame = draw(st.binary(min_size=0, max_size=40))
            interface = draw(st.integers(0, interfaces))  # one past: undescribed
            timestamp = draw(st.sampled_from([0, 1, 1_700_000_000_000_000_000, 2**64 - 1]))
            kinds = draw(st.lists(st.sampled_from(OPTION_KINDS), max_size=4))
            flags = draw(st.sampled_from([0, 1, 2, 3, 0x10001]))
            head = struct.pack(
                order + "IIIII", interface, timestamp >> 32, timestamp & 0xFFFFFFFF,
                len(frame), len(frame) + draw(st.integers(0, 3)),
            )  # fmt: skip
            body = head + frame + b"\0" * (-len(frame) % 4)
            out += block(order, 6, body + epb_options(order, kinds, flags, number))
    if draw(st.booleans()):  # damage: cut it, change a byte, or both
        if out and draw(st.booleans()):
            at = draw(st.integers(0, len(out) - 1))
            out = out[:at] + bytes([draw(st.integers(0, 255))]) + out[at + 1 :]
        if draw(st.booleans()):
            out = out[: draw(st.integers(0, len(out)))]
    return out


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pcapng_files(), st.sampled_from([None, 16, 100, 4096]))
def test_generated_files_read_the_same(data: bytes, chunk: int | None) -> None:
    assert_same(data, chunk)


def test_every_recorded_example_and_hostile_file_reads_the_same() -> None:
    files = sorted((REPO / "captures" / "examples").rglob("*.pcapng"))
    files += sorted(p for p in (REPO / "tests" / "data" / "fuzz").iterdir() if "pcapng" in p.name)
    assert len(files) >= 5
    for path in files:
        records, *_ = assert_same(path.read_bytes())
        if "examples" in path.parts:
            assert records, path


def test_a_long_run_is_handed_over_in_pieces_and_every_layout_is_kept() -> None:
    """More records than one scan hands over, in the three layouts flowtrace writes."""
    order = "<"
    blocks = b""
    for number in range(3 * pcapng_source._SCAN_RUN + 5):
        kinds = (["flags"], ["flags", "packet_id", "end"], [])[number % 3]
        head = struct.pack(order + "IIIII", 0, 0, number, 4, 4)
        blocks += block(order, 6, head + b"abcd" + epb_options(order, kinds, 2, number))
    records, truncated, problems, error = assert_same(shb(order) + idb(order, 1, 9, None) + blocks)
    assert len(records) == 3 * pcapng_source._SCAN_RUN + 5
    assert (truncated, problems, error) == (False, [], None)


def test_an_sll_frame_without_flags_takes_its_direction_from_the_link_header() -> None:
    order = "<"
    sll_out = b"\x00\x04" + b"\0" * 14  # packet type 4: sent by this host
    head = struct.pack(order + "IIIII", 0, 0, 1, len(sll_out), len(sll_out))
    data = shb(order) + idb(order, 113, None, None) + block(order, 6, head + sll_out)
    data += block(order, 6, head + sll_out + epb_options(order, ["flags", "end"], 3, 0))
    records, *_ = assert_same(data)
    assert [fields[5] for fields in records] == [(bool, True), (bool, True)]


def test_the_scanner_takes_the_usual_blocks_itself() -> None:
    """Not only equal: the usual EPBs go through C (else the tests above compare Python
    with itself)."""
    order = "<"
    head = struct.pack(order + "IIIII", 0, 0, 1, 4, 4)
    usual = block(order, 6, head + b"abcd" + epb_options(order, ["flags", "end"], 1, 0))
    commented = block(order, 6, head + b"abcd" + epb_options(order, ["comment", "end"], 1, 0))
    for tsresol in (None, 9, 6):
        buf = shb(order) + idb(order, 1, tsresol, 1000) + usual * 3 + commented + usual
        reader = open_capture(io.BytesIO(buf))
        source = reader._sources[0]
        scanned, pos = SCAN(
            source.buf, source.pos, len(source.buf), True, source.conversions, 1 << 24,
            pcapng_source.Record, 100,
        )  # fmt: skip
        reader.close()
        assert len(scanned) == 3
        assert pos == source.pos + 3 * len(usual)  # stopped at the comment, left to Python

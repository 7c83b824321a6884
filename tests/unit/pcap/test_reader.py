"""The streaming reader: pcapng of both byte orders and several sections, classic pcap,
truncated and corrupt files, several files merged, and files other tools wrote."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
import time
import tracemalloc
from pathlib import Path

import pytest

from flowtrace.errors import CaptureFormatError, NotFoundError
from flowtrace.pcap import pcapng_source
from flowtrace.pcap import reader as reader_module
from flowtrace.pcap.pcapng import (
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    PcapngWriter,
    enhanced_packet_block,
    interface_description_block,
    section_header_block,
    write_classic_pcap,
)
from flowtrace.pcap.reader import CaptureReader, Record, open_capture

T0 = 1_700_000_000_000_000_000


_NO_SCANNER = pytest.mark.skipif(pcapng_source._SCAN is None, reason="no C scanner built here")


@pytest.fixture(autouse=True, params=[pytest.param("c-scanner", marks=_NO_SCANNER), "python"])
def packet_loop(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test reads with the C EPB scanner (where built) and with the Python loop."""
    if request.param == "python":
        monkeypatch.setattr(pcapng_source, "_SCAN", None)


def read_all(data: bytes) -> tuple[CaptureReader, list[Record]]:
    reader = open_capture(io.BytesIO(data))
    return reader, list(reader)


# Blocks built by hand, independently of the writer, in either byte order.


def option(order: str, code: int, value: bytes) -> bytes:
    return struct.pack(order + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def end_of_options(order: str) -> bytes:
    return struct.pack(order + "HH", 0, 0)


def block(order: str, block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack(order + "II", block_type, length) + body + struct.pack(order + "I", length)


def shb(order: str) -> bytes:
    return block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(order: str, name: str, linktype: int = 1, *options: bytes) -> bytes:
    body = struct.pack(order + "HHI", linktype, 0, 65535) + option(order, 2, name.encode())
    return block(order, 1, body + b"".join(options) + end_of_options(order))


def epb(order: str, interface: int, timestamp: int, data: bytes, *options: bytes) -> bytes:
    head = struct.pack(
        order + "IIIII", interface, timestamp >> 32, timestamp & 0xFFFFFFFF, len(data), len(data)
    )
    opts = b"".join(options) + end_of_options(order) if options else b""
    return block(order, 6, head + data + b"\0" * (-len(data) % 4) + opts)


# ------------------------------------------------------------------------------ pcapng


def test_round_trip_of_every_field_and_interface() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out)
    first = writer.add_interface(
        "c1/eth0", "netns=c1 role=source", filter_expr="icmp", mac=b"\x02\x42\xac\x11\x00\x02"
    )
    second = writer.add_interface("host/docker0", "netns=host role=bridge", snaplen=1500)
    third = writer.add_interface("host/eth9", tsresol_ns=False, linktype=LINKTYPE_RAW)
    writer.write_packet(first, T0 + 500, b"a" * 60, outbound=True, packet_id=1, comment="hop")
    # Workers append blocks of different interfaces out of time order.
    writer.write_packet(second, T0 + 100, b"b" * 61, 1514, outbound=False, packet_id=1)
    writer.write_packet(third, T0 + 123_456_789, b"c" * 7, dropcount=2**64 - 1, packet_id=0)
    writer.write_packet(first, T0, b"", comment="ünïcødé ✓ 漢字\nsecond line")
    writer.write_stats(first, T0 + 10**9, 4, 0)
    writer.write_stats(second, T0 + 10**9, None, 3)
    reader, records = read_all(out.getvalue())

    assert [(i.index, i.name, i.description, i.linktype, i.snaplen) for i in reader.interfaces] == [
        (0, "c1/eth0", "netns=c1 role=source", 1, 262144),
        (1, "host/docker0", "netns=host role=bridge", 1, 1500),
        (2, "host/eth9", "", LINKTYPE_RAW, 262144),
    ]
    assert reader.interfaces[0].filter == "icmp"
    assert reader.interfaces[0].mac == b"\x02\x42\xac\x11\x00\x02"
    assert [i.units_per_second for i in reader.interfaces] == [10**9, 10**9, 10**6]
    assert records == [
        Record(0, T0 + 500, b"a" * 60, 60, True, 1, "hop", None),
        Record(1, T0 + 100, b"b" * 61, 1514, False, 1, None, None),
        Record(2, T0 + 123_456_000, b"c" * 7, 7, None, 0, None, 2**64 - 1),
        Record(0, T0, b"", 0, None, None, "ünïcødé ✓ 漢字\nsecond line", None),
    ]
    assert [(s.interface, s.received, s.dropped, s.time_ns) for s in reader.stats] == [
        (0, 4, 0, T0 + 10**9),
        (1, None, 3, T0 + 10**9),
    ]
    assert reader.latest_stats()[1].dropped == 3
    assert not reader.truncated


def test_interfaces_are_known_before_iterating() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out)
    writer.add_interface("a")
    writer.write_packet(0, T0, b"x")
    writer.add_interface("late")
    writer.write_packet(1, T0, b"y")
    reader = open_capture(io.BytesIO(out.getvalue()))
    assert [i.name for i in reader.interfaces] == ["a"]
    assert [r.interface for r in reader] == [0, 1]
    assert [i.name for i in reader.interfaces] == ["a", "late"]


def test_big_endian_section_then_little_endian_section() -> None:
    big = (
        shb(">")
        + idb(">", "be0", 1, option(">", 9, b"\x09"), option(">", 3, b"big"))
        + idb(">", "be1")
        + epb(">", 1, 5_000_000, b"\x01\x02\x03", option(">", 2, struct.pack(">I", 2)))
        + block(">", 5, struct.pack(">III", 0, 0, 9) + option(">", 5, struct.pack(">Q", 11)))
        + epb(">", 0, T0, b"\x04", option(">", 5, struct.pack(">Q", 2**64 - 1)))
    )
    little = shb("<") + idb("<", "le0") + epb("<", 0, 42, b"\x05\x06")
    reader, records = read_all(big + little)
    assert [(i.index, i.name, i.section) for i in reader.interfaces] == [
        (0, "be0", 0),
        (1, "be1", 0),
        (2, "le0", 1),
    ]
    assert reader.interfaces[0].description == "big"
    assert records == [
        Record(1, 5_000_000_000, b"\x01\x02\x03", 3, True),
        Record(0, T0, b"\x04", 1, packet_id=2**64 - 1),
        Record(2, 42_000, b"\x05\x06", 2),
    ]
    assert reader.stats[0].interface == 0 and reader.stats[0].dropped == 11


@pytest.mark.parametrize(
    ("tsresol", "timestamp", "expected_ns"),
    [
        (b"\x06", 1_500_000, 1_500_000_000),
        (b"\x03", 1_500, 1_500_000_000),
        (b"\x0c", 1_500_000_000_123, 1_500_000_000),  # picoseconds
        (b"\x8a", 1024 * 3 + 512, 3_500_000_000),  # 2**-10 s
    ],
)
def test_timestamp_resolutions(tsresol: bytes, timestamp: int, expected_ns: int) -> None:
    data = shb("<") + idb("<", "x", 1, option("<", 9, tsresol)) + epb("<", 0, timestamp, b"z")
    _, (record,) = read_all(data)
    assert record.time_ns == expected_ns


def test_timestamp_offset_seconds() -> None:
    offset = option("<", 14, struct.pack("<q", 1_000))
    _, (record,) = read_all(shb("<") + idb("<", "x", 1, offset) + epb("<", 0, 2_000_000, b"z"))
    assert record.time_ns == 1_002_000_000_000


@pytest.mark.parametrize("order", ["<", ">"])
def test_option_layouts_that_look_alike(order: str) -> None:
    """epb_flags + epb_packetid is read on a fast path; similar layouts must not be."""
    flags = option(order, 2, struct.pack(order + "I", 2))
    packet_id = option(order, 5, struct.pack(order + "Q", 77))
    dropcount = option(order, 4, struct.pack(order + "Q", 5))
    blocks = (
        epb(order, 0, 1, b"a", flags, packet_id)
        + epb(order, 0, 2, b"b", flags, dropcount)
        + epb(order, 0, 3, b"c", packet_id, flags)
        # Options may end without opt_endofopt: flags, packet id and one 4-byte custom option.
        + block(order, 6, struct.pack(order + "IIIII", 0, 0, 4, 1, 1) + b"d\0\0\0"
                + flags + packet_id + option(order, 0x0BAD, b""))
    )  # fmt: skip
    _, records = read_all(shb(order) + idb(order, "x") + blocks)
    assert [(r.outbound, r.packet_id, r.dropcount) for r in records] == [
        (True, 77, None),
        (True, None, 5),
        (True, 77, None),
        (True, 77, None),
    ]


def test_several_comments_are_joined_and_nul_terminators_dropped() -> None:
    options = (option("<", 1, b"first\0"), option("<", 1, "second é".encode()))
    _, (record,) = read_all(shb("<") + idb("<", "x") + epb("<", 0, 1, b"z", *options))
    assert record.comment == "first\nsecond é"


def test_simple_and_obsolete_packet_blocks() -> None:
    spb = block("<", 3, struct.pack("<I", 5) + b"hello\0\0\0")
    pb = block(
        "<",
        2,
        struct.pack("<HHIIII", 0, 9, 0, 7_000_000, 3, 3)
        + b"abc\0"
        + option("<", 2, struct.pack("<I", 1))
        + end_of_options("<"),
    )
    _, records = read_all(shb("<") + idb("<", "x") + spb + pb)
    assert records == [
        Record(0, 0, b"hello", 5),
        Record(0, 7_000_000_000, b"abc", 3, False, None, None, 9),
    ]


def test_name_resolution_and_unknown_blocks_are_handled() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out)
    writer.add_interface("x")
    writer.write_names([("172.17.0.2", ["c1", "web"]), ("fd00::1", ["gw"])])
    writer.write_blocks(block("<", 0x0BAD, b"\x01\x02\x03\x04"))  # a custom block
    writer.write_packet(0, T0, b"p")
    reader, records = read_all(out.getvalue())
    assert len(records) == 1
    assert reader.names == {"172.17.0.2": ("c1", "web"), "fd00::1": ("gw",)}


def test_sll2_and_sll_frames_carry_direction() -> None:
    sll2_out = bytes(10) + b"\x04" + bytes(9) + b"ip"
    sll2_in = bytes(10) + b"\x00" + bytes(9) + b"ip"
    sll_out = b"\x00\x04" + bytes(14) + b"ip"
    out = io.BytesIO()
    writer = PcapngWriter(out)
    writer.add_interface("any", linktype=LINKTYPE_LINUX_SLL2)
    writer.add_interface("any-sll", linktype=LINKTYPE_LINUX_SLL)
    writer.write_packet(0, T0, sll2_out)
    writer.write_packet(0, T0, sll2_in)
    writer.write_packet(0, T0, sll2_in, outbound=True)  # epb_flags win over the header
    writer.write_packet(1, T0, sll_out)
    _, records = read_all(out.getvalue())
    assert [r.outbound for r in records] == [True, False, True, True]


def sample_pcapng(packets: int = 5) -> bytes:
    out = io.BytesIO()
    writer = PcapngWriter(out)
    writer.add_interface("a")
    writer.add_interface("b")
    for n in range(packets):
        writer.write_packet(n % 2, T0 + n, bytes([n]) * (n + 1), packet_id=n, comment=f"#{n}")
    return out.getvalue()


@pytest.mark.parametrize("cut", [1, 4, 8, 11, 12, 20, 30, 40, 47])
def test_truncated_last_block_keeps_every_earlier_record(cut: int) -> None:
    whole = sample_pcapng()
    last = enhanced_packet_block(0, T0 + 99, b"last packet", 11, packet_id=99, comment="cut")
    assert len(last) > 47
    reader, records = read_all(whole + last[:cut])
    assert [r.packet_id for r in records] == [0, 1, 2, 3, 4]
    assert reader.truncated


def test_truncated_inside_the_interface_descriptions() -> None:
    data = section_header_block("x") + interface_description_block("eth0")[:9]
    reader, records = read_all(data)
    assert records == [] and reader.interfaces == [] and reader.truncated


def test_a_writer_killed_before_its_first_block_is_complete() -> None:
    reader, records = read_all(section_header_block("x")[:10])
    assert records == [] and reader.truncated


def test_whole_file_is_not_truncated() -> None:
    reader, records = read_all(sample_pcapng())
    assert len(records) == 5 and not reader.truncated


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_blocks_across_read_chunks(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(reader_module, "CHUNK_SIZE", chunk)
    _, records = read_all(sample_pcapng(40))
    assert [r.data for r in records] == [bytes([n]) * (n + 1) for n in range(40)]
    assert [r.comment for r in records] == [f"#{n}" for n in range(40)]


def test_not_a_capture_file() -> None:
    with pytest.raises(CaptureFormatError, match=r"^<stream>: not a pcap or pcapng file$"):
        open_capture(io.BytesIO(b"GIF89a" + bytes(100)))
    with pytest.raises(CaptureFormatError, match="not a pcap or pcapng file"):
        open_capture(io.BytesIO(b""))


def test_bad_byte_order_magic() -> None:
    data = bytearray(sample_pcapng())
    data[8:12] = b"\x00\x00\x00\x00"
    with pytest.raises(CaptureFormatError, match="not a pcap or pcapng file"):
        open_capture(io.BytesIO(bytes(data)))


def test_bad_block_length_names_its_offset() -> None:
    data = bytearray(sample_pcapng())
    first_epb = data.index(enhanced_packet_block(0, T0, b"\x00", 1, packet_id=0, comment="#0"))
    struct.pack_into("<I", data, first_epb + 4, 13)
    reader = open_capture(io.BytesIO(bytes(data)))
    with pytest.raises(
        CaptureFormatError, match=rf"^<stream>: corrupt block at offset {first_epb}$"
    ):
        list(reader)


def test_trailing_length_mismatch_is_corrupt() -> None:
    data = bytearray(sample_pcapng(2))
    struct.pack_into("<I", data, len(data) - 4, 1000)
    reader = open_capture(io.BytesIO(bytes(data)))
    with pytest.raises(CaptureFormatError, match="corrupt block at offset"):
        list(reader)


def test_packet_of_an_undescribed_interface() -> None:
    data = shb("<") + idb("<", "x") + epb("<", 3, 1, b"z")
    reader = open_capture(io.BytesIO(data))
    with pytest.raises(CaptureFormatError, match="names interface 3, which is not described"):
        list(reader)


def test_reader_iterates_once() -> None:
    reader = open_capture(io.BytesIO(sample_pcapng()))
    list(reader)
    with pytest.raises(RuntimeError, match="only once"):
        iter(reader)


# ----------------------------------------------------------------------------- classic


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("nanosecond", [False, True])
def test_classic_pcap_both_resolutions_and_byte_orders(
    tmp_path: Path, big_endian: bool, nanosecond: bool
) -> None:
    path = tmp_path / "c1-eth0.pcap"
    with path.open("wb") as handle:
        write_classic_pcap(
            handle,
            [(T0 + 123_456_789, b"frame-1"), (T0 + 2_000_000_001, b"f2", 1514)],
            1,
            nanosecond,
            big_endian=big_endian,
        )
    with open_capture(path) as reader:
        records = list(reader)
        (interface,) = reader.interfaces
    assert interface.name == "c1-eth0" and interface.linktype == 1
    assert interface.source == str(path)
    expected = [T0 + 123_456_789, T0 + 2_000_000_001]
    if not nanosecond:
        expected = [t // 1000 * 1000 for t in expected]
    assert [r.time_ns for r in records] == expected
    assert [(r.data, r.orig_len) for r in records] == [(b"frame-1", 7), (b"f2", 1514)]


def test_classic_pcap_as_tcpdump_writes_it() -> None:
    """Bytes laid out by hand the way tcpdump -w writes them (little-endian host)."""
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
    frame = bytes.fromhex("ffffffffffff0242ac1100020806") + bytes(28)
    record = struct.pack("<IIII", 1_700_000_000, 999_999, len(frame), len(frame)) + frame
    _, records = read_all(header + record + record)
    assert [r.time_ns for r in records] == [1_700_000_000_999_999_000] * 2
    assert records[0].data == frame and records[0].outbound is None


def test_classic_sll2_as_tcpdump_any_writes_it() -> None:
    out = io.BytesIO()
    outgoing = b"\x08\x00\x00\x00" + struct.pack(">IHBB", 7, 1, 4, 6) + bytes(8) + b"\x45"
    incoming = b"\x08\x00\x00\x00" + struct.pack(">IHBB", 7, 1, 0, 6) + bytes(8) + b"\x45"
    write_classic_pcap(out, [(T0, outgoing), (T0 + 1, incoming)], LINKTYPE_LINUX_SLL2)
    reader, records = read_all(out.getvalue())
    assert reader.interfaces[0].linktype == LINKTYPE_LINUX_SLL2
    assert [r.outbound for r in records] == [True, False]


def test_classic_truncated_record() -> None:
    out = io.BytesIO()
    write_classic_pcap(out, [(T0, b"one"), (T0 + 1, b"two-two")], 1)
    reader, records = read_all(out.getvalue()[:-3])
    assert [r.data for r in records] == [b"one"] and reader.truncated


def test_classic_record_with_an_absurd_length() -> None:
    out = io.BytesIO()
    write_classic_pcap(out, [(T0, b"one")], 1)
    data = out.getvalue() + struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 10)
    reader = open_capture(io.BytesIO(data))
    with pytest.raises(
        CaptureFormatError,
        match="record at offset 43 declares 2,147,483,647 bytes, more than the 16 MiB",
    ):
        list(reader)


# ------------------------------------------------------------------------- several files


def write_pcap(path: Path, times: list[int], linktype: int = 1) -> Path:
    with path.open("wb") as handle:
        write_classic_pcap(handle, [(t, path.stem.encode()) for t in times], linktype)
    return path


def test_several_files_merge_in_time_order(tmp_path: Path) -> None:
    c1 = write_pcap(tmp_path / "c1-eth0.pcap", [T0 + 1, T0 + 4, T0 + 9])
    c2 = write_pcap(tmp_path / "c2-eth0.pcap", [T0 + 2, T0 + 3, T0 + 10])
    ng = tmp_path / "trace.pcapng"
    with ng.open("wb") as handle:
        writer = PcapngWriter(handle)
        writer.add_interface("host/docker0")
        writer.add_interface("host/eth0")
        writer.write_packet(0, T0 + 5, b"ng0")
        writer.write_packet(1, T0 + 6, b"ng1")
    with open_capture([c1, c2, str(ng)]) as reader:
        records = list(reader)
        names = [i.name for i in reader.interfaces]
    assert names == ["c1-eth0", "c2-eth0", "host/docker0", "host/eth0"]
    assert [r.time_ns - T0 for r in records] == [1, 2, 3, 4, 5, 6, 9, 10]
    assert [names[r.interface] for r in records][:3] == ["c1-eth0", "c2-eth0", "c2-eth0"]


def test_classic_files_with_the_same_stem_get_distinct_names(tmp_path: Path) -> None:
    (tmp_path / "c1").mkdir()
    (tmp_path / "c2").mkdir()
    paths = [
        write_pcap(tmp_path / "c1" / "eth0.pcap", [T0]),
        write_pcap(tmp_path / "c2" / "eth0.pcap", [T0]),
        write_pcap(tmp_path / "c2" / "eth0.cap", [T0]),
        write_pcap(tmp_path / "c2" / "eth0.dump", [T0]),
    ]
    with open_capture(paths) as reader:
        assert [i.name for i in reader.interfaces] == ["eth0", "c2/eth0", "eth0#2", "eth0#3"]


def test_a_folder_means_its_capture_files(tmp_path: Path) -> None:
    write_pcap(tmp_path / "b.pcap", [T0 + 2])
    write_pcap(tmp_path / "a.pcap", [T0 + 1])
    (tmp_path / "notes.txt").write_text("not a capture")
    with open_capture(tmp_path) as reader:
        assert [r.data for r in reader] == [b"a", b"b"]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match=r"nope\.pcap: no such file"):
        open_capture(tmp_path / "nope.pcap")


def test_files_are_closed_after_reading(tmp_path: Path) -> None:
    path = write_pcap(tmp_path / "x.pcap", [T0])
    reader = open_capture([path, path])
    list(reader)
    assert all(source.closed for source in reader._sources)


needs_mergecap = pytest.mark.skipif(shutil.which("mergecap") is None, reason="no mergecap")


@needs_mergecap
def test_pcapng_from_mergecap_of_two_classic_pcaps(tmp_path: Path) -> None:
    c1 = write_pcap(tmp_path / "c1-eth0.pcap", [T0 + 1, T0 + 30])
    with (tmp_path / "c2-any.pcap").open("wb") as handle:
        frame = bytes(10) + b"\x04" + bytes(9) + b"payload"
        write_classic_pcap(handle, [(T0 + 2, frame), (T0 + 20, frame)], LINKTYPE_LINUX_SLL2)
    merged = tmp_path / "merged.pcapng"
    done = subprocess.run(
        ["mergecap", "-w", str(merged), str(c1), str(tmp_path / "c2-any.pcap")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with open_capture(merged) as reader:
        records = list(reader)
        interfaces = reader.interfaces
    assert [i.linktype for i in interfaces] == [1, LINKTYPE_LINUX_SLL2]
    assert [i.units_per_second for i in interfaces] == [10**9, 10**9]
    assert [(r.interface, r.time_ns - T0) for r in records] == [(0, 1), (1, 2), (1, 20), (0, 30)]
    assert [r.outbound for r in records] == [None, True, True, None]
    assert not reader.truncated


@needs_mergecap
def test_mergecap_keeping_one_interface_per_file(tmp_path: Path) -> None:
    """mergecap folds identical interfaces into one unless told `-I none`."""
    c1 = write_pcap(tmp_path / "c1-eth0.pcap", [T0 + 1, T0 + 3])
    c2 = write_pcap(tmp_path / "c2-eth0.pcap", [T0 + 2])
    merged = tmp_path / "merged.pcapng"
    done = subprocess.run(
        ["mergecap", "-I", "none", "-w", str(merged), str(c1), str(c2)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with open_capture(merged) as reader:
        records = list(reader)
        names = [i.name for i in reader.interfaces]
    assert names == ["merged#0", "merged#1"], "mergecap writes no if_name"
    assert [(r.interface, r.data) for r in records] == [
        (0, b"c1-eth0"),
        (1, b"c2-eth0"),
        (0, b"c1-eth0"),
    ]


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_pcap_written_by_tcpdump_itself(tmp_path: Path) -> None:
    """tcpdump -r reads our pcapng and -w writes a classic pcap: read that back."""
    source = tmp_path / "in.pcapng"
    with source.open("wb") as handle:
        writer = PcapngWriter(handle)
        writer.add_interface("eth0")
        for n in range(3):
            writer.write_packet(0, T0 + n * 1000, bytes.fromhex("ffffffffffff0242ac1100020806"))
    written = tmp_path / "tcpdump.pcap"
    done = subprocess.run(
        ["tcpdump", "-r", str(source), "-w", str(written), "--time-stamp-precision=nano"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    with open_capture(written) as reader:
        assert [r.time_ns - T0 for r in reader] == [0, 1000, 2000]
        assert reader.interfaces[0].name == "tcpdump"


def test_memory_stays_flat_however_long_the_file(tmp_path: Path) -> None:
    path = tmp_path / "long.pcapng"
    frame = bytes(200)
    with path.open("wb") as handle:
        writer = PcapngWriter(handle)
        writer.add_interface("a")
        for start in range(0, 50_000, 5_000):
            writer.write_blocks(
                b"".join(
                    enhanced_packet_block(0, T0 + n, frame, 200)
                    for n in range(start, start + 5_000)
                )
            )
    assert path.stat().st_size > 10 * reader_module.CHUNK_SIZE
    tracemalloc.start()
    try:
        with open_capture(path) as reader:
            count = sum(1 for _ in reader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 50_000
    assert peak < 4 * reader_module.CHUNK_SIZE, "the chunk, the next read and their join"


def test_several_files_share_the_read_buffer(tmp_path: Path) -> None:
    paths = [write_pcap(tmp_path / f"p{n}.pcap", [T0 + n]) for n in range(64)]
    with open_capture(paths) as reader:
        sizes = {source.chunk_size for source in reader._sources}
        assert [r.time_ns - T0 for r in reader] == list(range(64))
    assert sizes == {reader_module.MIN_CHUNK_SIZE}


# ---------------------------------------------------------------------------- throughput


def test_reads_a_million_records(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Reports the read rate (not a timed assertion) on a 1 M record file."""
    path = tmp_path / "million.pcapng"
    count = 1_000_000
    frame = bytes(range(64))
    with path.open("wb") as handle:
        writer = PcapngWriter(handle)
        writer.add_interface("a")
        writer.add_interface("b")
        batch = 10_000
        for start in range(0, count, batch):
            writer.write_blocks(
                b"".join(
                    enhanced_packet_block(n & 1, T0 + n, frame, 64)
                    for n in range(start, start + batch)
                )
            )
    started = time.perf_counter()
    cpu_started = time.process_time()
    total = 0
    last = 0
    with open_capture(path) as reader:
        for record in reader:
            total += 1
            last = record.time_ns
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    assert total == count and last == T0 + count - 1
    with capsys.disabled():
        print(
            f"\n[pcap reader] {count} records: {count / elapsed / 1e6:.2f} M/s wall, "
            f"{count / cpu / 1e6:.2f} M/s of CPU time"
        )

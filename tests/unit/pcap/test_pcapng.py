"""The pcapng block builders: byte layout by the spec, round trips, and what tshark reads."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowtrace.pcap.pcapng import (
    PcapngWriter,
    enhanced_packet_block,
    interface_description_block,
    interface_statistics_block,
    name_resolution_block,
    section_header_block,
    write_classic_pcap,
)
from flowtrace.pcap.reader import open_capture

T0 = 1_700_000_000_123_456_789


def parse_options(body: bytes) -> list[tuple[int, bytes]]:
    """Little-endian options as (code, value), checking the padding and terminator."""
    options = []
    at = 0
    while at < len(body):
        code, size = struct.unpack_from("<HH", body, at)
        at += 4
        if code == 0:
            assert size == 0
            assert at == len(body), "opt_endofopt must be last"
            break
        options.append((code, body[at : at + size]))
        padded = (size + 3) & ~3
        assert body[at + size : at + padded] == b"\0" * (padded - size)
        at += padded
    return options


def split_block(block: bytes) -> tuple[int, bytes]:
    """(type, body) of one block, checking both length fields and alignment."""
    block_type, length = struct.unpack_from("<II", block)
    assert length == len(block)
    assert length % 4 == 0
    assert struct.unpack_from("<I", block, length - 4)[0] == length
    return block_type, block[8:-4]


def test_section_header_block_layout() -> None:
    block_type, body = split_block(section_header_block("flowtrace 0.1", "x86_64", "Linux 6.1"))
    assert block_type == 0x0A0D0D0A
    magic, major, minor, section_length = struct.unpack_from("<IHHq", body)
    assert (magic, major, minor, section_length) == (0x1A2B3C4D, 1, 0, -1)
    assert parse_options(body[16:]) == [(2, b"x86_64"), (3, b"Linux 6.1"), (4, b"flowtrace 0.1")]


def test_interface_description_block_options() -> None:
    mac = bytes.fromhex("0242ac110002")
    block = interface_description_block(
        "c1/eth0", "netns=c1 role=source", 1, 65535, True, "icmp or udp", mac
    )
    block_type, body = split_block(block)
    assert block_type == 1
    assert struct.unpack_from("<HHI", body) == (1, 0, 65535)
    assert parse_options(body[8:]) == [
        (2, b"c1/eth0"),
        (3, b"netns=c1 role=source"),
        (9, b"\x09"),
        (11, b"\x00icmp or udp"),
        (6, mac),
    ]


def test_interface_description_without_ns_resolution_has_no_tsresol() -> None:
    _, body = split_block(interface_description_block("eth0", tsresol_ns=False))
    assert parse_options(body[8:]) == [(2, b"eth0")]


def test_interface_description_rejects_a_bad_mac() -> None:
    with pytest.raises(ValueError, match="6 bytes"):
        interface_description_block("eth0", mac=b"\x01\x02")


@pytest.mark.parametrize("size", range(9))
def test_enhanced_packet_block_pads_every_length(size: int) -> None:
    data = bytes(range(1, size + 1))
    block_type, body = split_block(enhanced_packet_block(3, T0, data, size + 100))
    assert block_type == 6
    assert struct.unpack_from("<IIIII", body) == (3, T0 >> 32, T0 & 0xFFFFFFFF, size, size + 100)
    assert body[20 : 20 + size] == data
    assert body[20 + size :] == b"\0" * (-size % 4), "no options after the padding"


def test_enhanced_packet_block_options() -> None:
    block = enhanced_packet_block(
        0, T0, b"abc", 3, outbound=False, packet_id=2**64 - 1, comment="NAT é", dropcount=7
    )
    _, body = split_block(block)
    assert parse_options(body[24:]) == [
        (2, struct.pack("<I", 1)),
        (5, struct.pack("<Q", 2**64 - 1)),
        (4, struct.pack("<Q", 7)),
        (1, "NAT é".encode()),
    ]


@pytest.mark.parametrize(("outbound", "bits"), [(True, 2), (False, 1)])
def test_direction_only_fast_path(outbound: bool, bits: int) -> None:
    _, body = split_block(enhanced_packet_block(1, T0, b"\xff" * 5, 5, outbound=outbound))
    assert parse_options(body[28:]) == [(2, struct.pack("<I", bits))]


def test_interface_statistics_block() -> None:
    block_type, body = split_block(interface_statistics_block(2, T0, 1000, 5, "final"))
    assert block_type == 5
    assert struct.unpack_from("<III", body) == (2, T0 >> 32, T0 & 0xFFFFFFFF)
    assert parse_options(body[12:]) == [
        (1, b"final"),
        (4, struct.pack("<Q", 1000)),
        (5, struct.pack("<Q", 5)),
    ]


def test_interface_statistics_block_with_unknown_counters_has_no_options() -> None:
    _, body = split_block(interface_statistics_block(0, T0, None, None))
    assert len(body) == 12


def test_name_resolution_block_records() -> None:
    block_type, body = split_block(
        name_resolution_block(
            [("172.17.0.2", ["c1"]), ("fd00::5", ["c2", "web"]), ("10.0.0.1", [])]
        )
    )
    assert block_type == 4
    records = parse_options(body)
    assert records == [
        (1, bytes([172, 17, 0, 2]) + b"c1\0"),
        (2, bytes.fromhex("fd000000000000000000000000000005") + b"c2\0web\0"),
    ]


def test_writer_converts_time_for_microsecond_interfaces() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out)
    micro = writer.add_interface("eth0", tsresol_ns=False)
    writer.write_packet(micro, T0, b"x")
    writer.flush()
    epb = out.getvalue()[-36:]
    high, low = struct.unpack_from("<II", epb, 12)
    assert (high << 32) | low == T0 // 1000


def test_writer_rejects_an_undescribed_interface() -> None:
    writer = PcapngWriter(io.BytesIO())
    writer.add_interface("eth0")
    with pytest.raises(ValueError, match="no interface 1"):
        writer.write_packet(1, T0, b"x")


def test_write_blocks_appends_prebuilt_blocks() -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out)
    writer.add_interface("a")
    batch = b"".join(enhanced_packet_block(0, T0 + n, bytes([n]), 1) for n in range(3))
    writer.write_blocks(batch)
    with open_capture(io.BytesIO(out.getvalue())) as reader:
        assert [(r.time_ns, r.data) for r in reader] == [(T0 + n, bytes([n])) for n in range(3)]


def test_classic_pcap_header_and_records() -> None:
    out = io.BytesIO()
    count = write_classic_pcap(out, [(T0, b"abcd"), (T0 + 1, b"ef", 60)], 276, nanosecond=True)
    raw = out.getvalue()
    assert count == 2
    assert struct.unpack_from("<IHHiIII", raw) == (0xA1B23C4D, 2, 4, 0, 0, 262144, 276)
    assert struct.unpack_from("<IIII", raw, 24) == (T0 // 10**9, T0 % 10**9, 4, 4)
    assert struct.unpack_from("<IIII", raw, 44) == (T0 // 10**9, T0 % 10**9 + 1, 2, 60)
    big = io.BytesIO()
    write_classic_pcap(big, [(T0, b"abcd")], 1, nanosecond=False, big_endian=True)
    assert struct.unpack_from(">IIII", big.getvalue(), 24) == (T0 // 10**9, 123456, 4, 4)


texts = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"))


@settings(max_examples=200, deadline=None)
@given(
    interface=st.integers(0, 2),
    time_ns=st.integers(0, 2**64 - 1),
    data=st.binary(max_size=300),
    extra=st.integers(0, 2000),
    outbound=st.none() | st.booleans(),
    packet_id=st.none() | st.integers(0, 2**64 - 1),
    comment=st.none() | texts,
    dropcount=st.none() | st.integers(0, 2**64 - 1),
)
def test_epb_round_trip(
    interface: int,
    time_ns: int,
    data: bytes,
    extra: int,
    outbound: bool | None,
    packet_id: int | None,
    comment: str | None,
    dropcount: int | None,
) -> None:
    out = io.BytesIO()
    writer = PcapngWriter(out)
    for name in ("a", "b", "c"):
        writer.add_interface(name)
    writer.write_packet(
        interface,
        time_ns,
        data,
        len(data) + extra,
        outbound=outbound,
        packet_id=packet_id,
        comment=comment,
        dropcount=dropcount,
    )
    with open_capture(io.BytesIO(out.getvalue())) as reader:
        (record,) = list(reader)
    assert record.interface == interface
    assert record.time_ns == time_ns
    assert record.data == data
    assert record.orig_len == len(data) + extra
    assert record.outbound is outbound
    assert record.packet_id == packet_id
    assert record.comment == comment
    assert record.dropcount == dropcount


# ---------------------------------------------------------------- tools reading our files

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")


def icmp_frame(seq: int) -> bytes:
    """An Ethernet/IPv4/ICMP echo request, so tshark dissects real packets."""
    payload = b"flowtrace" + bytes(23)
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x1234, seq) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq, 0x4000, 64, 1, 0,
        bytes([172, 17, 0, 2]), bytes([172, 17, 0, 3]),
    )  # fmt: skip
    return bytes.fromhex("0242ac1100030242ac1100020800") + ip + icmp


def write_sample(path: Path) -> None:
    with path.open("wb") as handle:
        writer = PcapngWriter(handle, hardware="test", os_name="Linux")
        source = writer.add_interface("c1/eth0", "netns=c1 container=c1 role=source")
        bridge = writer.add_interface("host/docker0", "netns=host role=bridge", mac=b"\x02" * 6)
        writer.write_names([("172.17.0.2", ["c1"]), ("172.17.0.3", ["c2"])])
        writer.write_packet(source, T0, icmp_frame(1), outbound=True, packet_id=1, comment="hop 1")
        writer.write_packet(
            bridge, T0 + 7_001, icmp_frame(1), outbound=False, packet_id=1, comment="hop 2 ✓"
        )
        writer.write_packet(source, T0 + 1_000_000_000, icmp_frame(2), packet_id=2**64 - 1)
        writer.write_stats(source, T0 + 2_000_000_000, 3, 0)
        writer.write_stats(bridge, T0 + 2_000_000_000, 1, 4)


def run_tool(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_tshark
def test_tshark_reads_every_field(tmp_path: Path) -> None:
    path = tmp_path / "trace.pcapng"
    write_sample(path)
    fields = [
        "frame.interface_name",
        "frame.interface_description",
        "frame.packet_id",
        "frame.comment",
        "frame.packet_flags_direction",
        "frame.time_epoch",
        "icmp.seq",
    ]
    out = run_tool(
        "tshark", "-r", str(path), "-T", "fields", *(x for f in fields for x in ("-e", f))
    )
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows == [
        [
            "c1/eth0",
            "netns=c1 container=c1 role=source",
            "1",
            "hop 1",
            "0x00000002",
            "1700000000.123456789",
            "1",
        ],
        [
            "host/docker0",
            "netns=host role=bridge",
            "1",
            "hop 2 ✓",
            "0x00000001",
            "1700000000.123463790",
            "1",
        ],
        [
            "c1/eth0",
            "netns=c1 container=c1 role=source",
            str(2**64 - 1),
            "",
            "",
            "1700000001.123456789",
            "2",
        ],
    ]


@needs_tshark
def test_tshark_filters_one_packet_journey_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "trace.pcapng"
    write_sample(path)
    journey = run_tool(
        "tshark", "-r", str(path), "-Y", "frame.packet_id == 1", "-T", "fields",
        "-e", "frame.interface_name",
    )  # fmt: skip
    assert journey.split() == ["c1/eth0", "host/docker0"]
    stats = run_tool("tshark", "-r", str(path), "-q", "-z", "io,stat,0")
    (row,) = [line for line in stats.splitlines() if "<>" in line]
    frames, size = (cell.strip() for cell in row.split("|")[2:4])
    assert frames == "3"
    assert size == str(3 * len(icmp_frame(1)))
    hosts = run_tool("tshark", "-r", str(path), "-q", "-z", "hosts")
    assert "172.17.0.2\tc1" in hosts and "172.17.0.3\tc2" in hosts


@pytest.mark.skipif(shutil.which("capinfos") is None, reason="capinfos is not installed")
def test_capinfos_sees_interfaces_resolution_and_stats(tmp_path: Path) -> None:
    path = tmp_path / "trace.pcapng"
    write_sample(path)
    info = run_tool("capinfos", str(path))
    assert "Number of interfaces in file: 2" in info
    assert "Name = c1/eth0" in info and "Name = host/docker0" in info
    assert info.count("Time precision = nanoseconds (9)") == 2
    assert info.count("Number of stat entries = 1") == 2
    assert "Capture application: flowtrace" in info


@pytest.mark.skipif(shutil.which("tcpdump") is None, reason="tcpdump is not installed")
def test_tcpdump_reads_our_pcapng(tmp_path: Path) -> None:
    path = tmp_path / "trace.pcapng"
    write_sample(path)
    out = run_tool("tcpdump", "-r", str(path), "-nn", "--time-stamp-precision=nano", "-tt")
    lines = out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("1700000000.123456789 IP 172.17.0.2 > 172.17.0.3: ICMP echo request")

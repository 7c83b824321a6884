"""The C ring writer against the Python reader: the same pcapng bytes from the same blocks.

The blocks are laid out by hand in anonymous memory as the kernel lays out a TPACKET_V3
ring (block descriptor, tpacket3_hdr, sockaddr_ll, frame), so no socket is needed.
"""

from __future__ import annotations

import mmap
import os
import resource
import signal
import struct

import pytest

from flowtrace.capture import native
from flowtrace.capture.ring import (
    PACKET_OUTGOING,
    TP_STATUS_USER,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    PacketRing,
    RingGeometry,
)
from flowtrace.pcap.pcapng import enhanced_packet_block

BLOCK = 4096
GEOMETRY = RingGeometry(block_size=BLOCK, block_count=4, retire_ms=4)
_DESC = struct.Struct("=IIIIII")  # version, offset_to_priv, status, num_pkts, first, blk_len
_FRAME = struct.Struct("=6IHHIIHH8x")  # tpacket3_hdr, 48 bytes
_SLL = struct.Struct("=HHiHBB8s")  # sockaddr_ll, 20 bytes
FIRST = 48
MAC_OFFSET = 80  # where the kernel puts the frame: after both headers, aligned

writer = native.ringpcap()
needs_writer = pytest.mark.skipif(writer is None, reason=native.why_not() or "")


def frame_bytes(n: int, size: int) -> bytes:
    return bytes((n * 7 + i) % 256 for i in range(size))


def lay_block(
    ring: mmap.mmap, block: int, frames: list[tuple[bytes, int, bool, int | None]], sec: int
) -> None:
    """Write a retired block: (data, wire length, outbound, vlan tci or None) per frame."""
    base = block * BLOCK
    pos = base + FIRST
    for i, (data, wire, outbound, tci) in enumerate(frames):
        step = (MAC_OFFSET + len(data) + 15) & ~15
        last = i == len(frames) - 1
        status = 0
        tpid = 0
        if tci is not None:
            status = TP_STATUS_VLAN_VALID | (TP_STATUS_VLAN_TPID_VALID if i % 2 else 0)
            tpid = 0x88A8 if i % 2 else 0
        header = _FRAME.pack(
            0 if last else step,
            sec,
            1000 * i + 7,
            len(data),
            wire,
            status,
            MAC_OFFSET,
            MAC_OFFSET - 14,
            0,
            tci or 0,
            tpid,
            0,
        )
        ring[pos : pos + 48] = header
        sll = _SLL.pack(17, 0x0800, 3, 1, PACKET_OUTGOING if outbound else 0, 6, b"")
        ring[pos + 48 : pos + 68] = sll
        ring[pos + MAC_OFFSET : pos + MAC_OFFSET + len(data)] = data
        pos += step
    ring[base : base + _DESC.size] = _DESC.pack(1, 0, TP_STATUS_USER, len(frames), FIRST, BLOCK)


def make_ring(ring_map: mmap.mmap) -> PacketRing:
    ring = PacketRing.__new__(PacketRing)
    ring.geometry = GEOMETRY
    ring._map = ring_map
    ring._next_block = 0
    ring._closed = True
    return ring


def two_ready_blocks() -> mmap.mmap:
    ring_map = mmap.mmap(-1, GEOMETRY.size)
    lay_block(
        ring_map,
        0,
        [
            (frame_bytes(1, 60), 60, True, None),
            (frame_bytes(2, 98), 98, False, 0x0064),
            (frame_bytes(3, 61), 1514, False, 0x2005),  # truncated at the snap length
            (frame_bytes(4, 42), 42, True, None),
        ],
        sec=1_700_000_000,
    )
    lay_block(ring_map, 1, [(frame_bytes(5, 1514), 1514, False, None)], sec=1_700_000_001)
    return ring_map


def python_bytes(ring: PacketRing, interface_id: int) -> tuple[bytes, int, int]:
    blob, frames, wire = b"", 0, 0
    while (block := ring.read_block()) is not None:
        for time_ns, data, orig_len, outbound in block:
            blob += enhanced_packet_block(interface_id, time_ns, data, orig_len, outbound)
            frames += 1
            wire += orig_len
    return blob, frames, wire


@needs_writer
def test_the_c_writer_writes_what_the_python_reader_and_epb_builder_write() -> None:
    reference, py_frames, py_wire = python_bytes(make_ring(two_ready_blocks()), 3)
    ring_map = two_ready_blocks()
    ring = make_ring(ring_map)
    read_fd, write_fd = os.pipe()
    try:
        assert writer is not None
        frames, wire, error, whole = ring.drain_to(writer, 3, write_fd)
        os.close(write_fd)
        written = b""
        while chunk := os.read(read_fd, 1 << 16):
            written += chunk
    finally:
        os.close(read_fd)
    assert (frames, wire, error) == (py_frames, py_wire, 0) == (5, 60 + 102 + 1518 + 42 + 1514, 0)
    assert whole == 5  # every EPB landed whole
    assert written == reference
    # both blocks went back to the kernel, the next read starts at block 2
    assert ring._next_block == 2
    assert ring_map[8:12] == ring_map[BLOCK + 8 : BLOCK + 12] == b"\0\0\0\0"


@needs_writer
def test_nothing_ready_writes_nothing_and_fd_minus_one_only_gives_blocks_back() -> None:
    assert writer is not None
    empty = make_ring(mmap.mmap(-1, GEOMETRY.size))
    assert empty.drain_to(writer, 0, -1) == (0, 0, 0, 0)
    assert empty._next_block == 0
    ring = make_ring(two_ready_blocks())
    assert ring.drain_to(writer, 0, -1)[:2] == (5, 60 + 102 + 1518 + 42 + 1514)
    assert ring._next_block == 2


@needs_writer
def test_a_failed_write_is_reported_as_its_errno() -> None:
    assert writer is not None
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # EPIPE on write (SIGPIPE is ignored by Python)
    try:
        frames, _, error, whole = make_ring(two_ready_blocks()).drain_to(writer, 0, write_fd)
    finally:
        os.close(write_fd)
    assert frames == 5 and error == 32 and whole == 0  # EPIPE: nothing landed


@needs_writer
def test_a_write_that_fills_the_file_limit_is_cut_back_to_a_whole_block(
    tmp_path: pytest.TempPathFactory,
) -> None:
    """A full disk in small: RLIMIT_FSIZE makes the write stop mid-EPB (then EFBIG)."""
    assert writer is not None
    path = os.path.join(str(tmp_path), "set.pcapng")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1800, hard))
        frames, _, error, whole = make_ring(two_ready_blocks()).drain_to(writer, 0, fd)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
        os.close(fd)
    with open(path, "rb") as written:
        data = written.read()
    at = blocks = 0
    while at < len(data):  # the file is whole EPBs, nothing torn at its end
        (length,) = struct.unpack_from("<I", data, at + 4)
        assert at + length <= len(data)
        at, blocks = at + length, blocks + 1
    assert frames == 5 and error == 27  # EFBIG
    assert 0 < len(data) <= 1800 and blocks == whole < 5  # what landed, counted


def test_flowtrace_native_0_chooses_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWTRACE_NATIVE", "0")
    assert native.ringpcap() is None
    assert native.why_not() == "FLOWTRACE_NATIVE=0 chose the pure-Python capture path"


def test_the_python_path_is_said_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOWTRACE_NATIVE", "0")
    monkeypatch.setattr(native, "_said", False)
    native.say_once_if_python()
    native.say_once_if_python()
    err = capsys.readouterr().err
    assert err == "flowtrace: note: FLOWTRACE_NATIVE=0 chose the pure-Python capture path\n"

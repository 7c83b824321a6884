"""One AF_PACKET TPACKET_V3 receive ring on one interface, opened inside its namespace.

Why a ring: per-packet recv() tops out near 0.4 Mpps in Python, while the kernel
fills a TPACKET_V3 ring block by block with no system call per frame.  We read a
whole block at a time (one list of frames per block), hand it back to the kernel,
and leave everything else (pcapng, counters, which process reads which ring) to
the capture session.

The socket is opened with protocol 0, so it queues nothing until bind(); the BPF
program is attached before bind, so no unfiltered frame ever enters the ring.  A
bridge needs promiscuous mode to hand forwarded frames to a packet socket: we take
it with a PACKET_MR_PROMISC membership, which the kernel drops when the socket
closes, so nothing is left changed on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import socket
import struct
from dataclasses import dataclass
from enum import Enum
from types import ModuleType

from flowtrace.capture.bpf import DROP_ALL, attach_filter
from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError, NotFoundError, NotRootError
from flowtrace.model import Point

PACKET_TIMESTAMP = 17
SOF_TIMESTAMPING_SOFTWARE = 1 << 4
SO_TIMESTAMPNS = 35
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
PACKET_MR_PROMISC = 1
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
ETH_P_8021Q = 0x8100

MIB = 1 << 20
#: Bulk capture: big blocks (few writes), enough ring to ride out a busy second.
CAPTURE_RING_MB = 32
CAPTURE_RETIRE_MS = 60
#: Tracing: a few MB and blocks that retire quickly, so probes show up at once.
TRACE_RING_MB = 2
TRACE_RETIRE_MS = 4
#: 16 KiB blocks: 2 MB hold 128 of them, so the tracer may stall 128 x retire_ms.
TRACE_BLOCK_SIZE = 16 * 1024

# struct tpacket_req3: block size, block count, frame size, frame count,
# retire_blk_tov (ms), sizeof_priv, feature_req_word.
_REQ3 = struct.Struct("=7I")
# struct tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1 whose
# first fields are block_status, num_pkts, offset_to_first_pkt.
_BLOCK_STATUS_OFFSET = 8
_BLOCK_HEADER = struct.Struct("=III")
_STATUS = struct.Struct("=I")
# struct tpacket3_hdr (48 bytes) followed by struct sockaddr_ll:
# next_offset, sec, nsec, snaplen, len, status | mac, (net, rxhash) | vlan_tci,
# vlan_tpid | (padding, sll_family, sll_protocol, sll_ifindex, sll_hatype) | sll_pkttype.
_FRAME_HEADER = struct.Struct("=6IH6xIH20xB")
_STATS_V3 = struct.Struct("=III")  # packets (drops included), drops, freeze_q_cnt
_PACKET_MREQ = struct.Struct("=iHH8s")
_VLAN_TAG = struct.Struct("!HH")

_libc = ctypes.CDLL(None, use_errno=True)

#: One captured frame as the session receives it: (time_ns, data, orig_len, outbound).
RingFrame = tuple[int, bytes, int, bool]


@dataclass(frozen=True)
class RingGeometry:
    """How a ring is cut up: the kernel hands over whole blocks."""

    block_size: int
    block_count: int
    retire_ms: int
    frame_size: int = 2048

    @classmethod
    def for_size(
        cls, ring_mb: float, retire_ms: int, block_size: int | None = None
    ) -> RingGeometry:
        """Many modest blocks rather than a few big ones.

        The kernel retires a block when it is full *or* retire_ms after it was
        opened, so at low rates every block holds only retire_ms of traffic: the
        number of blocks times retire_ms is how long a reader may stall before the
        kernel drops.  256 KiB blocks (128 in a 32 MB ring: 7.7 s at 60 ms) for
        bulk rings, 128 KiB for small ones; either holds a 64 KiB GSO frame whole.
        The tracer asks for small blocks: its probes are small, and many blocks
        let it stall longer while allocating (and freeing) less.
        """
        if ring_mb <= 0 or retire_ms <= 0:
            raise ValueError("ring size and retire timeout must be positive")
        ring_bytes = int(ring_mb * MIB)
        if block_size is None:
            block_size = MIB // 4 if ring_bytes >= 16 * MIB else MIB // 8
        return cls(block_size, max(2, ring_bytes // block_size), retire_ms)

    @property
    def size(self) -> int:
        return self.block_size * self.block_count


class RingProfile(Enum):
    """What a ring is for, which sets its size, block size and retire timeout.

    Callers name the purpose, not numbers, so the tuning lives here in one place.
    """

    #: `flowtrace capture`: big blocks (few writes), enough ring to ride out a busy second.
    BULK = (CAPTURE_RING_MB, CAPTURE_RETIRE_MS, None)
    #: A trace: small blocks that retire quickly, so probes show up at once.
    TRACE = (TRACE_RING_MB, TRACE_RETIRE_MS, TRACE_BLOCK_SIZE)

    def __init__(self, ring_mb: float, retire_ms: int, block_size: int | None) -> None:
        self.ring_mb = ring_mb
        self.retire_ms = retire_ms
        self.block_size = block_size

    def geometry(self, ring_mb: float | None = None, retire_ms: int | None = None) -> RingGeometry:
        """The profile's geometry; `ring_mb` or `retire_ms` override its own values."""
        return RingGeometry.for_size(
            self.ring_mb if ring_mb is None else ring_mb,
            self.retire_ms if retire_ms is None else retire_ms,
            self.block_size,
        )


def _setsockopt_unlocked(sock: socket.socket, level: int, option: int, value: bytes) -> None:
    """setsockopt(2) without holding the GIL, which socket.setsockopt keeps.

    Setting up a ring waits for an RCU grace period in the kernel (5-15 ms here); with
    the GIL held, rings opened side by side in threads would open one after another.
    ctypes lets the GIL go for the call.
    """
    if _libc.setsockopt(sock.fileno(), level, option, value, len(value)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class PacketRing:
    """A bound, filtered TPACKET_V3 receive ring on one interface.

    Reading is single-consumer: after a fork exactly one process may call
    read_block()/read_stats() on a given ring.
    """

    def __init__(self, sock: socket.socket, point: Point, geometry: RingGeometry) -> None:
        self.point = point
        self.geometry = geometry
        self._sock = sock
        self._map = mmap.mmap(
            sock.fileno(), geometry.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self._next_block = 0
        self._closed = False
        self._ifindex = 0

    @classmethod
    def open(
        cls, point: Point, program: bytes = b"", geometry: RingGeometry | None = None
    ) -> PacketRing:
        """Open, filter, size, map and bind a ring on `point`, inside its namespace.

        When this returns, every frame crossing the interface that passes the
        filter is queued in the ring.
        """
        geometry = geometry or RingProfile.BULK.geometry()
        try:
            return run_in_netns(point.netns.path, cls._open_here, point, program, geometry)
        except PermissionError:
            raise NotRootError(
                f"cannot open a packet socket on {point.id}: run flowtrace as root"
            ) from None

    @classmethod
    def _open_here(cls, point: Point, program: bytes, geometry: RingGeometry) -> PacketRing:
        try:
            ifindex = socket.if_nametoindex(point.ifname)
        except OSError:
            raise NotFoundError(
                f"no interface {point.ifname} in namespace {point.netns.label} ({point.id})"
            ) from None
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        ring: PacketRing | None = None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            # Stamp each frame with the time the kernel stamped its skb (when it arrived on
            # a device, or when it was handed to a device to send), not the time it reached
            # this socket: a bridge hands its promiscuous copy up only after forwarding the
            # frame, so delivery times would put docker0 after the next veth.
            # SO_TIMESTAMPNS turns on the kernel's receive stamping for every skb.
            sock.setsockopt(SOL_PACKET, PACKET_TIMESTAMP, SOF_TIMESTAMPING_SOFTWARE)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            attach_filter(sock, program)
            frames_per_block = geometry.block_size // geometry.frame_size
            request = _REQ3.pack(
                geometry.block_size,
                geometry.block_count,
                geometry.frame_size,
                frames_per_block * geometry.block_count,
                geometry.retire_ms,
                0,
                0,
            )
            try:
                _setsockopt_unlocked(sock, SOL_PACKET, PACKET_RX_RING, request)
            except OSError as exc:
                raise FlowtraceError(
                    f"cannot allocate a {geometry.size // MIB} MB capture ring on {point.id}: "
                    f"{exc.strerror}"
                ) from None
            ring = cls(sock, point, geometry)
            ring._ifindex = ifindex
            try:
                sock.bind((point.ifname, ETH_P_ALL))
            except OSError as exc:
                if exc.errno in (errno.ENODEV, errno.ENXIO):
                    raise NotFoundError(f"interface {point.id} went away") from None
                raise
            if point.promisc:
                membership = _PACKET_MREQ.pack(ifindex, PACKET_MR_PROMISC, 0, b"")
                sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, membership)
            return ring
        except BaseException:
            if ring is not None:
                ring.close()
            else:
                sock.close()
            raise

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_block(self) -> list[RingFrame] | None:
        """Copy out the frames of the next block the kernel has retired, or None.

        The block goes back to the kernel before this returns.
        """
        ring = self._map
        base = self._next_block * self.geometry.block_size
        status, count, first = _BLOCK_HEADER.unpack_from(ring, base + _BLOCK_STATUS_OFFSET)
        if not status & TP_STATUS_USER:
            return None
        frames: list[RingFrame] = []
        # The loop runs once per packet, up to a million times a second: locals only.
        append = frames.append
        unpack = _FRAME_HEADER.unpack_from
        vlan_valid, outgoing = TP_STATUS_VLAN_VALID, PACKET_OUTGOING
        position = base + first
        for _ in range(count):
            step, sec, nsec, caplen, length, flags, mac, tci, tpid, pkttype = unpack(ring, position)
            start = position + mac
            data = ring[start : start + caplen]
            if flags & vlan_valid:
                # The kernel strips the 802.1Q tag into the header: put it back.
                tag_type = tpid if flags & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q
                data = data[:12] + _VLAN_TAG.pack(tag_type, tci) + data[12:]
                length += 4
            append((sec * 1_000_000_000 + nsec, data, length, pkttype == outgoing))
            position += step
        _STATUS.pack_into(ring, base + _BLOCK_STATUS_OFFSET, TP_STATUS_KERNEL)
        self._next_block = (self._next_block + 1) % self.geometry.block_count
        return frames

    def drain_to(self, writer: ModuleType, interface_id: int, fd: int) -> tuple[int, int, int, int]:
        """Every retired block as pcapng EPBs appended to fd, in C (capture.native).

        What read_block() and pcapng.enhanced_packet_block() do frame by frame, with
        no Python per frame; fd < 0 gives the blocks back unwritten.  Returns (frames,
        bytes on the wire, errno of a failed write or 0, frames whole in the file: a
        failed write is cut back to its last whole block).
        """
        geometry = self.geometry
        self._next_block, _, frames, wire_bytes, error, written = writer.drain(
            self._map,
            geometry.block_size,
            geometry.block_count,
            self._next_block,
            interface_id,
            fd,
        )
        return frames, wire_bytes, error, written

    def pending(self) -> bool:
        """True while the kernel holds frames we have not read (ready or still filling)."""
        base = self._next_block * self.geometry.block_size
        status, count, _ = _BLOCK_HEADER.unpack_from(self._map, base + _BLOCK_STATUS_OFFSET)
        return bool(status & TP_STATUS_USER) or count > 0

    def shut_intake(self) -> None:
        """Let no further frame in (a drop-all filter, swapped in atomically).

        Frames already queued stay readable, and the kernel's counters stop with
        the intake, so after a drain `received == captured + dropped` exactly.
        """
        attach_filter(self._sock, DROP_ALL)

    def read_stats(self) -> tuple[int, int]:
        """(received, dropped) since the last call: the kernel resets them on read."""
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS_V3.size)
        received, dropped, _ = _STATS_V3.unpack(raw)
        return received, dropped

    def take_error(self) -> int:
        """The socket's pending error (ENETDOWN when the link went down or away), or 0."""
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def interface_gone(self) -> bool:
        """True once the interface was deleted (the kernel unbinds the socket for good).

        A link that only went down keeps its binding and delivers again when it
        comes back up; a deleted one leaves the socket bound to ifindex -1, so
        getsockname() can no longer name it.
        """
        try:
            name = self._sock.getsockname()[0]
        except OSError:
            return True
        return name == ""

    def drop_promisc(self) -> None:
        """Give the bridge's promiscuity back now (closing does it too, but later)."""
        if self.point.promisc and not self._closed:
            membership = _PACKET_MREQ.pack(self._ifindex, PACKET_MR_PROMISC, 0, b"")
            with contextlib.suppress(OSError):  # gone with its interface
                self._sock.setsockopt(SOL_PACKET, PACKET_DROP_MEMBERSHIP, membership)

    def close(self) -> None:
        """Unmap and close; the kernel drops the promisc membership with the socket."""
        if self._closed:
            return
        self._closed = True
        self._map.close()
        self._sock.close()

    def __repr__(self) -> str:
        return (
            f"PacketRing({self.point.id!r}, {self.geometry.block_count}x"
            f"{self.geometry.block_size // 1024}KiB, fd={self._sock.fileno()}, pid={os.getpid()})"
        )

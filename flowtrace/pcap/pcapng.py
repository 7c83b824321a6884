"""pcapng block builders and a small writer (little-endian), plus a classic pcap writer.

Blocks are free functions returning complete ``bytes`` because the capture engine
runs several worker processes that each append whole blocks to one pcapng opened
with O_APPEND, after the parent wrote the Section Header Block and every Interface
Description Block.  A write of complete blocks lands whole at the end of the file,
so the file is a valid pcapng at every moment.

``enhanced_packet_block`` is on the capture hot path (up to ~1 M calls a second):
it packs the whole block with one cached ``struct.Struct`` per captured length,
so a call allocates nothing but its result.

Block layout and option codes follow draft-ietf-opsawg-pcapng.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from ipaddress import ip_address
from typing import BinaryIO

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276

BLOCK_SHB = 0x0A0D0D0A
BLOCK_IDB = 0x00000001
BLOCK_NRB = 0x00000004
BLOCK_ISB = 0x00000005
BLOCK_EPB = 0x00000006
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_HARDWARE = 2
SHB_OS = 3
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_MACADDR = 6
IF_TSRESOL = 9
IF_FILTER = 11
EPB_FLAGS = 2
EPB_DROPCOUNT = 4
EPB_PACKETID = 5
ISB_IFRECV = 4
ISB_IFDROP = 5
NRB_RECORD_END = 0
NRB_RECORD_IPV4 = 1
NRB_RECORD_IPV6 = 2

#: epb_flags direction bits (bits 0-1).
DIRECTION_INBOUND = 1
DIRECTION_OUTBOUND = 2

DEFAULT_SNAPLEN = 262144

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_OPT_HEADER = struct.Struct("<HH")
_BLOCK_HEADER = struct.Struct("<II")
_SHB_BODY = struct.Struct("<IHHq")
_IDB_BODY = struct.Struct("<HHI")
_ISB_BODY = struct.Struct("<III")
_END_OF_OPTIONS = _OPT_HEADER.pack(OPT_ENDOFOPT, 0)
_PADDING = (b"", b"\0\0\0", b"\0\0", b"\0")  # indexed by length % 4

_EPB_HEAD = struct.Struct("<7I")

#: Cached EPB layouts, by captured length: one Struct packs a whole block at once.
#: Plain; with epb_flags; with epb_flags and epb_packetid (what traces write).
_EPB_PLAIN: dict[int, struct.Struct] = {}
_EPB_FLAGS: dict[int, struct.Struct] = {}
_EPB_FLAGS_ID: dict[int, struct.Struct] = {}
_EPB_CACHE_LIMIT = 4096


def _option(code: int, value: bytes) -> bytes:
    return _OPT_HEADER.pack(code, len(value)) + value + _PADDING[len(value) % 4]


def _text_option(code: int, text: str) -> bytes:
    return _option(code, text.encode("utf-8"))


def _options(parts: list[bytes]) -> bytes:
    """Join options and terminate the list; an empty list stays empty."""
    if not parts:
        return b""
    parts.append(_END_OF_OPTIONS)
    return b"".join(parts)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return _BLOCK_HEADER.pack(block_type, total) + body + _U32.pack(total)


def section_header_block(
    application: str, hardware: str | None = None, os_name: str | None = None
) -> bytes:
    """Start a section; its length is left unknown (-1) so blocks can be appended freely."""
    parts = []
    if hardware:
        parts.append(_text_option(SHB_HARDWARE, hardware))
    if os_name:
        parts.append(_text_option(SHB_OS, os_name))
    if application:
        parts.append(_text_option(SHB_USERAPPL, application))
    body = _SHB_BODY.pack(BYTE_ORDER_MAGIC, 1, 0, -1) + _options(parts)
    return _block(BLOCK_SHB, body)


def interface_description_block(
    name: str,
    description: str = "",
    linktype: int = LINKTYPE_ETHERNET,
    snaplen: int = DEFAULT_SNAPLEN,
    tsresol_ns: bool = True,
    filter_expr: str | None = None,
    mac: bytes | None = None,
) -> bytes:
    """Describe one observation point; Wireshark shows if_name and if_description per frame."""
    parts = []
    if name:
        parts.append(_text_option(IF_NAME, name))
    if description:
        parts.append(_text_option(IF_DESCRIPTION, description))
    if tsresol_ns:
        parts.append(_option(IF_TSRESOL, b"\x09"))
    if filter_expr:
        # The first byte says what follows: 0 is a libpcap filter string.
        parts.append(_option(IF_FILTER, b"\x00" + filter_expr.encode("utf-8")))
    if mac is not None:
        if len(mac) != 6:
            raise ValueError(f"if_MACaddr needs 6 bytes, got {len(mac)}")
        parts.append(_option(IF_MACADDR, bytes(mac)))
    body = _IDB_BODY.pack(linktype, 0, snaplen) + _options(parts)
    return _block(BLOCK_IDB, body)


def enhanced_packet_block(
    interface_id: int,
    time_ns: int,
    data: bytes,
    orig_len: int,
    outbound: bool | None = None,
    packet_id: int | None = None,
    comment: str | None = None,
    dropcount: int | None = None,
) -> bytes:
    """One captured frame.

    ``time_ns`` is written as-is, in the units of the interface's if_tsresol:
    nanoseconds for interfaces described with ``tsresol_ns=True`` (the default).
    """
    caplen = len(data)
    if comment is None and dropcount is None:
        if packet_id is None:
            if outbound is None:
                layout = _EPB_PLAIN.get(caplen) or _epb_layout(_EPB_PLAIN, caplen, "")
                total = layout.size
                return layout.pack(
                    BLOCK_EPB, total, interface_id, time_ns >> 32, time_ns & 0xFFFFFFFF,
                    caplen, orig_len, data, total,
                )  # fmt: skip
            layout = _EPB_FLAGS.get(caplen) or _epb_layout(_EPB_FLAGS, caplen, "HHIHH")
            total = layout.size
            return layout.pack(
                BLOCK_EPB, total, interface_id, time_ns >> 32, time_ns & 0xFFFFFFFF,
                caplen, orig_len, data,
                EPB_FLAGS, 4, 2 if outbound else 1, OPT_ENDOFOPT, 0, total,
            )  # fmt: skip
        if outbound is not None:
            # What a trace writes for every packet: the direction and the packet id.
            layout = _EPB_FLAGS_ID.get(caplen) or _epb_layout(_EPB_FLAGS_ID, caplen, "HHIHHQHH")
            total = layout.size
            return layout.pack(
                BLOCK_EPB, total, interface_id, time_ns >> 32, time_ns & 0xFFFFFFFF,
                caplen, orig_len, data,
                EPB_FLAGS, 4, 2 if outbound else 1, EPB_PACKETID, 8, packet_id,
                OPT_ENDOFOPT, 0, total,
            )  # fmt: skip
    parts = []
    if outbound is not None:
        flags = DIRECTION_OUTBOUND if outbound else DIRECTION_INBOUND
        parts.append(_OPT_HEADER.pack(EPB_FLAGS, 4) + _U32.pack(flags))
    if packet_id is not None:
        parts.append(_OPT_HEADER.pack(EPB_PACKETID, 8) + _U64.pack(packet_id))
    if dropcount is not None:
        parts.append(_OPT_HEADER.pack(EPB_DROPCOUNT, 8) + _U64.pack(dropcount))
    if comment is not None:
        parts.append(_text_option(OPT_COMMENT, comment))
    options = _options(parts)
    head = _EPB_HEAD.pack(
        BLOCK_EPB, 32 + caplen + -caplen % 4 + len(options), interface_id,
        time_ns >> 32, time_ns & 0xFFFFFFFF, caplen, orig_len,
    )  # fmt: skip
    return b"".join((head, data, _PADDING[caplen % 4], options, head[4:8]))


def _epb_layout(cache: dict[int, struct.Struct], caplen: int, options: str) -> struct.Struct:
    """Build and cache the Struct that packs a whole EPB with this captured length."""
    if len(cache) >= _EPB_CACHE_LIMIT:
        cache.clear()
    layout = cache[caplen] = struct.Struct(f"<7I{caplen}s{-caplen % 4}x{options}I")
    return layout


def interface_statistics_block(
    interface_id: int,
    time_ns: int,
    received: int | None,
    dropped: int | None,
    comment: str | None = None,
) -> bytes:
    """Kernel counters of one interface at time_ns (isb_ifrecv, isb_ifdrop)."""
    parts = []
    if comment:
        parts.append(_text_option(OPT_COMMENT, comment))
    if received is not None:
        parts.append(_OPT_HEADER.pack(ISB_IFRECV, 8) + _U64.pack(received))
    if dropped is not None:
        parts.append(_OPT_HEADER.pack(ISB_IFDROP, 8) + _U64.pack(dropped))
    body = _ISB_BODY.pack(interface_id, time_ns >> 32, time_ns & 0xFFFFFFFF) + _options(parts)
    return _block(BLOCK_ISB, body)


def name_resolution_block(entries: Iterable[tuple[str, Sequence[str]]]) -> bytes:
    """Names for addresses (container names), shown by Wireshark with name resolution on.

    Each entry is an IPv4 or IPv6 address and one or more names for it.
    """
    records = []
    for address, names in entries:
        if not names:
            continue
        packed = ip_address(address).packed
        record_type = NRB_RECORD_IPV4 if len(packed) == 4 else NRB_RECORD_IPV6
        value = packed + b"".join(name.encode("utf-8") + b"\0" for name in names)
        records.append(_option(record_type, value))
    records.append(_OPT_HEADER.pack(NRB_RECORD_END, 0))
    return _block(BLOCK_NRB, b"".join(records))


class PcapngWriter:
    """Write one pcapng section to a binary file object the caller opened and closes."""

    def __init__(
        self,
        fileobj: BinaryIO,
        application: str = "flowtrace",
        *,
        hardware: str | None = None,
        os_name: str | None = None,
    ) -> None:
        self._file = fileobj
        self._file.write(section_header_block(application, hardware, os_name))
        #: Per interface: True when its timestamps are in nanoseconds, else microseconds.
        self._nanosecond: list[bool] = []

    @property
    def interface_count(self) -> int:
        return len(self._nanosecond)

    def add_interface(
        self,
        name: str,
        description: str = "",
        linktype: int = LINKTYPE_ETHERNET,
        *,
        snaplen: int = DEFAULT_SNAPLEN,
        tsresol_ns: bool = True,
        filter_expr: str | None = None,
        mac: bytes | None = None,
    ) -> int:
        """Describe an interface and return its id for write_packet."""
        block = interface_description_block(
            name, description, linktype, snaplen, tsresol_ns, filter_expr, mac
        )
        self._file.write(block)
        self._nanosecond.append(tsresol_ns)
        return len(self._nanosecond) - 1

    def write_packet(
        self,
        interface_id: int,
        time_ns: int,
        data: bytes,
        orig_len: int | None = None,
        *,
        outbound: bool | None = None,
        packet_id: int | None = None,
        comment: str | None = None,
        dropcount: int | None = None,
    ) -> None:
        timestamp = self._timestamp(interface_id, time_ns)
        self._file.write(
            enhanced_packet_block(
                interface_id,
                timestamp,
                data,
                len(data) if orig_len is None else orig_len,
                outbound,
                packet_id,
                comment,
                dropcount,
            )
        )

    def write_stats(
        self,
        interface_id: int,
        time_ns: int,
        received: int | None,
        dropped: int | None,
        comment: str | None = None,
    ) -> None:
        timestamp = self._timestamp(interface_id, time_ns)
        self._file.write(
            interface_statistics_block(interface_id, timestamp, received, dropped, comment)
        )

    def write_names(self, entries: Iterable[tuple[str, Sequence[str]]]) -> None:
        self._file.write(name_resolution_block(entries))

    def write_blocks(self, raw: bytes) -> None:
        """Append blocks built elsewhere (the capture engine builds them in batches)."""
        self._file.write(raw)

    def flush(self) -> None:
        self._file.flush()

    def _timestamp(self, interface_id: int, time_ns: int) -> int:
        if not 0 <= interface_id < len(self._nanosecond):
            raise ValueError(f"no interface {interface_id}: add_interface() first")
        return time_ns if self._nanosecond[interface_id] else time_ns // 1000


def write_classic_pcap(
    fileobj: BinaryIO,
    records: Iterable[tuple[int, bytes] | tuple[int, bytes, int]],
    linktype: int,
    nanosecond: bool = True,
    *,
    big_endian: bool = False,
    snaplen: int = DEFAULT_SNAPLEN,
) -> int:
    """Write a classic libpcap file of (time_ns, data[, orig_len]) records; return the count.

    flowtrace itself writes pcapng; this exists to make the files tcpdump and
    other tools write, for tests and interoperability.
    """
    order = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    header = struct.Struct(order + "IHHiIII")
    record_header = struct.Struct(order + "IIII")
    fileobj.write(header.pack(magic, 2, 4, 0, 0, snaplen, linktype))
    divisor = 1 if nanosecond else 1000
    count = 0
    for record in records:
        time_ns, data = record[0], record[1]
        orig_len = record[2] if len(record) == 3 else len(data)
        seconds, fraction = divmod(time_ns, 1_000_000_000)
        fileobj.write(record_header.pack(seconds, fraction // divisor, len(data), orig_len))
        fileobj.write(data)
        count += 1
    return count

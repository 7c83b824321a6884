"""The pcapng block parser: sections, interfaces, statistics, names and packet blocks.

Blocks are parsed out of large chunks with ``struct.unpack_from``.  The packet loop
(``PcapngSource.records``) is the reader's hot path: it keeps everything in local
names and recognises the option layouts flowtrace writes with one unpack each; any
other layout goes through the general option walk.  Where the C scanner is built
(_pcapscan.c) it takes the runs of usual EPBs and this loop every block it leaves.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import BinaryIO

from flowtrace import native
from flowtrace.errors import CaptureFormatError
from flowtrace.pcap.records import (
    LINKTYPE_DIRECTION_OFFSET,
    NANOSECONDS,
    PACKET_OUTGOING,
    Catalog,
    Interface,
    InterfaceStats,
    Record,
    new_record,
)
from flowtrace.pcap.source import EMPTY_RUN_LIMIT, MAX_BLOCK_SIZE, Source

PCAPNG_SHB = 0x0A0D0D0A
#: The C run of usual EPBs (_pcapscan.c), or None: the loop below does every block.
_SCAN: Callable[..., tuple[list[Record], int]] | None = getattr(
    native.load("flowtrace.pcap._pcapscan"), "scan", None
)
#: Records the C scanner hands over at a time: each holds a copy of its frame, so the
#: run is kept short for memory to stay at the read chunk's size.
_SCAN_RUN = 256
_BYTE_ORDER_MAGIC = 0x1A2B3C4D


class _Layouts:
    """The structs of one byte order."""

    def __init__(self, order: str) -> None:
        self.header = struct.Struct(order + "II")
        self.u32 = struct.Struct(order + "I")
        self.u64 = struct.Struct(order + "Q")
        self.i64 = struct.Struct(order + "q")
        self.option = struct.Struct(order + "HH")
        self.shb = struct.Struct(order + "IHH")
        self.idb = struct.Struct(order + "HHI")
        self.epb_head = struct.Struct(order + "IIIIIII")  # block header + EPB fields
        # The options flowtrace writes on every traced packet: epb_flags then epb_packetid.
        flags_option = struct.pack(order + "HH", 2, 4)
        (packet_id_option,) = struct.unpack(order + "I", struct.pack(order + "HH", 5, 8))
        flags_id_end = struct.Struct(order + "IIQI")
        # What a capture writes: epb_flags, end of options; read with the block's trailer.
        (flags_option_word,) = struct.unpack(order + "I", flags_option)
        flags_end_trailer = struct.Struct(order + "IIII")
        #: What the packet loop binds to local names.
        self.hot = (
            self.epb_head.unpack_from,
            self.u32.unpack_from,
            flags_option,
            packet_id_option,
            flags_id_end.unpack_from,
            flags_option_word,
            flags_end_trailer.unpack_from,
        )
        self.pb = struct.Struct(order + "HHIIII")
        self.isb = struct.Struct(order + "III")


_LITTLE = _Layouts("<")
_BIG = _Layouts(">")

#: Per section-local interface id: (global index, plain (ns with no offset), multiplier,
#: divisor, offset ns, direction byte offset or -1, snaplen).
_Conversion = tuple[int, bool, int, int, int, int, int]


class PcapngSource(Source):
    """A pcapng file: each section has its own byte order and numbers its interfaces from 0."""

    def __init__(
        self,
        fileobj: BinaryIO,
        name: str,
        owned: bool,
        catalog: Catalog,
        head: bytes,
        chunk_size: int,
    ) -> None:
        super().__init__(fileobj, name, owned, head, chunk_size)
        self.catalog = catalog
        self.layouts = _LITTLE
        self.section = -1
        self.conversions: list[_Conversion] = []
        #: Per section-local id: the global index when timestamps need no conversion
        #: and the link header no reading (the fast path), else -1.
        self.plain_indexes: list[int] = []
        # Read the section header and the interfaces described before the first packet.
        self.buf, self.pos = self.fill(self.buf, 0, 12)
        if len(self.buf) >= 12 and not self._starts_section(self.buf, 0):
            raise CaptureFormatError(f"{name}: not a pcap or pcapng file")
        # Shorter than a block header: a writer killed at once; reading finds it truncated.
        self._read_header_blocks()

    def _starts_section(self, buf: bytes, pos: int) -> bool:
        if len(buf) - pos < 12:
            return False
        (magic,) = _LITTLE.u32.unpack_from(buf, pos + 8)
        return magic in (_BYTE_ORDER_MAGIC, 0x4D3C2B1A)

    def _read_header_blocks(self) -> None:
        """Handle blocks up to the first packet block so interfaces are known early."""
        buf, pos = self.buf, self.pos
        others = 0  # blocks in a row that describe nothing (unknown types)
        while True:
            if len(buf) - pos < 12:
                buf, pos = self.fill(buf, pos, 12)
                if len(buf) - pos < 12:
                    break
            block_type, length = self.layouts.header.unpack_from(buf, pos)
            if block_type in (2, 3, 6):
                break
            others = others + 1 if block_type not in (1, 4, 5, PCAPNG_SHB) else 0
            if others >= EMPTY_RUN_LIMIT:
                self.empty_run(self.base + pos)
                self.truncated = False
                break
            if block_type == PCAPNG_SHB and self._starts_section(buf, pos):
                # The byte order of a section is known only from its own header.
                layouts = _LITTLE if buf[pos + 8] == 0x4D else _BIG
                (length,) = layouts.u32.unpack_from(buf, pos + 4)
            if length < 12 or length % 4:
                raise self.corrupt(self.base + pos)
            if length > MAX_BLOCK_SIZE:
                raise self.oversized(self.base + pos, length)
            if len(buf) - pos < length:
                buf, pos = self.fill(buf, pos, length)
                if len(buf) - pos < length:
                    break
            self._other_block(buf, pos, block_type, length)
            pos += length
        self.buf, self.pos = buf, pos

    def _other_block(self, buf: bytes, pos: int, block_type: int, length: int) -> None:
        """Everything but packets: sections, interfaces, statistics, names."""
        if block_type == PCAPNG_SHB:
            self._section_header(buf, pos, length)
            return
        layouts = self.layouts
        if layouts.u32.unpack_from(buf, pos + length - 4)[0] != length:
            raise self.corrupt(self.base + pos)
        if block_type == 1:
            self._interface_description(buf, pos, length)
        elif block_type == 5:
            self._interface_statistics(buf, pos, length)
        elif block_type == 4:
            self._name_resolution(buf, pos, length)
        # Other blocks (decryption secrets, custom, ...) carry nothing flowtrace reads.

    def _section_header(self, buf: bytes, pos: int, length: int) -> None:
        if not self._starts_section(buf, pos):
            raise self.corrupt(self.base + pos, "section header")
        layouts = _LITTLE if buf[pos + 8] == 0x4D else _BIG
        if length < 28 or layouts.u32.unpack_from(buf, pos + length - 4)[0] != length:
            raise self.corrupt(self.base + pos, "section header")
        _, major, minor = layouts.shb.unpack_from(buf, pos + 8)
        if major != 1:
            raise CaptureFormatError(f"{self.name}: unsupported pcapng version {major}.{minor}")
        self.layouts = layouts
        self.section += 1
        self.conversions = []
        self.plain_indexes = []

    def _options(
        self, buf: bytes, start: int, end: int, block_pos: int
    ) -> Iterator[tuple[int, int, int]]:
        """(code, value offset, value length) of each option in buf[start:end]."""
        option = self.layouts.option
        while start + 4 <= end:
            code, size = option.unpack_from(buf, start)
            if code == 0:
                return
            start += 4
            if start + size > end:
                raise self.corrupt(self.base + block_pos, "options of the block")
            yield code, start, size
            start += (size + 3) & ~3

    def _interface_description(self, buf: bytes, pos: int, length: int) -> None:
        layouts = self.layouts
        if length < 20:
            raise self.corrupt(self.base + pos)
        linktype, _, snaplen = layouts.idb.unpack_from(buf, pos + 8)
        local_id = len(self.conversions)
        name = ""
        description = ""
        units = 1_000_000
        tsoffset = 0
        filter_expr = None
        mac = None
        for code, at, size in self._options(buf, pos + 16, pos + length - 4, pos):
            if code == 2:
                name = _text(buf, at, size)
            elif code == 3:
                description = _text(buf, at, size)
            elif code == 9 and size >= 1:
                resolution = buf[at]
                units = 2 ** (resolution & 0x7F) if resolution & 0x80 else 10**resolution
            elif code == 14 and size == 8:
                (tsoffset,) = layouts.i64.unpack_from(buf, at)
            elif code == 11 and size >= 1 and buf[at] == 0:
                filter_expr = _text(buf, at + 1, size - 1)
            elif code == 6 and size == 6:
                mac = buf[at : at + 6]
        interface = self.catalog.register(
            Interface(
                index=len(self.catalog.interfaces),
                name=name or f"{Path(self.name).stem}#{local_id}",
                description=description,
                linktype=linktype,
                snaplen=snaplen,
                source=self.name,
                units_per_second=units,
                tsoffset=tsoffset,
                filter=filter_expr,
                mac=mac,
                section=self.section,
            )
        )
        if NANOSECONDS % units == 0:
            multiplier, divisor = NANOSECONDS // units, 1
        elif units % NANOSECONDS == 0:
            multiplier, divisor = 1, units // NANOSECONDS
        else:
            multiplier, divisor = NANOSECONDS, units
        plain = multiplier == divisor == 1 and tsoffset == 0
        direction_at = LINKTYPE_DIRECTION_OFFSET.get(linktype, -1)
        self.plain_indexes.append(interface.index if plain and direction_at < 0 else -1)
        self.conversions.append(
            (
                interface.index,
                plain,
                multiplier,
                divisor,
                tsoffset * NANOSECONDS,
                direction_at,
                snaplen,
            )
        )

    def _interface_statistics(self, buf: bytes, pos: int, length: int) -> None:
        layouts = self.layouts
        if length < 24:
            raise self.corrupt(self.base + pos)
        local_id, high, low = layouts.isb.unpack_from(buf, pos + 8)
        conversion = self._conversion(local_id, pos)
        received = dropped = comment = None
        for code, at, size in self._options(buf, pos + 20, pos + length - 4, pos):
            if code == 4 and size == 8:
                (received,) = layouts.u64.unpack_from(buf, at)
            elif code == 5 and size == 8:
                (dropped,) = layouts.u64.unpack_from(buf, at)
            elif code == 1:
                comment = _text(buf, at, size)
        _, _, multiplier, divisor, offset, _, _ = conversion
        time_ns = ((high << 32) | low) * multiplier // divisor + offset
        stats = InterfaceStats(conversion[0], received, dropped, time_ns, comment)
        self.catalog.stats.append(stats)

    def _name_resolution(self, buf: bytes, pos: int, length: int) -> None:
        option = self.layouts.option
        at, end = pos + 8, pos + length - 4
        while at + 4 <= end:
            record_type, size = option.unpack_from(buf, at)
            at += 4
            if record_type == 0:
                break
            if at + size > end:
                raise self.corrupt(self.base + pos, "name resolution record")
            address_size = {1: 4, 2: 16}.get(record_type)
            if address_size and size > address_size:
                address = str(ip_address(buf[at : at + address_size]))
                names = buf[at + address_size : at + size].split(b"\0")
                decoded = tuple(n.decode("utf-8", "replace") for n in names if n)
                self.catalog.add_names(address, decoded)
            at += (size + 3) & ~3

    def _conversion(self, local_id: int, pos: int) -> _Conversion:
        if local_id >= len(self.conversions):
            raise self._undescribed(local_id, pos)
        return self.conversions[local_id]

    def _undescribed(self, local_id: int, pos: int) -> CaptureFormatError:
        return CaptureFormatError(
            f"{self.name}: block at offset {self.base + pos} names interface "
            f"{local_id}, which is not described before it"
        )

    def records(self) -> Iterator[Record]:
        """Parse packet blocks; kept in one function with local names because it runs per packet."""
        if self.problem is not None:  # the header blocks already ran into padding
            self.close()
            return
        buf, pos = self.buf, self.pos
        self.buf = b""
        end = len(buf)
        (
            head, tail, flags_option, packet_id_option, flags_id_end,
            flags_option_word, flags_end_trailer,
        ) = self.layouts.hot  # fmt: skip
        conversions = self.conversions
        plain_indexes = self.plain_indexes
        little = self.layouts is _LITTLE
        scan = _SCAN
        empty = 0  # blocks in a row that carried no captured byte
        try:
            while True:
                if scan is not None and end - pos >= 28:
                    # The C loop takes the run of usual EPBs; this one, the block it left.
                    scanned, pos = scan(
                        buf, pos, end, little, conversions, MAX_BLOCK_SIZE, Record, _SCAN_RUN
                    )
                    if scanned:
                        empty = 0
                        yield from scanned
                        continue
                if end - pos < 28:
                    buf, pos = self.fill(buf, pos, 28)
                    end = len(buf)
                    if end - pos < 12:
                        self.truncated = end > pos
                        return
                    if end - pos < 28:  # the last block is short: not a whole EPB
                        buf = buf + bytes(28)  # zeros let one unpack serve; lengths stay checked
                block_type, length, local_id, high, low, caplen, orig_len = head(buf, pos)
                if block_type == 6:
                    if length < 32 or length & 3:
                        raise self.corrupt(self.base + pos)
                    if length > MAX_BLOCK_SIZE:
                        raise self.oversized(self.base + pos, length)
                    if caplen:
                        empty = 0
                    else:
                        empty += 1
                        if empty >= EMPTY_RUN_LIMIT:
                            self.empty_run(self.base + pos)
                            return
                    if end - pos < length:
                        buf, pos = self.fill(buf[:end], pos, length)
                        end = len(buf)
                        if end - pos < length:
                            self.truncated = True
                            return
                    block_end = pos + length - 4
                    start = pos + 28
                    options_at = start + ((caplen + 3) & ~3)
                    if block_end - options_at == 12:  # one unpack for options and trailer
                        option, flags, end_mark, trailer = flags_end_trailer(buf, options_at)
                        capture_flags = option == flags_option_word and end_mark == 0
                    else:
                        (trailer,) = tail(buf, block_end)
                        capture_flags = False
                    if trailer != length or options_at > block_end:
                        raise self.corrupt(self.base + pos)
                    try:
                        index = plain_indexes[local_id]
                    except IndexError:
                        raise self._undescribed(local_id, pos) from None
                    if index >= 0:  # ns timestamps and no link header to read: the usual case
                        time_ns = (high << 32) | low
                        direction_at = -1
                    else:
                        index, _, multiplier, divisor, offset, direction_at, _ = conversions[
                            local_id
                        ]
                        time_ns = ((high << 32) | low) * multiplier // divisor + offset
                    record = None
                    if capture_flags:  # what a capture writes: epb_flags, end
                        record = new_record((
                            index, time_ns, buf[start : start + caplen], orig_len,
                            _DIRECTIONS[flags & 3], None, None, None,
                        ))  # fmt: skip
                    elif options_at == block_end:
                        record = new_record((
                            index, time_ns, buf[start : start + caplen], orig_len,
                            None, None, None, None,
                        ))  # fmt: skip
                    elif block_end - options_at == 24 and buf.startswith(flags_option, options_at):
                        # What flowtrace writes for a trace: epb_flags, epb_packetid, end.
                        flags, second, packet_id, end_mark = flags_id_end(buf, options_at + 4)
                        if second == packet_id_option and end_mark == 0:
                            record = new_record((
                                index, time_ns, buf[start : start + caplen], orig_len,
                                _DIRECTIONS[flags & 3], packet_id, None, None,
                            ))  # fmt: skip
                    if record is None:
                        record = self._epb_options(
                            buf, options_at, block_end, pos,
                            Record(index, time_ns, buf[start : start + caplen], orig_len),
                        )  # fmt: skip
                    if direction_at >= 0 and record.outbound is None and caplen > direction_at:
                        record = record._replace(
                            outbound=buf[start + direction_at] == PACKET_OUTGOING
                        )
                    pos += length
                    yield record
                    continue
                # Any other block.  A new section may change the byte order: read its length.
                buf = buf[:end]
                if block_type == PCAPNG_SHB and self._starts_section(buf, pos):
                    big = buf[pos + 8] != 0x4D
                    (length,) = (_BIG if big else _LITTLE).u32.unpack_from(buf, pos + 4)
                if length < 12 or length & 3:
                    raise self.corrupt(self.base + pos)
                if length > MAX_BLOCK_SIZE:
                    raise self.oversized(self.base + pos, length)
                if block_type not in (1, 2, 3, 4, 5, PCAPNG_SHB) or length <= 16:
                    empty += 1  # blocks that carry nothing a reader keeps
                    if empty >= EMPTY_RUN_LIMIT:
                        self.empty_run(self.base + pos)
                        return
                else:
                    empty = 0
                if end - pos < length:
                    buf, pos = self.fill(buf, pos, length)
                    end = len(buf)
                    if end - pos < length:
                        self.truncated = True
                        return
                if block_type == 3:
                    yield self._simple_packet(buf, pos, length)
                elif block_type == 2:
                    yield self._obsolete_packet(buf, pos, length)
                else:
                    self._other_block(buf, pos, block_type, length)
                    (
                        head, tail, flags_option, packet_id_option, flags_id_end,
                        flags_option_word, flags_end_trailer,
                    ) = self.layouts.hot  # fmt: skip
                    conversions = self.conversions
                    plain_indexes = self.plain_indexes
                    little = self.layouts is _LITTLE
                pos += length
        finally:
            self.close()

    def _epb_options(self, buf: bytes, start: int, end: int, pos: int, record: Record) -> Record:
        """Fill the record from epb_flags, epb_packetid, opt_comment and epb_dropcount.

        Runs for most packets of a flowtrace file (direction, packet id): one loop,
        no generator.
        """
        layouts = self.layouts
        option = layouts.option.unpack_from
        outbound, packet_id, comment, dropcount = (
            record.outbound, record.packet_id, record.comment, record.dropcount,
        )  # fmt: skip
        at = start
        while at + 4 <= end:
            code, size = option(buf, at)
            if code == 0:
                break
            at += 4
            if at + size > end:
                raise self.corrupt(self.base + pos, "options of the block")
            if code == 2:
                if size == 4:
                    outbound = _DIRECTIONS[buf[at if layouts is _LITTLE else at + 3] & 3]
            elif code == 5:
                if size == 8:
                    (packet_id,) = layouts.u64.unpack_from(buf, at)
            elif code == 1:
                text = _text(buf, at, size)
                comment = text if comment is None else f"{comment}\n{text}"
            elif code == 4 and size == 8:
                (dropcount,) = layouts.u64.unpack_from(buf, at)
            at += (size + 3) & ~3
        return record._replace(
            outbound=outbound, packet_id=packet_id, comment=comment, dropcount=dropcount
        )

    def _simple_packet(self, buf: bytes, pos: int, length: int) -> Record:
        """A Simple Packet Block: interface 0 of the section, no timestamp (time_ns 0)."""
        if length < 16 or self.layouts.u32.unpack_from(buf, pos + length - 4)[0] != length:
            raise self.corrupt(self.base + pos)
        (orig_len,) = self.layouts.u32.unpack_from(buf, pos + 8)
        index, _, _, _, _, direction_at, snaplen = self._conversion(0, pos)
        caplen = min(orig_len, snaplen or orig_len, length - 16)
        data = buf[pos + 12 : pos + 12 + caplen]
        outbound = None
        if direction_at >= 0 and caplen > direction_at:
            outbound = data[direction_at] == PACKET_OUTGOING
        return Record(index, 0, data, orig_len, outbound)

    def _obsolete_packet(self, buf: bytes, pos: int, length: int) -> Record:
        """The obsolete Packet Block: like an EPB with a 16-bit interface id and drop count."""
        if length < 32 or self.layouts.u32.unpack_from(buf, pos + length - 4)[0] != length:
            raise self.corrupt(self.base + pos)
        local_id, drops, high, low, caplen, orig_len = self.layouts.pb.unpack_from(buf, pos + 8)
        start = pos + 28
        options_at = start + ((caplen + 3) & ~3)
        if options_at > pos + length - 4:
            raise self.corrupt(self.base + pos)
        index, _, multiplier, divisor, offset, direction_at, _ = self._conversion(local_id, pos)
        time_ns = ((high << 32) | low) * multiplier // divisor + offset
        data = buf[start : start + caplen]
        record = Record(
            index, time_ns, data, orig_len, dropcount=None if drops == 0xFFFF else drops
        )
        record = self._epb_options(buf, options_at, pos + length - 4, pos, record)
        if record.outbound is None and direction_at >= 0 and caplen > direction_at:
            record = record._replace(outbound=data[direction_at] == PACKET_OUTGOING)
        return record


def _text(buf: bytes, at: int, size: int) -> str:
    """An option string: UTF-8, sometimes NUL-terminated by other writers."""
    return buf[at : at + size].rstrip(b"\0").decode("utf-8", "replace")


#: epb_flags bits 0-1: 0 unknown, 1 inbound, 2 outbound, 3 invalid.
_DIRECTIONS = (None, False, True, None)

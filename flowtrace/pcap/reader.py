"""Streaming reader of pcapng and classic pcap files, one file or several merged.

Memory stays flat however long the file: blocks are parsed out of large chunks
with ``struct.unpack_from``, and only the current chunk is held.  Several files
are merged into one stream in timestamp order (``heapq.merge``), each read lazily.

A capture written by a killed process may end inside a block: the reader stops
there cleanly, sets ``truncated`` and keeps every record before it.
"""

from __future__ import annotations

import heapq
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from ipaddress import ip_address
from operator import attrgetter
from pathlib import Path
from typing import BinaryIO, NamedTuple

from flowtrace.errors import CaptureFormatError, FlowtraceError, NotFoundError

#: Bytes read at a time: for one file; several files share it (each at least MIN_CHUNK_SIZE).
CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 16
#: A captured length above this is garbage, not a packet (64 KiB frames, 256 KiB snaplen).
MAX_RECORD_SIZE = 1 << 26

NANOSECONDS = 1_000_000_000
PACKET_OUTGOING = 4  # Linux packet type in SLL/SLL2 headers

_PCAPNG_SHB = 0x0A0D0D0A
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_CLASSIC_MAGICS = {
    # magic as read little-endian -> (byte order, units per second)
    0xA1B2C3D4: ("<", 1_000_000),
    0xA1B23C4D: ("<", NANOSECONDS),
    0xD4C3B2A1: (">", 1_000_000),
    0x4D3CB2A1: (">", NANOSECONDS),
}

# Linktypes whose header says whether the host sent the frame, and where.
_LINKTYPE_DIRECTION_OFFSET = {113: 1, 276: 10}  # SLL: low byte of u16 pkttype; SLL2: u8


@dataclass(frozen=True)
class Interface:
    """One capture interface (an observation point), numbered across all files read."""

    index: int
    name: str
    description: str
    linktype: int
    snaplen: int
    source: str  # the file it came from
    #: Timestamp units per second (if_tsresol): 10**6 by default, 10**9 for flowtrace files.
    units_per_second: int = 1_000_000
    #: if_tsoffset: seconds added to every timestamp.
    tsoffset: int = 0
    filter: str | None = None
    mac: bytes | None = None
    #: Section of its file (pcapng interface ids restart in every section).
    section: int = 0

    def to_ns(self, timestamp: int) -> int:
        """Convert a raw timestamp of this interface to ns since the epoch."""
        return timestamp * NANOSECONDS // self.units_per_second + self.tsoffset * NANOSECONDS


class Record(NamedTuple):
    """One captured frame.

    A named tuple: one is made per frame of files of millions, and a tuple is built
    in C (`_new_record`) at a fraction of a dataclass's cost.
    """

    interface: int  # Interface.index
    time_ns: int
    data: bytes
    orig_len: int
    outbound: bool | None = None
    packet_id: int | None = None
    comment: str | None = None
    dropcount: int | None = None


#: Record((interface, time_ns, data, orig_len, outbound, packet_id, comment, dropcount)),
#: built in C without the named tuple's Python-level __new__.
_new_record: Callable[[tuple[object, ...]], Record] = partial(tuple.__new__, Record)


@dataclass
class InterfaceStats:
    """Kernel counters from an Interface Statistics Block."""

    interface: int
    received: int | None
    dropped: int | None
    time_ns: int = 0
    comment: str | None = None


class CaptureReader:
    """Records of one or more capture files, in file order (one file) or time order (several).

    ``interfaces`` holds every interface described before the first packet of each
    file as soon as the reader is open; interfaces described later are appended as
    they are reached.  ``stats`` and ``names`` fill up while iterating.
    Iterate once; use as a context manager (or call close) to release the files.
    """

    def __init__(self, inputs: Sequence[tuple[BinaryIO, str, bool]]) -> None:
        """inputs: (binary file object, name for messages, whether to close it)."""
        self.interfaces: list[Interface] = []
        self.stats: list[InterfaceStats] = []
        self.names: dict[str, tuple[str, ...]] = {}
        self._sources: list[_Source] = []
        self._iterated = False
        try:
            chunk_size = max(CHUNK_SIZE // max(len(inputs), 1), min(CHUNK_SIZE, MIN_CHUNK_SIZE))
            for fileobj, name, owned in inputs:
                self._sources.append(_open_source(fileobj, name, owned, self, chunk_size))
        except BaseException:
            for fileobj, _, owned in inputs:
                if owned:
                    fileobj.close()
            raise

    @property
    def sources(self) -> list[str]:
        return [source.name for source in self._sources]

    @property
    def truncated(self) -> bool:
        """True when some file ended inside a block (its writer was killed)."""
        return any(source.truncated for source in self._sources)

    @property
    def truncated_sources(self) -> list[str]:
        return [source.name for source in self._sources if source.truncated]

    def latest_stats(self) -> dict[int, InterfaceStats]:
        """The last statistics block seen for each interface."""
        return {stats.interface: stats for stats in self.stats}

    def __iter__(self) -> Iterator[Record]:
        if self._iterated:
            raise RuntimeError("a CaptureReader can be iterated only once")
        self._iterated = True
        if len(self._sources) == 1:
            return self._sources[0].records()
        return heapq.merge(
            *(source.records() for source in self._sources), key=attrgetter("time_ns")
        )

    def close(self) -> None:
        for source in self._sources:
            source.close()

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Interfaces are registered by the sources through these two methods.

    def _register(self, interface: Interface) -> Interface:
        if interface.index != len(self.interfaces):
            raise ValueError(f"interface {interface.name} registered out of turn")
        self.interfaces.append(interface)
        return interface

    def _unique_name(self, path_name: str) -> str:
        """Name a classic pcap's interface after its file: `c1-eth0.pcap` -> "c1-eth0"."""
        path = Path(path_name)
        taken = {interface.name for interface in self.interfaces}
        for candidate in (path.stem, f"{path.parent.name}/{path.stem}"):
            if candidate and candidate not in taken:
                return candidate
        number = 2
        while f"{path.stem}#{number}" in taken:
            number += 1
        return f"{path.stem}#{number}"


def open_capture(
    paths: str | Path | BinaryIO | Sequence[str | Path | BinaryIO],
) -> CaptureReader:
    """Open capture files (pcapng or classic pcap) to read as one stream.

    A folder stands for the capture files in it (see pcapset.find_capture_files);
    a binary file object is read from its current position.
    """
    from flowtrace.pcap.pcapset import find_capture_files

    items: list[str | Path | BinaryIO]
    if isinstance(paths, str | Path):
        items = [paths]
    elif isinstance(paths, Sequence):
        items = list(paths)
    else:
        items = [paths]
    inputs: list[tuple[BinaryIO, str, bool]] = []
    try:
        for item in items:
            if not isinstance(item, str | Path):
                inputs.append((item, str(getattr(item, "name", "<stream>")), False))
                continue
            path = Path(item)
            files = find_capture_files(path) if path.is_dir() else [path]
            for file in files:
                inputs.append((_open_file(file), str(file), True))
        if not inputs:
            raise NotFoundError("no capture files given")
        return CaptureReader(inputs)
    except BaseException:
        for fileobj, _, owned in inputs:
            if owned:
                fileobj.close()
        raise


def _open_file(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file") from None
    except OSError as err:
        raise FlowtraceError(f"{path}: {err.strerror}") from None


def _open_source(
    fileobj: BinaryIO, name: str, owned: bool, reader: CaptureReader, chunk_size: int
) -> _Source:
    head = b""
    while len(head) < 4:
        more = fileobj.read(max(chunk_size, 4))
        if not more:
            break
        head += more
    if len(head) < 4:
        raise CaptureFormatError(f"{name}: not a pcap or pcapng file (empty or cut short)")
    (magic,) = struct.unpack_from("<I", head)
    source: _Source
    if magic == _PCAPNG_SHB:
        source = _PcapngSource(fileobj, name, owned, reader, head, chunk_size)
    elif magic in _CLASSIC_MAGICS:
        source = _ClassicSource(fileobj, name, owned, reader, head, chunk_size)
    else:
        raise CaptureFormatError(f"{name}: not a pcap or pcapng file")
    return source


class _Source(ABC):
    """One open file: a buffer of bytes read ahead and the position parsed so far."""

    def __init__(
        self, fileobj: BinaryIO, name: str, owned: bool, head: bytes, chunk_size: int
    ) -> None:
        self.file = fileobj
        self.chunk_size = chunk_size
        self.name = name
        self.owned = owned
        self.buf = head
        self.pos = 0
        self.base = 0  # file offset of buf[0]
        self.truncated = False
        self.closed = False

    def fill(self, buf: bytes, pos: int, need: int) -> tuple[bytes, int]:
        """Keep buf[pos:] and read until it holds `need` bytes or the file ends."""
        rest = buf[pos:]
        self.base += pos
        parts = [rest]
        have = len(rest)
        while have < need:
            chunk = self.file.read(max(self.chunk_size, need - have))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        return b"".join(parts), 0

    @abstractmethod
    def records(self) -> Iterator[Record]:
        """The file's records from the current position to its end; closes the file."""

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.buf = b""
            if self.owned:
                self.file.close()

    def corrupt(self, offset: int, what: str = "block") -> CaptureFormatError:
        return CaptureFormatError(f"{self.name}: corrupt {what} at offset {offset}")


# ---------------------------------------------------------------------------- pcapng


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


class _PcapngSource(_Source):
    def __init__(
        self,
        fileobj: BinaryIO,
        name: str,
        owned: bool,
        reader: CaptureReader,
        head: bytes,
        chunk_size: int,
    ) -> None:
        super().__init__(fileobj, name, owned, head, chunk_size)
        self.reader = reader
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
        while True:
            if len(buf) - pos < 12:
                buf, pos = self.fill(buf, pos, 12)
                if len(buf) - pos < 12:
                    break
            block_type, length = self.layouts.header.unpack_from(buf, pos)
            if block_type in (2, 3, 6):
                break
            if block_type == _PCAPNG_SHB and self._starts_section(buf, pos):
                # The byte order of a section is known only from its own header.
                layouts = _LITTLE if buf[pos + 8] == 0x4D else _BIG
                (length,) = layouts.u32.unpack_from(buf, pos + 4)
            if length < 12 or length % 4:
                raise self.corrupt(self.base + pos)
            if len(buf) - pos < length:
                buf, pos = self.fill(buf, pos, length)
                if len(buf) - pos < length:
                    break
            self._other_block(buf, pos, block_type, length)
            pos += length
        self.buf, self.pos = buf, pos

    def _other_block(self, buf: bytes, pos: int, block_type: int, length: int) -> None:
        """Everything but packets: sections, interfaces, statistics, names."""
        if block_type == _PCAPNG_SHB:
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
        interface = self.reader._register(
            Interface(
                index=len(self.reader.interfaces),
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
        direction_at = _LINKTYPE_DIRECTION_OFFSET.get(linktype, -1)
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
        self.reader.stats.append(InterfaceStats(conversion[0], received, dropped, time_ns, comment))

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
                self.reader.names[address] = self.reader.names.get(address, ()) + decoded
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
        buf, pos = self.buf, self.pos
        self.buf = b""
        end = len(buf)
        (
            head, tail, flags_option, packet_id_option, flags_id_end,
            flags_option_word, flags_end_trailer,
        ) = self.layouts.hot  # fmt: skip
        conversions = self.conversions
        plain_indexes = self.plain_indexes
        try:
            while True:
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
                        record = _new_record((
                            index, time_ns, buf[start : start + caplen], orig_len,
                            _DIRECTIONS[flags & 3], None, None, None,
                        ))  # fmt: skip
                    elif options_at == block_end:
                        record = _new_record((
                            index, time_ns, buf[start : start + caplen], orig_len,
                            None, None, None, None,
                        ))  # fmt: skip
                    elif block_end - options_at == 24 and buf.startswith(flags_option, options_at):
                        # What flowtrace writes for a trace: epb_flags, epb_packetid, end.
                        flags, second, packet_id, end_mark = flags_id_end(buf, options_at + 4)
                        if second == packet_id_option and end_mark == 0:
                            record = _new_record((
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
                if block_type == _PCAPNG_SHB and self._starts_section(buf, pos):
                    big = buf[pos + 8] != 0x4D
                    (length,) = (_BIG if big else _LITTLE).u32.unpack_from(buf, pos + 4)
                if length < 12 or length & 3:
                    raise self.corrupt(self.base + pos)
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


# ---------------------------------------------------------------------------- classic pcap


class _ClassicSource(_Source):
    """A libpcap file: one interface, named after the file."""

    def __init__(
        self,
        fileobj: BinaryIO,
        name: str,
        owned: bool,
        reader: CaptureReader,
        head: bytes,
        chunk_size: int,
    ) -> None:
        super().__init__(fileobj, name, owned, head, chunk_size)
        self.buf, self.pos = self.fill(self.buf, 0, 24)
        if len(self.buf) < 24:
            raise CaptureFormatError(f"{name}: not a pcap or pcapng file (header cut short)")
        (magic,) = _LITTLE.u32.unpack_from(self.buf, 0)
        order, self.units = _CLASSIC_MAGICS[magic]
        _, major, _, _, _, snaplen, network = struct.unpack_from(order + "IHHiIII", self.buf)
        if major != 2:
            raise CaptureFormatError(f"{name}: unsupported pcap version {major}")
        self.record_header = struct.Struct(order + "IIII")
        linktype = network & 0xFFFF  # upper bits may carry the FCS length
        self.interface = reader._register(
            Interface(
                index=len(reader.interfaces),
                name=reader._unique_name(name),
                description="",
                linktype=linktype,
                snaplen=snaplen,
                source=name,
                units_per_second=self.units,
            )
        )
        self.direction_at = _LINKTYPE_DIRECTION_OFFSET.get(linktype, -1)
        self.pos = 24

    def records(self) -> Iterator[Record]:
        buf, pos = self.buf, self.pos
        self.buf = b""
        end = len(buf)
        header = self.record_header.unpack_from
        index = self.interface.index
        fraction_ns = NANOSECONDS // self.units
        direction_at = self.direction_at
        try:
            while True:
                if end - pos < 16:
                    buf, pos = self.fill(buf, pos, 16)
                    end = len(buf)
                    if end - pos < 16:
                        self.truncated = end > pos
                        return
                seconds, fraction, caplen, orig_len = header(buf, pos)
                if caplen > MAX_RECORD_SIZE:
                    raise self.corrupt(self.base + pos, "record")
                if end - pos < 16 + caplen:
                    buf, pos = self.fill(buf, pos, 16 + caplen)
                    end = len(buf)
                    if end - pos < 16 + caplen:
                        self.truncated = True
                        return
                data = buf[pos + 16 : pos + 16 + caplen]
                pos += 16 + caplen
                outbound = None
                if direction_at >= 0 and caplen > direction_at:
                    outbound = data[direction_at] == PACKET_OUTGOING
                yield _new_record((
                    index, seconds * NANOSECONDS + fraction * fraction_ns, data, orig_len,
                    outbound, None, None, None,
                ))  # fmt: skip
        finally:
            self.close()

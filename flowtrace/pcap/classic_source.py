"""The classic libpcap parser: one interface per file, named after the file."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from flowtrace.errors import CaptureFormatError
from flowtrace.pcap.records import (
    LINKTYPE_DIRECTION_OFFSET,
    NANOSECONDS,
    PACKET_OUTGOING,
    Catalog,
    Interface,
    Record,
    new_record,
)
from flowtrace.pcap.source import EMPTY_RUN_LIMIT, MAX_BLOCK_SIZE, Source

#: A captured length above this is garbage, not a packet (64 KiB frames, 256 KiB snaplen).
MAX_RECORD_SIZE = MAX_BLOCK_SIZE

CLASSIC_MAGICS = {
    # magic as read little-endian -> (byte order, units per second)
    0xA1B2C3D4: ("<", 1_000_000),
    0xA1B23C4D: ("<", NANOSECONDS),
    0xD4C3B2A1: (">", 1_000_000),
    0x4D3CB2A1: (">", NANOSECONDS),
}
_U32 = struct.Struct("<I")


class ClassicSource(Source):
    """A libpcap file: one interface, named after the file."""

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
        self.buf, self.pos = self.fill(self.buf, 0, 24)
        if len(self.buf) < 24:
            raise CaptureFormatError(f"{name}: not a pcap or pcapng file (header cut short)")
        (magic,) = _U32.unpack_from(self.buf, 0)
        order, self.units = CLASSIC_MAGICS[magic]
        _, major, _, _, _, snaplen, network = struct.unpack_from(order + "IHHiIII", self.buf)
        if major != 2:
            raise CaptureFormatError(f"{name}: unsupported pcap version {major}")
        self.record_header = struct.Struct(order + "IIII")
        linktype = network & 0xFFFF  # upper bits may carry the FCS length
        self.interface = catalog.register(
            Interface(
                index=len(catalog.interfaces),
                name=catalog.unique_name(name),
                description="",
                linktype=linktype,
                snaplen=snaplen,
                source=name,
                units_per_second=self.units,
            )
        )
        self.direction_at = LINKTYPE_DIRECTION_OFFSET.get(linktype, -1)
        self.pos = 24

    def records(self) -> Iterator[Record]:
        buf, pos = self.buf, self.pos
        self.buf = b""
        end = len(buf)
        header = self.record_header.unpack_from
        index = self.interface.index
        fraction_ns = NANOSECONDS // self.units
        direction_at = self.direction_at
        empty = 0
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
                    raise self.oversized(self.base + pos, caplen, "record")
                if caplen:
                    empty = 0
                else:
                    empty += 1
                    if empty >= EMPTY_RUN_LIMIT:
                        self.empty_run(self.base + pos - 16 * (EMPTY_RUN_LIMIT - 1))
                        return
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
                yield new_record((
                    index, seconds * NANOSECONDS + fraction * fraction_ns, data, orig_len,
                    outbound, None, None, None,
                ))  # fmt: skip
        finally:
            self.close()

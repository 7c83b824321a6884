"""One open capture file: the bytes read ahead and the position parsed so far.

The base of the pcapng and classic pcap parsers.  Each parser's ``records`` keeps the
buffer in local names while it runs, and calls ``fill`` only when a block crosses the
end of what was read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import BinaryIO

from flowtrace.errors import CaptureFormatError
from flowtrace.pcap.records import Record

#: A block (pcapng) or record (pcap) larger than this is damage, not a packet: 64 times
#: the largest snapshot length (256 KiB).  Checked before anything is read for it.
MAX_BLOCK_SIZE = 16 << 20
#: Empty records (no captured byte) in a row after which a file is taken to be zeros
#: or padding from there on: reading stops, with a note, instead of walking gigabytes.
EMPTY_RUN_LIMIT = 4096


class Source(ABC):
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
        #: Why reading stopped before the end of the file (a note for the user), if it did.
        self.problem: str | None = None
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

    def oversized(self, offset: int, length: int, what: str = "block") -> CaptureFormatError:
        return CaptureFormatError(
            f"{self.name}: the {what} at offset {offset} declares {length:,} bytes, more than "
            f"the {MAX_BLOCK_SIZE >> 20} MiB limit of a {what} (the file is damaged)"
        )

    def empty_run(self, offset: int) -> None:
        """Stop at a long run of empty records, and say so."""
        self.problem = (
            f"{self.name}: {EMPTY_RUN_LIMIT:,} empty records in a row from offset {offset:,} on "
            "(zeros or padding, not packets): reading stopped there"
        )

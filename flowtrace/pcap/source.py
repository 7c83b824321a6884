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

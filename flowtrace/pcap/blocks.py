"""Append whole pcapng blocks to a file, and never leave a torn one behind.

A write on a full disk lands in part: the kernel writes what fits and the next write
fails (ENOSPC).  The file would then end inside a block, which Wireshark warns about
and capinfos calls an error.  `append_blocks` cuts such a file back to the end of its
last whole block, then raises BlockWriteError saying how many packet blocks of the
batch did land, so the caller can tell how many packets the set holds.
"""

from __future__ import annotations

import contextlib
import errno as errnos
import os
import struct

_LENGTH = struct.Struct("<I")
_BLOCK_EPB = 6


class BlockWriteError(OSError):
    """A batch of blocks landed only in part (or not at all); the file ends on a whole block."""

    def __init__(self, code: int, kept_packets: int) -> None:
        super().__init__(code, os.strerror(code) if code else "write failed")
        #: Enhanced Packet Blocks of the batch that are whole in the file.
        self.kept_packets = kept_packets


def complete_prefix(blob: bytes, written: int) -> tuple[int, int]:
    """(bytes, packet blocks) of the whole blocks within blob[:written].

    `blob` is little-endian pcapng blocks as flowtrace builds them.
    """
    at = packets = 0
    while at + 8 <= written:
        (length,) = _LENGTH.unpack_from(blob, at + 4)
        if length < 12 or at + length > written:
            break
        if _LENGTH.unpack_from(blob, at)[0] == _BLOCK_EPB:
            packets += 1
        at += length
    return at, packets


def append_blocks(fd: int, blob: bytes) -> None:
    """Write all of `blob` (whole blocks) at the end of `fd` (opened O_APPEND).

    On failure the file is cut back to the end of the last whole block of the batch
    and BlockWriteError says how many of the batch's packets landed.
    """
    view = memoryview(blob)
    written = 0
    try:
        while written < len(view):
            written += os.write(fd, view[written:])
    except OSError as exc:
        kept, packets = complete_prefix(blob, written)
        if written > kept:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, os.fstat(fd).st_size - (written - kept))
        raise BlockWriteError(exc.errno or errnos.EIO, packets) from exc

"""Cut a capture file to its earliest N packets, every other block as it is.

`flowtrace capture -n N` stops on N packets over all points, but the capture's workers
hand over whole ring blocks, so the file holds a few more; this rewrites it without
them.  Only little-endian pcapng as flowtrace writes it is read.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from flowtrace.errors import FlowtraceError
from flowtrace.pcap.ownership import create_private

_BLOCK_HEADER = struct.Struct("<II")
_EPB_FIELDS = struct.Struct("<IIIII")  # interface id, time high, time low, caplen, orig_len
_BLOCK_EPB = 6


def _blocks(handle: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(type, whole block) of a little-endian pcapng flowtrace wrote; stops at a cut block."""
    while True:
        head = handle.read(8)
        if len(head) < 8:
            return
        block_type, length = _BLOCK_HEADER.unpack(head)
        if length < 12:
            raise FlowtraceError(f"{handle.name}: corrupt block of length {length}")
        rest = handle.read(length - 8)
        if len(rest) < length - 8:
            return
        yield block_type, head + rest


def trim_to_count(pcapng: Path, count: int, interfaces: int) -> tuple[list[int], list[int]]:
    """Keep only the `count` earliest packets of a capture file, every other block as it is.

    The capture's workers hand over whole ring blocks, so a capture stopped at
    --count holds a few more packets than asked; the file is rewritten without them
    (ties in time are broken by file order) and replaced atomically.  Returns the
    packets and bytes on the wire kept per interface.
    """
    times = array("q")
    with open(pcapng, "rb") as handle:
        for block_type, block in _blocks(handle):
            if block_type == _BLOCK_EPB:
                _, high, low, _, _ = _EPB_FIELDS.unpack_from(block, 8)
                times.append((high << 32) | low)
    if len(times) <= count:
        return _tally(pcapng, interfaces)
    cutoff = sorted(times)[count - 1]
    at_cutoff = count - sum(1 for t in times if t < cutoff)
    del times
    packets = [0] * interfaces
    nbytes = [0] * interfaces
    partial = pcapng.with_name(f".{pcapng.name}.{os.getpid()}.tmp")
    try:
        with open(pcapng, "rb") as source, os.fdopen(create_private(partial), "wb") as target:
            for block_type, block in _blocks(source):
                if block_type == _BLOCK_EPB:
                    interface, high, low, _, orig_len = _EPB_FIELDS.unpack_from(block, 8)
                    time_ns = (high << 32) | low
                    if time_ns > cutoff:
                        continue
                    if time_ns == cutoff:
                        if at_cutoff == 0:
                            continue
                        at_cutoff -= 1
                    if interface < interfaces:
                        packets[interface] += 1
                        nbytes[interface] += orig_len
                target.write(block)
            target.flush()
            os.fsync(target.fileno())
        os.replace(partial, pcapng)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return packets, nbytes


def _tally(pcapng: Path, interfaces: int) -> tuple[list[int], list[int]]:
    packets = [0] * interfaces
    nbytes = [0] * interfaces
    with open(pcapng, "rb") as handle:
        for block_type, block in _blocks(handle):
            if block_type == _BLOCK_EPB:
                interface, _, _, _, orig_len = _EPB_FIELDS.unpack_from(block, 8)
                if interface < interfaces:
                    packets[interface] += 1
                    nbytes[interface] += orig_len
    return packets, nbytes

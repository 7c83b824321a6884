"""Streaming reader of pcapng and classic pcap files, one file or several merged.

Memory stays flat however long the file: each file's parser (pcapng_source,
classic_source) holds only its current chunk.  Several files are merged into one
stream in timestamp order (``heapq.merge``), each read lazily.

A capture written by a killed process may end inside a block: the reader stops
there cleanly, sets ``truncated`` and keeps every record before it.
"""

from __future__ import annotations

import heapq
import struct
from collections.abc import Iterator, Sequence
from operator import attrgetter
from pathlib import Path
from typing import BinaryIO

from flowtrace.errors import CaptureFormatError, NotFoundError
from flowtrace.pcap.classic_source import CLASSIC_MAGICS, ClassicSource
from flowtrace.pcap.openfile import open_for_reading
from flowtrace.pcap.pcapng_source import PCAPNG_SHB, PcapngSource
from flowtrace.pcap.pcapset import find_capture_files
from flowtrace.pcap.records import Catalog, Interface, InterfaceStats, Record
from flowtrace.pcap.source import Source

__all__ = ["CaptureReader", "Interface", "InterfaceStats", "Record", "open_capture"]

#: Bytes read at a time: for one file; several files share it (each at least MIN_CHUNK_SIZE).
CHUNK_SIZE = 1 << 20
MIN_CHUNK_SIZE = 1 << 16


class CaptureReader:
    """Records of one or more capture files, in file order (one file) or time order (several).

    ``interfaces`` holds every interface described before the first packet of each
    file as soon as the reader is open; interfaces described later are appended as
    they are reached.  ``stats`` and ``names`` fill up while iterating.
    Iterate once; use as a context manager (or call close) to release the files.
    """

    def __init__(self, inputs: Sequence[tuple[BinaryIO, str, bool]]) -> None:
        """inputs: (binary file object, name for messages, whether to close it)."""
        catalog = Catalog()
        # The catalog's own containers: the sources fill them while the reader is iterated.
        self.interfaces: list[Interface] = catalog.interfaces
        self.stats: list[InterfaceStats] = catalog.stats
        self.names: dict[str, tuple[str, ...]] = catalog.names
        self._sources: list[Source] = []
        self._iterated = False
        try:
            chunk_size = max(CHUNK_SIZE // max(len(inputs), 1), min(CHUNK_SIZE, MIN_CHUNK_SIZE))
            for fileobj, name, owned in inputs:
                self._sources.append(_open_source(fileobj, name, owned, catalog, chunk_size))
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
    def problems(self) -> list[str]:
        """Why some file was read only up to a point (a run of empty records), in words."""
        return [source.problem for source in self._sources if source.problem]

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


def open_capture(
    paths: str | Path | BinaryIO | Sequence[str | Path | BinaryIO],
) -> CaptureReader:
    """Open capture files (pcapng or classic pcap) to read as one stream.

    A folder stands for the capture files in it (see pcapset.find_capture_files);
    a binary file object is read from its current position.
    """
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
    return open_for_reading(path)


def _open_source(
    fileobj: BinaryIO, name: str, owned: bool, catalog: Catalog, chunk_size: int
) -> Source:
    """A parser for the file, chosen by its first four bytes."""
    head = b""
    while len(head) < 4:
        more = fileobj.read(max(chunk_size, 4))
        if not more:
            break
        head += more
    if len(head) < 4:
        raise CaptureFormatError(f"{name}: not a pcap or pcapng file (empty or cut short)")
    (magic,) = struct.unpack_from("<I", head)
    source: Source
    if magic == PCAPNG_SHB:
        source = PcapngSource(fileobj, name, owned, catalog, head, chunk_size)
    elif magic in CLASSIC_MAGICS:
        source = ClassicSource(fileobj, name, owned, catalog, head, chunk_size)
    else:
        raise CaptureFormatError(f"{name}: not a pcap or pcapng file")
    return source

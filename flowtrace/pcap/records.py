"""What reading a capture yields: interfaces, records, statistics, and the catalog holding them.

The file parsers (pcapng_source, classic_source) fill a ``Catalog``; the reader
exposes it.  Kept apart from both so the parsers never import the reader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NamedTuple

NANOSECONDS = 1_000_000_000
PACKET_OUTGOING = 4  # Linux packet type in SLL/SLL2 headers

#: Linktypes whose header says whether the host sent the frame, and where.
LINKTYPE_DIRECTION_OFFSET = {113: 1, 276: 10}  # SLL: low byte of u16 pkttype; SLL2: u8


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
    in C (`new_record`) at a fraction of a dataclass's cost.
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
new_record: Callable[[tuple[object, ...]], Record] = partial(tuple.__new__, Record)


@dataclass
class InterfaceStats:
    """Kernel counters from an Interface Statistics Block."""

    interface: int
    received: int | None
    dropped: int | None
    time_ns: int = 0
    comment: str | None = None


@dataclass
class Catalog:
    """The interfaces, statistics and names of all files of one read, filled as they are parsed.

    Interfaces are numbered across files, so every source registers into the one catalog.
    """

    interfaces: list[Interface] = field(default_factory=list)
    stats: list[InterfaceStats] = field(default_factory=list)
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def register(self, interface: Interface) -> Interface:
        if interface.index != len(self.interfaces):
            raise ValueError(f"interface {interface.name} registered out of turn")
        self.interfaces.append(interface)
        return interface

    def unique_name(self, path_name: str) -> str:
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

    def add_names(self, address: str, names: tuple[str, ...]) -> None:
        """Names from a Name Resolution Block; an address named twice keeps both."""
        self.names[address] = self.names.get(address, ()) + names

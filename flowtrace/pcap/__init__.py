"""pcapng and classic pcap files: block writer, streaming reader, pcap set folders.

Pure code over bytes and files, no sockets.  Importing this package is cheap
(standard library only, and each part only when a name from it is asked for).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowtrace.pcap.pcapng import (
        LINKTYPE_ETHERNET,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
        LINKTYPE_RAW,
        PcapngWriter,
        enhanced_packet_block,
        interface_description_block,
        interface_statistics_block,
        name_resolution_block,
        section_header_block,
    )
    from flowtrace.pcap.pcapset import (
        find_capture_files,
        new_set_dir,
        read_manifest,
        write_manifest,
    )
    from flowtrace.pcap.reader import CaptureReader, Interface, InterfaceStats, Record, open_capture

#: Where each name below lives: loaded on first use, so a live trace, which writes a set
#: (pcapng, pcapset, recorder), does not load the reading side (reader, sources, records).
_HOMES = {
    **dict.fromkeys(
        (
            "LINKTYPE_ETHERNET",
            "LINKTYPE_LINUX_SLL",
            "LINKTYPE_LINUX_SLL2",
            "LINKTYPE_RAW",
            "PcapngWriter",
            "enhanced_packet_block",
            "interface_description_block",
            "interface_statistics_block",
            "name_resolution_block",
            "section_header_block",
        ),
        "flowtrace.pcap.pcapng",
    ),
    **dict.fromkeys(
        ("find_capture_files", "new_set_dir", "read_manifest", "write_manifest"),
        "flowtrace.pcap.pcapset",
    ),
    **dict.fromkeys(
        ("CaptureReader", "Interface", "InterfaceStats", "Record", "open_capture"),
        "flowtrace.pcap.reader",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'flowtrace.pcap' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


__all__ = [
    "LINKTYPE_ETHERNET",
    "LINKTYPE_LINUX_SLL",
    "LINKTYPE_LINUX_SLL2",
    "LINKTYPE_RAW",
    "CaptureReader",
    "Interface",
    "InterfaceStats",
    "PcapngWriter",
    "Record",
    "enhanced_packet_block",
    "find_capture_files",
    "interface_description_block",
    "interface_statistics_block",
    "name_resolution_block",
    "new_set_dir",
    "open_capture",
    "read_manifest",
    "section_header_block",
    "write_manifest",
]

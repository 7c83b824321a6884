"""pcapng and classic pcap files: block writer, streaming reader, pcap set folders.

Pure code over bytes and files, no sockets.  Importing this package is cheap
(standard library only).
"""

from __future__ import annotations

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

"""format_entry and the tuple lookup on conntrack entries recorded on this machine.

tests/data/conntrack-entries.json holds entries read with pyroute2's NFCTSocket.dump()
in a private router namespace (MASQUERADE 198.51.100.0/24 out of its 203.0.113.1 side),
turned into attribute dicts by `attributes`, each with the line `conntrack -L` printed
for it at the same moment (with and without accounting: packets=/bytes=).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from flowtrace.topology.conntrack import attributes, format_entry, pick_entry, tuple_fields

RECORDED = json.loads((Path(__file__).parents[2] / "data" / "conntrack-entries.json").read_text())[
    "entries"
]


@pytest.mark.parametrize("record", RECORDED, ids=lambda r: r["conntrack_L"][:40])
def test_format_matches_what_conntrack_printed(record: dict[str, Any]) -> None:
    assert format_entry(record["attributes"]) == record["conntrack_L"]


def test_the_recording_covers_the_interesting_shapes() -> None:
    lines = [r["conntrack_L"] for r in RECORDED]
    assert any("[UNREPLIED]" in line and line.startswith("udp") for line in lines)
    assert any(" ESTABLISHED " in line and "[ASSURED]" in line for line in lines)
    assert any(" SYN_SENT " in line for line in lines)
    assert any(line.startswith("icmpv6   58 ") for line in lines)
    assert any("packets=" in line for line in lines)
    assert any("packets=" not in line and line.startswith("icmp ") for line in lines)


def entries() -> list[dict[str, Any]]:
    return [r["attributes"] for r in RECORDED]


def test_lookup_by_original_tuple() -> None:
    ping = pick_entry(entries(), 1, "198.51.100.2", "203.0.113.2")
    assert ping is not None
    text = format_entry(ping)
    assert "src=203.0.113.2 dst=203.0.113.1 type=0" in text  # the translated reply tuple
    udp = pick_entry(entries(), 17, "198.51.100.2", "203.0.113.2", 40002, 9999)
    assert udp is not None and "[UNREPLIED]" in format_entry(udp)
    assert pick_entry(entries(), 17, "198.51.100.2", "203.0.113.2", 40002, 9) is None
    assert pick_entry(entries(), 6, "198.51.100.9", "203.0.113.2") is None


def test_lookup_falls_back_to_the_reply_tuple() -> None:
    # A reply seen before it is put back: 203.0.113.2:5353 -> 203.0.113.1:40001.
    udp = pick_entry(entries(), 17, "203.0.113.2", "203.0.113.1", 5353, 40001)
    assert udp is not None
    assert tuple_fields(udp["CTA_TUPLE_ORIG"])["src"] == "198.51.100.2"


def test_icmp_id_is_compared_when_given() -> None:
    ping = pick_entry(entries(), 1, "198.51.100.2", "203.0.113.2")
    assert ping is not None
    ident = tuple_fields(ping["CTA_TUPLE_ORIG"])["id"]
    found = pick_entry(entries(), 1, "198.51.100.2", "203.0.113.2", icmp_id=ident)
    assert found is not None and tuple_fields(found["CTA_TUPLE_ORIG"])["id"] == ident
    assert pick_entry(entries(), 1, "198.51.100.2", "203.0.113.2", icmp_id=ident ^ 0xFFFF) is None


def test_attributes_flattens_netlink_messages() -> None:
    message = {
        "attrs": [
            ("CTA_TUPLE_ORIG", {"attrs": [("CTA_TUPLE_IP", {"attrs": [("CTA_IP_V4_SRC", "a")]})]}),
            ("CTA_PROTOINFO_TCP_FLAGS_ORIGINAL", (39, 0), 32768),
            ("CTA_MARK", 0),
        ]
    }
    assert attributes(message) == {
        "CTA_TUPLE_ORIG": {"CTA_TUPLE_IP": {"CTA_IP_V4_SRC": "a"}},
        "CTA_PROTOINFO_TCP_FLAGS_ORIGINAL": [39, 0],
        "CTA_MARK": 0,
    }


def test_unknown_protocols_and_flags_render_like_conntrack() -> None:
    gre = {
        "CTA_TUPLE_ORIG": {
            "CTA_TUPLE_IP": {"CTA_IP_V4_SRC": "10.0.0.1", "CTA_IP_V4_DST": "10.0.0.2"},
            "CTA_TUPLE_PROTO": {"CTA_PROTO_NUM": 99},
        },
        "CTA_TUPLE_REPLY": {
            "CTA_TUPLE_IP": {"CTA_IP_V4_SRC": "10.0.0.2", "CTA_IP_V4_DST": "10.0.0.1"},
            "CTA_TUPLE_PROTO": {"CTA_PROTO_NUM": 99},
        },
        "CTA_STATUS": 0x4000 | 0x2 | 0x4,  # offloaded, seen reply, assured
        "CTA_TIMEOUT": 30,
        "CTA_ZONE": 3,
        "CTA_USE": 1,
    }
    assert format_entry(gre) == (
        "unknown  99 30 src=10.0.0.1 dst=10.0.0.2 src=10.0.0.2 dst=10.0.0.1 "
        "[OFFLOAD] [ASSURED] zone=3 use=1"
    )

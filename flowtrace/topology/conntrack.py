"""The kernel's conntrack entry for a flow, read over netlink, shown as `conntrack -L` does.

`find_entry` asks ctnetlink inside a namespace (through run_in_netns) for the
entries whose original tuple fits the flow, falling back to the reply tuple (a
packet seen on its way back, before it is put back, carries that one).  Entries
are turned into plain attribute dicts (`attributes`), and `format_entry` renders
one the way libnetfilter_conntrack's default output does, so the text reads like
what a user would get from `conntrack -L` in that namespace.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError, NotRootError

Attributes = Mapping[str, Any]

#: Names `conntrack -L` prints for transport protocols (others: "unknown").
PROTOCOL_NAMES = {
    1: "icmp",
    6: "tcp",
    17: "udp",
    33: "dccp",
    47: "gre",
    58: "icmpv6",
    132: "sctp",
    136: "udplite",
}
_PROTOCOL_NUMBERS = {
    **{name: number for number, name in PROTOCOL_NAMES.items()},
    "icmp6": 58,
    "ipv6-icmp": 58,
}

#: conntrack's TCP states by number (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
TCP_STATES = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
)
_PORT_PROTOCOLS = frozenset((6, 17, 33, 132, 136))
_ICMP_PROTOCOLS = frozenset((1, 58))

IPS_SEEN_REPLY = 1 << 1
IPS_ASSURED = 1 << 2
IPS_OFFLOAD = 1 << 14
IPS_HW_OFFLOAD = 1 << 15


# --- the pure part: attribute dicts and their text ----------------------------------------


def attributes(message: Any) -> dict[str, Any]:
    """A pyroute2 netlink message (or nested attribute) as a plain dict of its attributes."""
    result: dict[str, Any] = {}
    for item in message["attrs"]:
        name, value = item[0], item[1]
        if isinstance(value, Mapping) and "attrs" in value:
            value = attributes(value)
        elif isinstance(value, tuple):
            value = list(value)
        result[name] = value
    return result


def tuple_fields(tup: Attributes) -> dict[str, Any]:
    """src, dst, proto, sport, dport, type, code, id of one CTA_TUPLE_* dict (absent: None)."""
    ip = tup.get("CTA_TUPLE_IP", {})
    proto = tup.get("CTA_TUPLE_PROTO", {})
    return {
        "src": ip.get("CTA_IP_V4_SRC") or ip.get("CTA_IP_V6_SRC"),
        "dst": ip.get("CTA_IP_V4_DST") or ip.get("CTA_IP_V6_DST"),
        "proto": proto.get("CTA_PROTO_NUM"),
        "sport": proto.get("CTA_PROTO_SRC_PORT"),
        "dport": proto.get("CTA_PROTO_DST_PORT"),
        "type": _first(proto, "CTA_PROTO_ICMP_TYPE", "CTA_PROTO_ICMPV6_TYPE"),
        "code": _first(proto, "CTA_PROTO_ICMP_CODE", "CTA_PROTO_ICMPV6_CODE"),
        "id": _first(proto, "CTA_PROTO_ICMP_ID", "CTA_PROTO_ICMPV6_ID"),
    }


def _first(attrs: Attributes, *names: str) -> Any:
    for name in names:
        if name in attrs:
            return attrs[name]
    return None


def format_entry(entry: Attributes) -> str:
    """One entry as `conntrack -L` prints it (libnetfilter_conntrack's default format)."""
    orig = tuple_fields(entry.get("CTA_TUPLE_ORIG", {}))
    reply = tuple_fields(entry.get("CTA_TUPLE_REPLY", {}))
    proto = orig["proto"] or 0
    parts = [f"{PROTOCOL_NAMES.get(proto, 'unknown'):<8} {proto}"]
    if "CTA_TIMEOUT" in entry:
        parts.append(str(entry["CTA_TIMEOUT"]))
    tcp = entry.get("CTA_PROTOINFO", {}).get("CTA_PROTOINFO_TCP", {})
    if "CTA_PROTOINFO_TCP_STATE" in tcp:
        state = tcp["CTA_PROTOINFO_TCP_STATE"]
        parts.append(TCP_STATES[state] if state < len(TCP_STATES) else TCP_STATES[0])
    status = entry.get("CTA_STATUS")
    parts += _tuple_text(orig)
    parts += _counters(entry.get("CTA_COUNTERS_ORIG"))
    if status is not None and not status & IPS_SEEN_REPLY:
        parts.append("[UNREPLIED]")
    parts += _tuple_text(reply)
    parts += _counters(entry.get("CTA_COUNTERS_REPLY"))
    if status is not None:
        if status & IPS_HW_OFFLOAD:
            parts.append("[HW_OFFLOAD]")
        elif status & IPS_OFFLOAD:
            parts.append("[OFFLOAD]")
        if status & IPS_ASSURED:
            parts.append("[ASSURED]")
    if "CTA_MARK" in entry:
        parts.append(f"mark={entry['CTA_MARK']}")
    if "CTA_SECMARK" in entry:
        parts.append(f"secmark={entry['CTA_SECMARK']}")
    secctx = entry.get("CTA_SECCTX", {}).get("CTA_SECCTX_NAME")
    if secctx:
        parts.append(f"secctx={secctx}")
    if "CTA_ZONE" in entry:
        parts.append(f"zone={entry['CTA_ZONE']}")
    if entry.get("CTA_HELP"):
        parts.append(f"helper={entry['CTA_HELP']}")
    if "CTA_USE" in entry:
        parts.append(f"use={entry['CTA_USE']}")
    return " ".join(parts)


def _tuple_text(t: Mapping[str, Any]) -> list[str]:
    parts = [f"src={t['src']}", f"dst={t['dst']}"]
    if t["proto"] in _PORT_PROTOCOLS:
        parts += [f"sport={t['sport'] or 0}", f"dport={t['dport'] or 0}"]
    elif t["proto"] in _ICMP_PROTOCOLS:
        parts += [f"type={t['type'] or 0}", f"code={t['code'] or 0}", f"id={t['id'] or 0}"]
    return parts


def _counters(counters: Attributes | None) -> list[str]:
    if not counters:
        return []
    packets = _first(counters, "CTA_COUNTERS_PACKETS", "CTA_COUNTERS32_PACKETS")
    size = _first(counters, "CTA_COUNTERS_BYTES", "CTA_COUNTERS32_BYTES")
    if packets is None or size is None:
        return []
    return [f"packets={packets}", f"bytes={size}"]


def tuple_fits(
    tup: Attributes,
    proto: int,
    src: str,
    dst: str,
    sport: int | None,
    dport: int | None,
    icmp_id: int | None,
) -> bool:
    """Whether a CTA_TUPLE_* dict is this flow; None fields are not compared."""
    f = tuple_fields(tup)
    if f["proto"] != proto or f["src"] != src or f["dst"] != dst:
        return False
    if proto in _ICMP_PROTOCOLS:
        return icmp_id is None or f["id"] == icmp_id
    return (sport is None or f["sport"] == sport) and (dport is None or f["dport"] == dport)


def pick_entry(
    entries: Sequence[Attributes],
    proto: int,
    src: str,
    dst: str,
    sport: int | None = None,
    dport: int | None = None,
    icmp_id: int | None = None,
) -> Attributes | None:
    """The entry whose original tuple is the flow, else one whose reply tuple is."""
    for key in ("CTA_TUPLE_ORIG", "CTA_TUPLE_REPLY"):
        for entry in entries:
            if tuple_fits(entry.get(key, {}), proto, src, dst, sport, dport, icmp_id):
                return entry
    return None


# --- the privileged part: ask the kernel --------------------------------------------------


def find_entry(
    netns_path: str,
    proto: str | int,
    src: str,
    dst: str,
    sport: int | None = None,
    dport: int | None = None,
    icmp_id: int | None = None,
) -> str | None:
    """The conntrack entry of a flow in a namespace, as `conntrack -L` prints it, or None."""
    number = proto if isinstance(proto, int) else _PROTOCOL_NUMBERS.get(proto.lower())
    if number is None:
        return None
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    entries = run_in_netns(netns_path, _dump_flow, family, number, src, dst)
    found = pick_entry(entries, number, src, dst, sport, dport, icmp_id)
    return format_entry(found) if found is not None else None


def _dump_flow(family: int, proto: int, src: str, dst: str) -> list[dict[str, Any]]:
    """Entries between the two addresses, original or reply direction, as attribute dicts.

    The kernel filters by tuple since Linux 5.8 (CTA_FILTER); older kernels refuse
    the filter, and then the whole table is read.
    """
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple, NFCTSocket

    def query(sock: Any, **filters: Any) -> list[dict[str, Any]]:
        return [attributes(msg) for msg in sock.dump(**filters)]

    try:
        with NFCTSocket(nfgen_family=family) as sock:
            flow = NFCTAttrTuple(family=family, saddr=src, daddr=dst, proto=proto)
            try:
                found = query(sock, tuple_orig=flow) or query(sock, tuple_reply=flow)
            except NetlinkError as exc:
                if exc.code not in (errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                found = query(sock)
            return found
    except NetlinkError as exc:
        if exc.code == errno.EPERM:
            raise NotRootError(
                "reading conntrack needs CAP_NET_ADMIN: run flowtrace as root"
            ) from None
        if exc.code == errno.ENOENT:
            return []  # conntrack is not loaded in this namespace: nothing is tracked
        raise FlowtraceError(f"conntrack over netlink failed: {exc}") from None
    except PermissionError:
        raise NotRootError("reading conntrack needs CAP_NET_ADMIN: run flowtrace as root") from None

"""A packet that vanished where no rule drops it: what the kernel's own state says.

A namespace drops packets without any firewall rule: the reverse-path filter refuses a
source not reachable back through the interface it came in by, forwarding is off, there
is no route (or a blackhole one), the next hop never answers ARP.  The kernel's route
lookup for the packet as it arrived (`ip route get DST from SRC iif IN`, the input path
with rp_filter in it) and the neighbour table say which; the sysctls say why.  The
lookup refuses a blackhole route and a reverse-path failure with the same EINVAL, so the
main table's own entry for the destination and the route back to the source tell them
apart.
`describe` is pure; `explain` reads the namespace (topology.drops asks it when no rule
explains a loss).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.model import DropReason, Headers, Point
from flowtrace.topology.kernel import RTN_BLACKHOLE, RTN_LOCAL, RTN_PROHIBIT, RTN_UNREACHABLE

RT_TABLE_MAIN = 254
#: Neighbour states (NUD_*) in which the next hop has not answered.
NUD_INCOMPLETE, NUD_FAILED = 0x01, 0x20
_NUD_NAMES = {0x01: "INCOMPLETE", 0x02: "REACHABLE", 0x04: "STALE", 0x08: "DELAY",
              0x10: "PROBE", 0x20: "FAILED", 0x40: "NOARP", 0x80: "PERMANENT"}  # fmt: skip


@dataclass(frozen=True)
class SilentFacts:
    """What one namespace's kernel says about a packet that came in by `in_iface`."""

    netns: str
    src: str
    dst: str
    in_iface: str
    #: The input route lookup: the errno it refused with, else the route's type and way out.
    route_error: int | None = None
    route_kind: int | None = None
    out_iface: str | None = None
    next_hop: str | None = None
    #: NUD_* state of the next hop's neighbour entry, None when there is none.
    neighbour_state: int | None = None
    #: The type of the main table's longest-prefix entry for dst (read when the lookup
    #: refused), and the interface the route back to src leaves by (None: no route back).
    table_kind: int | None = None
    back_iface: str | None = None
    #: net.ipv4.conf.<in_iface>.rp_filter and .all.rp_filter; <in_iface>.forwarding.
    rp_filter: int | None = None
    rp_filter_all: int | None = None
    forwarding: int | None = None


def describe(f: SilentFacts) -> str | None:
    """The verdict's words for a drop no rule made, or None when the state shows none."""
    where = f"in {f.netns}, by no rule"
    if f.route_error is not None and f.table_kind in (RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT):
        return _by_route_type(where, f.dst, f.table_kind)
    if f.route_error in (errno.EINVAL, errno.EXDEV):
        strict = max(f.rp_filter or 0, f.rp_filter_all or 0)
        back = (
            f"the route back to {f.src} leaves by {f.back_iface}"
            if f.back_iface
            else (f"there is no route back to {f.src}")
        )
        refused = (strict == 1 and f.back_iface != f.in_iface) or (
            strict == 2 and f.back_iface is None
        )
        if refused:
            mode = (
                "strict: the way back must be the way in"
                if strict == 1
                else ("loose: some way back must exist")
            )
            return (
                f"dropped {where}: the reverse-path filter refused it (the kernel's route "
                f"lookup for it, from {f.src} in by {f.in_iface}, fails: {back}; "
                f"net.ipv4.conf.{f.in_iface}.rp_filter = {f.rp_filter}, all = "
                f"{f.rp_filter_all}, the higher applies, {strict} is {mode})"
            )
        return (
            f"dropped {where}: the kernel's route lookup for it (from {f.src}, in by "
            f"{f.in_iface}) rejects its source as invalid there (a martian source)"
        )
    if f.route_error in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        if f.forwarding == 0:
            return (
                f"dropped {where}: forwarding is off on {f.in_iface} "
                f"(net.ipv4.conf.{f.in_iface}.forwarding = 0), so nothing that comes in by "
                f"it is routed on to {f.dst}"
            )
        return (
            f"dropped {where}: no route to {f.dst} there (the kernel answers ICMP network "
            "unreachable, as its rate limit allows)"
        )
    if f.route_kind in (RTN_BLACKHOLE, RTN_UNREACHABLE, RTN_PROHIBIT):
        return _by_route_type(where, f.dst, f.route_kind)
    if f.neighbour_state is not None and f.neighbour_state & (NUD_INCOMPLETE | NUD_FAILED):
        state = _NUD_NAMES.get(f.neighbour_state, hex(f.neighbour_state))
        return (
            f"not sent on {where}: the next hop {f.next_hop} on {f.out_iface} does not answer "
            f"ARP (its neighbour entry is {state}); the kernel holds a few packets for it, "
            "then drops them"
        )
    return None


def _by_route_type(where: str, dst: str, kind: int) -> str:
    if kind == RTN_BLACKHOLE:
        return f"dropped {where}: its route to {dst} is a blackhole route, which drops silently"
    name = "unreachable" if kind == RTN_UNREACHABLE else "prohibit"
    return f"dropped {where}: its route to {dst} is of type {name} (the kernel answers ICMP)"


def _sysctl(name: str) -> int | None:
    try:
        return int(Path("/proc/sys/net/ipv4/conf", name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read(
    netns: str, seen: Headers, dst: str, in_index: int, in_name: str
) -> SilentFacts:  # runs inside the namespace
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    facts = SilentFacts(
        netns,
        seen.src,
        dst,
        in_name,
        rp_filter=_sysctl(f"{in_name}/rp_filter"),
        rp_filter_all=_sysctl("all/rp_filter"),
        forwarding=_sysctl(f"{in_name}/forwarding"),
    )
    with IPRoute() as ipr:
        try:
            msg = ipr.route("get", dst=dst, src=seen.src, iif=in_index)[0]
        except NetlinkError as exc:
            refused = {
                "route_error": exc.code,
                "table_kind": _main_table_kind(ipr, dst),
                "back_iface": _way_back(ipr, seen.src),
            }
            return SilentFacts(**{**facts.__dict__, **refused})
        attrs = dict(msg.get("attrs", []))
        kind, oif = int(msg["type"]), attrs.get("RTA_OIF")
        next_hop = attrs.get("RTA_GATEWAY") or dst
        state = out_name = None
        if kind not in (RTN_LOCAL,) and oif is not None:
            links = ipr.get_links(oif)
            out_name = dict(links[0].get("attrs", [])).get("IFLA_IFNAME") if links else None
            for neigh in ipr.get_neighbours(ifindex=oif):
                if dict(neigh.get("attrs", [])).get("NDA_DST") == next_hop:
                    state = int(neigh["state"])
    return SilentFacts(
        **{
            **facts.__dict__,
            "route_kind": kind,
            "out_iface": out_name,
            "next_hop": next_hop,
            "neighbour_state": state,
        }
    )


def _main_table_kind(ipr: Any, dst: str) -> int | None:
    """The type of the main table's longest-prefix entry for dst (a blackhole route
    included, which the kernel's lookups refuse to name)."""
    target = ipaddress.IPv4Address(dst)
    best: tuple[int, int] | None = None
    for msg in ipr.get_routes(family=socket.AF_INET, table=RT_TABLE_MAIN):
        attrs = dict(msg.get("attrs", []))
        length = int(msg["dst_len"])
        net = ipaddress.IPv4Network(f"{attrs.get('RTA_DST', '0.0.0.0')}/{length}", strict=False)
        if target in net and (best is None or length > best[0]):
            best = (length, int(msg["type"]))
    return best[1] if best is not None else None


def _way_back(ipr: Any, src: str) -> str | None:
    """The interface the namespace's route to src leaves by, None when there is none."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        msg = ipr.route("get", dst=src)[0]
    except NetlinkError:
        return None
    oif = dict(msg.get("attrs", [])).get("RTA_OIF")
    links = ipr.get_links(oif) if oif is not None else []
    return dict(links[0].get("attrs", [])).get("IFLA_IFNAME") if links else None


def explain(
    ingress: Point, in_iface: str, in_index: int, seen: Headers, dst: str
) -> DropReason | None:
    """Why a packet that came into `ingress`'s namespace by `in_iface` (the layer-3
    device: a bridge port's bridge) went no further, when no rule dropped it."""
    facts = run_in_netns(
        ingress.netns.path, _read, ingress.netns.label, seen, dst, in_index, in_iface
    )
    text = describe(facts)
    return DropReason(None, text) if text is not None else None

"""A packet that vanished where no rule drops it: what the kernel's own state says.

A namespace drops packets without any firewall rule: the reverse-path filter refuses a
source not reachable back through the interface it came in by, forwarding is off, there
is no route (or a blackhole one), the next hop never answers ARP.  The kernel's route
lookup for the packet as it arrived (`ip route get DST from SRC iif IN`, the input path
with rp_filter in it) and the neighbour table say which; the sysctls say why.
`describe` is pure; `explain` reads the namespace (topology.drops asks it when no rule
explains a loss).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.model import DropReason, Headers, Point
from flowtrace.topology.kernel import RTN_BLACKHOLE, RTN_LOCAL, RTN_PROHIBIT, RTN_UNREACHABLE

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
    #: net.ipv4.conf.<in_iface>.rp_filter and .all.rp_filter; <in_iface>.forwarding.
    rp_filter: int | None = None
    rp_filter_all: int | None = None
    forwarding: int | None = None


def describe(f: SilentFacts) -> str | None:
    """The verdict's words for a drop no rule made, or None when the state shows none."""
    where = f"in {f.netns}, by no rule"
    if f.route_error in (errno.EINVAL, errno.EXDEV):
        strict = max(f.rp_filter or 0, f.rp_filter_all or 0)
        if strict:
            return (
                f"dropped {where}: the reverse-path filter refused it (the kernel's route "
                f"lookup for it, from {f.src} in by {f.in_iface}, fails: {f.src} is not "
                f"reachable back through {f.in_iface}; net.ipv4.conf.{f.in_iface}.rp_filter = "
                f"{f.rp_filter}, all = {f.rp_filter_all}, the higher applies)"
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
    if f.route_kind == RTN_BLACKHOLE:
        return f"dropped {where}: its route to {f.dst} is a blackhole route, which drops silently"
    if f.route_kind in (RTN_UNREACHABLE, RTN_PROHIBIT):
        kind = "unreachable" if f.route_kind == RTN_UNREACHABLE else "prohibit"
        return f"dropped {where}: its route to {f.dst} is of type {kind} (the kernel answers ICMP)"
    if f.neighbour_state is not None and f.neighbour_state & (NUD_INCOMPLETE | NUD_FAILED):
        state = _NUD_NAMES.get(f.neighbour_state, hex(f.neighbour_state))
        return (
            f"not sent on {where}: the next hop {f.next_hop} on {f.out_iface} does not answer "
            f"ARP (its neighbour entry is {state}); the kernel holds a few packets for it, "
            "then drops them"
        )
    return None


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
            return SilentFacts(**{**facts.__dict__, "route_error": exc.code})
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

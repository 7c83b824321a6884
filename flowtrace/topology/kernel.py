"""Read a namespace's links, addresses and routes over netlink (pyroute2's messages).

Each call enters the namespace in a short-lived thread (endpoints.netns) and returns
plain frozen records, so the path walker (topology.path) is pure logic over them and
can be unit-tested on recorded states.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from flowtrace.endpoints.netns import run_in_netns, run_where
from flowtrace.errors import FlowtraceError
from flowtrace.topology import netlink

RTN_LOCAL = 2
RTN_UNREACHABLE = 7
RTN_PROHIBIT = 8
RTN_BLACKHOLE = 6
#: rtm_protocol of a route a router advertisement installed (include/uapi/linux/rtnetlink.h).
RTPROT_RA = 9

IFF_UP = 0x1
IFF_PROMISC = 0x100


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # "veth", "bridge", "macvlan", "" (physical / unknown)
    master: int | None  # ifindex of the bridge it is enslaved to
    peer_index: int | None  # IFLA_LINK: the veth peer's ifindex (or a macvlan's parent)
    peer_nsid: int | None  # IFLA_LINK_NETNSID: which namespace the peer lives in
    mac: str | None
    up: bool
    promiscuity: int
    arptype: int = 1  # ARPHRD_ETHER = 1, ARPHRD_LOOPBACK = 772


@dataclass(frozen=True)
class IfAddress:
    ip: str
    prefixlen: int
    index: int


@dataclass(frozen=True)
class NetnsState:
    """Links and addresses of one namespace at one moment."""

    links: tuple[Link, ...]
    addresses: tuple[IfAddress, ...]

    def link(self, index: int) -> Link | None:
        for link in self.links:
            if link.index == index:
                return link
        return None

    def link_by_name(self, name: str) -> Link | None:
        for link in self.links:
            if link.name == name:
                return link
        return None

    def owns(self, ip: str) -> bool:
        return any(a.ip == ip for a in self.addresses)

    def addresses_of(self, index: int) -> tuple[str, ...]:
        return tuple(a.ip for a in self.addresses if a.index == index)

    def ports_of(self, bridge_index: int) -> tuple[Link, ...]:
        return tuple(link for link in self.links if link.master == bridge_index)


@dataclass(frozen=True)
class Route:
    """The kernel's answer to `ip route get DST` in one namespace."""

    kind: int  # RTN_* (1 unicast, 2 local, 7 unreachable ...)
    oif: int | None
    gateway: str | None
    prefsrc: str | None
    #: Who installed the route (RTPROT_*: 2 the kernel, 3 boot, 4 static, 9 RA).
    protocol: int = 0

    @property
    def from_ra(self) -> bool:
        """Learned from an IPv6 router advertisement (it lasts while the router advertises)."""
        return self.protocol == RTPROT_RA

    @property
    def local(self) -> bool:
        return self.kind == RTN_LOCAL


#: The link attributes a Link is made of: only these are decoded (pyroute2 decodes an
#: attribute when it is read, and a link carries dozens: stats, per-family settings).
LINK_ATTRS = frozenset(
    {
        "IFLA_IFNAME",
        "IFLA_LINKINFO",
        "IFLA_MASTER",
        "IFLA_LINK",
        "IFLA_LINK_NETNSID",
        "IFLA_ADDRESS",
        "IFLA_PROMISCUITY",
    }
)


def _attrs(msg: Any, wanted: frozenset[str] | None = None) -> dict[str, Any]:
    """A message's attributes by name (the first of each), decoding only `wanted` ones."""
    found: dict[str, Any] = {}
    for slot in msg.get("attrs", []):
        name = slot[0]
        if (wanted is None or name in wanted) and name not in found:
            found[name] = slot[1]
    return found


def _link_from_msg(msg: Any) -> Link:
    attrs = _attrs(msg, LINK_ATTRS)
    kind = ""
    info = attrs.get("IFLA_LINKINFO")
    if info is not None:
        kind = _attrs(info, frozenset({"IFLA_INFO_KIND"})).get("IFLA_INFO_KIND", "") or ""
    flags = int(msg.get("flags", 0))
    return Link(
        index=int(msg["index"]),
        name=str(attrs.get("IFLA_IFNAME", "")),
        kind=kind,
        master=attrs.get("IFLA_MASTER"),
        peer_index=attrs.get("IFLA_LINK"),
        peer_nsid=attrs.get("IFLA_LINK_NETNSID"),
        mac=attrs.get("IFLA_ADDRESS"),
        up=bool(flags & IFF_UP),
        promiscuity=int(attrs.get("IFLA_PROMISCUITY", 0) or 0),
        arptype=int(msg.get("ifi_type", 1)),
    )


def _read_state() -> NetnsState:
    with netlink.RouteSocket() as rs:
        links = tuple(_link_from_msg(m) for m in netlink.links(rs))
        addrs = []
        for m in netlink.addresses(rs):
            attrs = _attrs(m, frozenset({"IFA_LOCAL", "IFA_ADDRESS"}))
            ip = attrs.get("IFA_LOCAL") or attrs.get("IFA_ADDRESS")
            if ip:
                addrs.append(IfAddress(str(ip), int(m["prefixlen"]), int(m["index"])))
    return NetnsState(links, tuple(addrs))


def read_state(ns_path: str) -> NetnsState:
    """Links and addresses of the namespace at ns_path."""
    return run_in_netns(ns_path, _read_state)


def _read_states_here(paths: list[str]) -> list[NetnsState | None]:
    """read_state of each path, side by side (each in a thread of its own; None for a
    namespace that vanished or cannot be read)."""
    found: list[NetnsState | None] = [None] * len(paths)

    def one(index: int, path: str) -> None:
        try:
            found[index] = read_state(path)
        except (FlowtraceError, OSError):
            found[index] = None

    readers = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(paths)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    return found


def read_states(paths: list[str]) -> list[NetnsState | None]:
    """read_state of many namespaces of one host at once: on another host, in one call to
    its agent (a call costs a round trip; a state read, ~20 ms of pyroute2 there)."""
    if not paths:
        return []
    return run_where(paths[0], _read_states_here, paths)


def _route_get(dst: str) -> Route:
    with netlink.RouteSocket() as rs:
        try:
            msgs = netlink.route_get(rs, dst)
        except netlink.netlink_error() as exc:
            # ENETUNREACH (101) / EHOSTUNREACH (113): no route at all
            if getattr(exc, "code", None) in (101, 113, 22):
                return Route(RTN_UNREACHABLE, None, None, None)
            raise
    msg = msgs[0]
    attrs = _attrs(msg)
    return Route(
        int(msg["type"]),
        attrs.get("RTA_OIF"),
        attrs.get("RTA_GATEWAY"),
        attrs.get("RTA_PREFSRC"),
        int(msg.get("proto", 0) or 0),
    )


def route_get(ns_path: str, dst: str) -> Route:
    """What the namespace's routing table does with a packet to dst."""
    return run_in_netns(ns_path, _route_get, dst)


def _nsid_of(target_path: str) -> int | None:
    import os

    try:
        fd = os.open(target_path, os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError):
        return None  # its process exited while the path was walked: no id, not our peer
    try:
        with netlink.RouteSocket() as rs:
            msgs = netlink.netnsid(rs, fd)
    finally:
        os.close(fd)
    value = _attrs(msgs[0]).get("NETNSA_NSID") if msgs else None
    if value is None or int(value) < 0 or int(value) == 0xFFFFFFFF:
        return None
    return int(value)


def nsid_of(ns_path: str, target_path: str) -> int | None:
    """The id the namespace at ns_path gave to the namespace at target_path, if any."""
    return run_in_netns(ns_path, _nsid_of, target_path)

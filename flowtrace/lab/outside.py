"""The outside host: the namespace ft-outside joined to the host by the veth ft-uplink,
and the checks that its address range is free on this host.

It stands in for the external network, so Docker's MASQUERADE (container -> outside)
and DNAT (outside -> 203.0.113.1:8080) happen with no packet leaving the machine.  It
has no default route, so nothing in it can reach beyond the host.  A range the lab
routes to a namespace of its own must hold none of the host's addresses, routes or the
addresses it talks to (hosts entries, name servers, open connections): the macvlan
scenario's segment is checked the same way.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping

from flowtrace.endpoints.files import hosts_entries, resolv_nameservers
from flowtrace.endpoints.netns import HOST_NETNS, netns_inode, run_in_netns
from flowtrace.endpoints.sockets import parse_proc_net, remote_peers
from flowtrace.errors import FlowtraceError
from flowtrace.lab.base import (
    OUTSIDE_IFNAME,
    OUTSIDE_IP,
    OUTSIDE_NET,
    OUTSIDE_NETNS,
    OUTSIDE_NETNS_PATH,
    OUTSIDE_PREFIXLEN,
    UPLINK,
    UPLINK_ALIAS,
    UPLINK_IP,
    LabConflictError,
    OutsideHost,
)
from flowtrace.lab.links import (
    add_veth_into,
    configure_here,
    disable_ipv6,
    ensure_netns,
    foreign_netns_and_link,
    host_netns_message,
    link_facts,
    link_facts_here,
    names_the_host,
    netns_usable,
    thread_is_in,
)

HOST_NETNS_MESSAGE = host_netns_message(OUTSIDE_NETNS, OUTSIDE_NETNS_PATH)


# --- the host's use of an address range ---------------------------------------------------


def overlapping_use(
    network: str,
    addresses: Iterable[tuple[str, int, str]],
    routes: Iterable[tuple[str, int, str]],
    own_link: str,
) -> list[str]:
    """Addresses and routes of the host inside `network` that are not on `own_link`.

    Each item is (address or destination, prefix length, interface name).  A default
    route (prefix 0) covers everything and is not a conflict.
    """
    wanted = ipaddress.ip_network(network)
    found: list[str] = []
    for ip, prefixlen, ifname in addresses:
        if ifname != own_link and ipaddress.ip_address(ip) in wanted:
            found.append(f"address {ip}/{prefixlen} on {ifname}")
    for dst, prefixlen, ifname in routes:
        if prefixlen == 0 or ifname == own_link:
            continue
        route = ipaddress.ip_network(f"{dst}/{prefixlen}", strict=False)
        if route.version == wanted.version and route.overlaps(wanted):
            found.append(f"route {route} via {ifname}")
    return found


def destinations_inside(network: str, destinations: Iterable[tuple[str, str]]) -> list[str]:
    """Of (address, why the host talks to it), those inside `network`, in words."""
    wanted = ipaddress.ip_network(network)
    found: list[str] = []
    for address, why in destinations:
        try:
            inside = ipaddress.ip_address(address.split("%")[0]) in wanted
        except ValueError:
            continue
        if inside and f"{address} ({why})" not in found:
            found.append(f"{address} ({why})")
    return found


def known_destinations(
    hosts: str, resolv: str, socket_tables: Mapping[str, str]
) -> list[tuple[str, str]]:
    """(address, why) the host talks to, from its /etc/hosts and /etc/resolv.conf texts
    and its /proc/net tables ({"tcp": text, "udp": text})."""
    destinations = [(ip, f"{names[0]} in /etc/hosts") for ip, names in hosts_entries(hosts)]
    destinations += [(ip, "a name server in /etc/resolv.conf") for ip in resolv_nameservers(resolv)]
    lab_own = {OUTSIDE_IP, UPLINK_IP}  # sockets left from an earlier lab (TIME_WAIT)
    for table, text in socket_tables.items():
        destinations += [
            (ip, f"an open {table.upper()} connection")
            for ip in remote_peers(parse_proc_net(text))
            if ip not in lab_own
        ]
    return destinations


def _read(path: str) -> str:
    try:
        with open(path) as source:
            return source.read()
    except OSError:
        return ""


def host_destinations() -> list[tuple[str, str]]:
    """Addresses this host is known to talk to: hosts entries, name servers, open sockets.

    A route to a lab range would send their traffic into the lab's namespace instead.
    """
    return known_destinations(
        _read("/etc/hosts"),
        _read("/etc/resolv.conf"),
        {table: _read(f"/proc/self/net/{table}") for table in ("tcp", "udp", "tcp6", "udp6")},
    )


def host_range_conflicts(net: str, own_link: str) -> list[str]:
    """The host's addresses and main-table routes that overlap `net` (IPv4 or IPv6; other
    than on the lab's own link `own_link`), in words."""
    from pyroute2 import IPRoute

    family, anywhere = (socket.AF_INET6, "::") if ":" in net else (socket.AF_INET, "0.0.0.0")
    with IPRoute() as ipr:
        names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
        addresses = [
            (a.get("IFA_ADDRESS"), a["prefixlen"], names.get(a["index"], "?"))
            for a in ipr.get_addr(family=family)
        ]
        routes = [
            (r.get("RTA_DST") or anywhere, r["dst_len"], names.get(r.get("RTA_OIF"), "?"))
            for r in ipr.get_routes(family=family, table=254)
        ]
    return overlapping_use(net, addresses, routes, own_link)


# --- looking ------------------------------------------------------------------------------


def outside_view() -> OutsideHost:
    """The outside host as the kernel reports it now."""
    uplink = link_facts_here(UPLINK)
    present = netns_usable(OUTSIDE_NETNS_PATH)
    inside = run_in_netns(OUTSIDE_NETNS_PATH, link_facts_here, OUTSIDE_IFNAME) if present else None
    paired = bool(
        uplink
        and inside
        and uplink["peer"] == inside["index"]
        and inside["peer"] == uplink["index"]
    )
    return OutsideHost(
        present=present,
        addresses=inside["addresses"] if inside else (),
        up=bool(inside and inside["up"]),
        uplink_present=uplink is not None,
        uplink_addresses=uplink["addresses"] if uplink else (),
        uplink_up=bool(uplink and uplink["up"]),
        paired=paired,
    )


def uplink_is_foreign() -> bool:
    """A link called ft-uplink exists without the lab's ifalias: someone else's."""
    facts = link_facts_here(UPLINK)
    return facts is not None and facts["alias"] != UPLINK_ALIAS


def outside_conflicts() -> list[str]:
    """What keeps the lab from making its outside host, in words."""
    found = foreign_netns_and_link(OUTSIDE_NETNS, OUTSIDE_NETNS_PATH, UPLINK, UPLINK_ALIAS)
    for use in host_range_conflicts(OUTSIDE_NET, UPLINK):
        found.append(f"{OUTSIDE_NET} is already in use on this host ({use})")
    for use in destinations_inside(OUTSIDE_NET, host_destinations()):
        found.append(
            f"{OUTSIDE_NET} holds an address this host talks to, {use}: the lab's route "
            "to its outside host would cut it off"
        )
    return found


# --- building and removing ----------------------------------------------------------------


def refuse_host_namespace(host_inode: int) -> None:
    """Called in the thread that entered ft-outside, right before changing anything there."""
    if thread_is_in(host_inode):
        raise LabConflictError(HOST_NETNS_MESSAGE)


def _configure_inside(host_inode: int) -> list[str]:
    from pyroute2 import IPRoute

    refuse_host_namespace(host_inode)
    made: list[str] = []
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        facts = link_facts(ipr, OUTSIDE_IFNAME)
        if facts is None:
            raise FlowtraceError(f"{OUTSIDE_NETNS} has no {OUTSIDE_IFNAME} after creating it")
        if facts["kind"] != "veth":
            raise FlowtraceError(
                f"{OUTSIDE_NETNS}/{OUTSIDE_IFNAME} is not the lab's veth: run `flowtrace lab down`"
            )
        cidr = f"{OUTSIDE_IP}/{OUTSIDE_PREFIXLEN}"
        disable_ipv6(OUTSIDE_IFNAME)
        if cidr not in facts["addresses"]:
            ipr.addr("add", index=facts["index"], address=OUTSIDE_IP, prefixlen=OUTSIDE_PREFIXLEN)
            made.append(f"address {cidr} on {OUTSIDE_NETNS}/{OUTSIDE_IFNAME}")
        if not facts["up"]:
            ipr.link("set", index=facts["index"], state="up")
            made.append(f"{OUTSIDE_NETNS}/{OUTSIDE_IFNAME} up")
    return made


def _delete_inside_link(host_inode: int) -> None:
    from pyroute2 import IPRoute

    refuse_host_namespace(host_inode)
    with IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=OUTSIDE_IFNAME)[0])


def ensure_outside() -> list[str]:
    """Make or repair the namespace, the veth pair, its addresses and link states."""
    from pyroute2 import IPRoute

    view = outside_view()
    changes = [] if view.present else ensure_netns(OUTSIDE_NETNS, OUTSIDE_NETNS_PATH)
    host_inode = netns_inode(HOST_NETNS)
    if names_the_host(OUTSIDE_NETNS_PATH):
        raise LabConflictError(HOST_NETNS_MESSAGE)
    with IPRoute() as ipr:
        if view.uplink_present and not view.paired:
            ipr.link("del", index=ipr.link_lookup(ifname=UPLINK)[0])
        if not view.paired:
            stray = run_in_netns(OUTSIDE_NETNS_PATH, link_facts_here, OUTSIDE_IFNAME)
            if stray is not None:
                run_in_netns(OUTSIDE_NETNS_PATH, _delete_inside_link, host_inode)
            changes += add_veth_into(ipr, UPLINK, OUTSIDE_NETNS, OUTSIDE_IFNAME)
        changes += configure_here(
            ipr, UPLINK, UPLINK_ALIAS, UPLINK_IP, OUTSIDE_PREFIXLEN, "the lab"
        )
    changes.extend(run_in_netns(OUTSIDE_NETNS_PATH, _configure_inside, host_inode))
    return changes


def remove_outside() -> list[str]:
    """The uplink (when it is the lab's; its peer goes with it) and the namespace."""
    from pyroute2 import IPRoute, netns

    removed: list[str] = []
    with IPRoute() as ipr:
        indexes = ipr.link_lookup(ifname=UPLINK)
        if indexes and not uplink_is_foreign():
            ipr.link("del", index=indexes[0])
            removed.append(f"veth {UPLINK} <-> {OUTSIDE_NETNS}/{OUTSIDE_IFNAME}")
    if os.path.exists(OUTSIDE_NETNS_PATH):
        netns.remove(OUTSIDE_NETNS)
        removed.append(f"namespace {OUTSIDE_NETNS}")
    return removed

"""Links and namespaces as the kernel reports them (netlink), for the lab's own checks.

Plain facts (index, kind, veth peer, alias, state, IPv4 CIDRs) rather than pyroute2
messages, so the outside host and the macvlan scenario compare and print them the same
way.  pyroute2 is imported where a link is read: it is slow to import, and the CLI
imports the lab on every start.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from flowtrace.endpoints.netns import HOST_NETNS, netns_inode, run_in_netns
from flowtrace.errors import FlowtraceError

#: The namespace of the calling thread, which run_in_netns may have moved elsewhere.
THREAD_NETNS = "/proc/thread-self/ns/net"


def link_facts(ipr: Any, ifname: str, family: int = socket.AF_INET) -> dict[str, Any] | None:
    """index, kind, peer index, alias, up, CIDRs of a link (IPv4, or IPv6's global ones:
    link-local left out); None when it is absent."""
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        return None
    link = ipr.get_links(indexes[0])[0]
    cidrs = tuple(
        f"{addr.get('IFA_ADDRESS')}/{addr['prefixlen']}"
        for addr in ipr.get_addr(index=indexes[0], family=family)
        if not str(addr.get("IFA_ADDRESS", "")).lower().startswith("fe80")
    )
    info = link.get("IFLA_LINKINFO")
    return {
        "index": indexes[0],
        "kind": info.get("IFLA_INFO_KIND") if info is not None else None,
        "peer": link.get("IFLA_LINK"),
        "alias": link.get("IFLA_IFALIAS"),
        "up": bool(link["flags"] & 1),
        "addresses": cidrs,
    }


def link_facts_here(ifname: str, family: int = socket.AF_INET) -> dict[str, Any] | None:
    """link_facts in the calling thread's namespace (give it to run_in_netns for another)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return link_facts(ipr, ifname, family)


def bridge_address(ifname: str) -> str:
    """The first IPv4 address of a bridge (the gateway of its network), "" when none."""
    facts = link_facts_here(ifname)
    if not facts or not facts["addresses"]:
        return ""
    return str(facts["addresses"][0]).split("/")[0]


def disable_ipv6(ifname: str) -> None:
    """No router solicitations or MLD reports from the lab's links in captures."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    try:
        with open(path, "w") as knob:
            knob.write("1")
    except FileNotFoundError:
        pass  # IPv6 is off in this kernel: nothing to quiet


def netns_usable(path: str) -> bool:
    """The path exists and is a mounted network namespace (not a stale file)."""
    if not os.path.exists(path):
        return False
    try:
        run_in_netns(path, lambda: None)
    except (FlowtraceError, OSError):
        return False
    return True


def names_the_host(path: str) -> bool:
    """The namespace file at `path` is this host's own namespace: a lab namespace must
    never be, or every change meant for it would hit the host."""
    if not os.path.exists(path):
        return False
    return netns_inode(path) == netns_inode(HOST_NETNS)


def host_netns_message(name: str, path: str) -> str:
    """Why a lab namespace file that names this host's own namespace is refused, in words."""
    return (
        f"{path} names this host's own namespace, not a separate one: "
        f"remove it with `ip netns delete {name}`"
    )


def foreign_netns_and_link(netns: str, netns_path: str, link: str, alias: str) -> list[str]:
    """A lab namespace file that names this host's namespace, and a link of the lab's
    name without the lab's ifalias (someone else's), in words; [] when neither."""
    found = [host_netns_message(netns, netns_path)] if names_the_host(netns_path) else []
    facts = link_facts_here(link)
    if facts is not None and facts["alias"] != alias:
        found.append(f"a link named {link} exists and is not the lab's: delete it")
    return found


def thread_is_in(inode: int) -> bool:
    """The calling thread is in the namespace with this inode (the last guard before a
    thread that entered a lab namespace changes anything there)."""
    return netns_inode(THREAD_NETNS) == inode


def pid_netns_inode(pid: int) -> int:
    """Inode of process `pid`'s network namespace; 0 when it cannot be read."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return 0


def ensure_netns(name: str, path: str) -> list[str]:
    """A named namespace, made when missing (a stale file in its place is removed first)."""
    from pyroute2 import netns

    if netns_usable(path):
        return []
    if os.path.exists(path):
        os.unlink(path)  # a stale file, not a namespace
    netns.create(name)
    return [f"created namespace {name} ({path})"]


def add_veth_into(ipr: Any, ifname: str, netns_name: str, peer: str) -> list[str]:
    """A veth pair: `ifname` here, `peer` in the named namespace."""
    ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": peer, "net_ns_fd": netns_name})
    return [f"created veth {ifname} <-> {netns_name}/{peer}"]


def configure_here(
    ipr: Any, ifname: str, alias: str, ip: str, prefixlen: int, building: str
) -> list[str]:
    """The lab's end of a link: marked as the lab's by its alias, IPv6 quiet, its address,
    up.  `building` names what is being built, for the error if the link vanished."""
    index = ipr.link_lookup(ifname=ifname)[0]
    ipr.link("set", index=index, ifalias=alias)
    disable_ipv6(ifname)
    facts = link_facts(ipr, ifname)
    if facts is None:
        raise FlowtraceError(f"{ifname} vanished while {building} was being built")
    changes = []
    cidr = f"{ip}/{prefixlen}"
    if cidr not in facts["addresses"]:
        ipr.addr("add", index=index, address=ip, prefixlen=prefixlen)
        changes.append(f"address {cidr} on {ifname}")
    if not facts["up"]:
        ipr.link("set", index=index, state="up")
        changes.append(f"{ifname} up")
    return changes

"""A VXLAN device's facts, read over netlink: its VNI and port, and where it sends a MAC.

Docker's overlay driver gives each overlay network, on each host, a sandbox namespace
holding a bridge (br0) whose ports are the containers' veths and one VXLAN device
(vxlan0, made in the host's namespace, which keeps its UDP socket, and moved in).  It
writes what the kernel would otherwise learn: a permanent neighbour entry per remote
container (its overlay address -> its MAC, on vxlan0) and a forwarding entry per MAC
(-> the underlay address of the host it runs on, `bridge fdb ... dst 198.18.20.3`).
So the VTEP a frame for an address goes to is read, not guessed.

Module-level functions run through endpoints.netns.run_in_netns: in a namespace of this
host or, for "HOST:PATH", by the agent on that host.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

from flowtrace.endpoints.netns import run_in_netns

#: Linux's default VXLAN port when a device names none (IANA's 4789 is Docker's).
LINUX_DEFAULT_VXLAN_PORT = 8472


@dataclass(frozen=True)
class VxlanFacts:
    """A VXLAN device: its network identifier, UDP port, and fixed local address if any."""

    ifindex: int
    vni: int
    port: int
    local: str | None = None


def _vxlan_here(ifindex: int) -> VxlanFacts | None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.get_links(ifindex)
    if not found:
        return None
    info = found[0].get("IFLA_LINKINFO")
    if info is None or info.get("IFLA_INFO_KIND") != "vxlan":
        return None
    data: Any = info.get("IFLA_INFO_DATA")
    if data is None:
        return None
    vni = data.get("IFLA_VXLAN_ID")
    if vni is None:
        return None
    port = data.get("IFLA_VXLAN_PORT") or LINUX_DEFAULT_VXLAN_PORT
    local = data.get("IFLA_VXLAN_LOCAL")
    return VxlanFacts(ifindex, int(vni), int(port), str(local) if local else None)


def vxlan_facts(ns_path: str, ifindex: int) -> VxlanFacts | None:
    """The VXLAN settings of device `ifindex` in the namespace (None: not a VXLAN device)."""
    return run_in_netns(ns_path, _vxlan_here, ifindex)


def _vtep_here(ifindex: int, ip: str) -> tuple[str, str] | None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        mac = None
        for entry in ipr.get_neighbours(family=socket.AF_INET, ifindex=ifindex):
            if entry.get("NDA_DST") == ip and entry.get("NDA_LLADDR"):
                mac = str(entry.get("NDA_LLADDR"))
                break
        if mac is None:
            return None
        for entry in ipr.get_neighbours(family=socket.AF_BRIDGE, ifindex=ifindex):
            if str(entry.get("NDA_LLADDR", "")).lower() == mac.lower() and entry.get("NDA_DST"):
                return mac, str(entry.get("NDA_DST"))
    return None


def vtep_for(ns_path: str, ifindex: int, ip: str) -> tuple[str, str] | None:
    """(MAC, remote VTEP address) the VXLAN device `ifindex` sends a frame for `ip` to:
    its neighbour entry for ip, then its forwarding entry for that MAC; None if either is
    missing (the kernel would ask the driver, as an l2/l3 miss)."""
    return run_in_netns(ns_path, _vtep_here, ifindex, ip)

"""The parts of scenario `macvlan` that are not containers: a second host on one L2 segment.

Two Docker hosts whose containers sit on a macvlan network, built without leaving the
machine:

* host A is this host.  Host B is the network namespace ``ft-hostb``.  The veth pair
  ``ft-l2a`` (host A, 198.51.100.65/26) <-> ``ft-l2b`` (ft-hostb, .66/26) is the
  shared L2 segment (the "switch" both hosts plug into).
* the Docker network ``ftmacvlan`` (driver macvlan, parent ft-l2a, internal: no
  default route) holds host A's container ``m1`` (Docker gives it .67);
* host B's container ``m2`` is a real container with network mode none into whose
  namespace a macvlan child of ft-l2b, made inside ft-hostb, is moved as ``eth0``
  (.68/26, MAC 02:42:c6:33:64:44 as Docker would pick): what Docker would do on host
  B.  It is done again whenever m2 has a new namespace (a restart).

The addresses are a /26 of TEST-NET-2 checked unused on the host first; the capture
tests' private namespaces use 198.51.100.1 and .2 and never reach the host.  Links
cannot carry labels, so ft-l2a's ifalias marks the segment as the lab's.  Nothing
here takes the lab lock: the scenario and lab verbs hold it around these calls, which
each get a Docker client (the ScenarioParts protocol of flowtrace.lab.catalog).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flowtrace.endpoints.netns import HOST_NETNS, netns_inode, run_in_netns
from flowtrace.errors import FlowtraceError
from flowtrace.lab.base import LAB_LABEL, LAB_LABEL_VALUE, SCENARIO_LABEL, LabConflictError
from flowtrace.lab.engine import (
    foreign_network,
    get_network,
    is_lab_labelled,
    owned,
    running_pid,
    short,
)
from flowtrace.lab.links import (
    add_veth_into,
    configure_here,
    disable_ipv6,
    ensure_netns,
    foreign_netns_and_link,
    link_facts,
    link_facts_here,
    names_the_host,
    netns_usable,
    thread_is_in,
)
from flowtrace.lab.outside import destinations_inside, host_destinations, host_range_conflicts
from flowtrace.lab.render import table
from flowtrace.topology.kernel import nsid_of

SCENARIO = "macvlan"
HOSTB_NETNS = "ft-hostb"
HOSTB_NETNS_PATH = f"/run/netns/{HOSTB_NETNS}"
SEGMENT_A = "ft-l2a"
SEGMENT_B = "ft-l2b"
SEGMENT_ALIAS = "flowtrace lab macvlan segment"
NETWORK = "ftmacvlan"
SUBNET = "198.51.100.64/26"
PREFIXLEN = 26
HOST_A_IP = "198.51.100.65"
HOST_B_IP = "198.51.100.66"
M1 = "m1"
M2 = "m2"
M2_IP = "198.51.100.68"
#: Docker's way to pick a container's MAC (02:42 and the IPv4 address): stable across
#: restarts, so m1's neighbour entry for m2 stays right when m2 gets its eth0 again.
M2_MAC = "02:42:" + ":".join(f"{int(b):02x}" for b in M2_IP.split("."))
CHILD_IFNAME = "eth0"


@contextmanager
def _kernel_refusal(what: str) -> Iterator[None]:
    """A netlink refusal as one line for the user, not a traceback."""
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as exc:
        reason = os.strerror(exc.code) if exc.code else str(exc)
        raise FlowtraceError(f"the kernel refused to {what}: {reason}") from None


# --- looking --------------------------------------------------------------------------


def _segment() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """ft-l2a's and ft-l2b's facts (None: absent)."""
    a = link_facts_here(SEGMENT_A)
    usable = netns_usable(HOSTB_NETNS_PATH)
    b = run_in_netns(HOSTB_NETNS_PATH, link_facts_here, SEGMENT_B) if usable else None
    return a, b


def _paired(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return bool(a and b and a["peer"] == b["index"] and b["peer"] == a["index"])


def _macvlans() -> list[dict[str, Any]]:
    """This namespace's macvlan links: index, name, parent (IFLA_LINK), nsid, up, CIDRs."""
    from pyroute2 import IPRoute

    found: list[dict[str, Any]] = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            info = link.get("IFLA_LINKINFO")
            if info is None or info.get("IFLA_INFO_KIND") != "macvlan":
                continue
            addresses = ipr.get_addr(index=link["index"], family=socket.AF_INET)
            found.append(
                {
                    "index": link["index"],
                    "name": link.get("IFLA_IFNAME"),
                    "peer": link.get("IFLA_LINK"),
                    "nsid": link.get("IFLA_LINK_NETNSID"),
                    "up": bool(link["flags"] & 1),
                    "addresses": tuple(
                        f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in addresses
                    ),
                }
            )
    return found


def _child_of(pid: int, lower_index: int, lower_path: str) -> dict[str, Any] | None:
    """The container's macvlan whose parent is lower_index in lower_path, else None."""
    path = f"/proc/{pid}/ns/net"
    try:
        children = run_in_netns(path, _macvlans)
        want = nsid_of(path, lower_path)
    except (FlowtraceError, OSError):
        return None
    for child in children:
        if child["peer"] == lower_index and child["nsid"] == want:
            return child
    return None


def survey(client: Any) -> tuple[list[str], list[str]]:
    """The scenario's table of hosts and interfaces, and what is missing, in words."""
    a, b = _segment()
    hostb_usable = netns_usable(HOSTB_NETNS_PATH)
    missing: list[str] = []
    if not hostb_usable:
        missing.append(f"namespace {HOSTB_NETNS}")
    if a is None:
        missing.append(f"veth {SEGMENT_A}")
    elif not _paired(a, b):
        missing.append(f"veth pair {SEGMENT_A} <-> {HOSTB_NETNS}/{SEGMENT_B}")
    want_a, want_b = f"{HOST_A_IP}/{PREFIXLEN}", f"{HOST_B_IP}/{PREFIXLEN}"
    if a is not None and (want_a not in a["addresses"] or not a["up"]):
        missing.append(f"address {want_a} on {SEGMENT_A}, up")
    if b is not None and (want_b not in b["addresses"] or not b["up"]):
        missing.append(f"address {want_b} on {HOSTB_NETNS}/{SEGMENT_B}, up")
    network = get_network(client, NETWORK)
    if network is None or not is_lab_labelled(network.attrs.get("Labels")):
        missing.append(f"network {NETWORK}")
    m1_pid, m2_pid = running_pid(owned(client, M1)), running_pid(owned(client, M2))
    m1 = _child_of(m1_pid, a["index"], HOST_NETNS) if a and m1_pid else None
    m2 = _child_of(m2_pid, b["index"], HOSTB_NETNS_PATH) if b and m2_pid else None
    if m1_pid and m1 is None:
        missing.append(f"{M1}'s macvlan on {SEGMENT_A}")
    want_m2 = f"{M2_IP}/{PREFIXLEN}"
    if m2_pid and (m2 is None or want_m2 not in m2["addresses"] or not m2["up"]):
        missing.append(f"{M2}/{CHILD_IFNAME} (macvlan on {HOSTB_NETNS}/{SEGMENT_B}, {want_m2})")

    def cidrs(facts: dict[str, Any] | None) -> str:
        return ", ".join(facts["addresses"]) if facts and facts["addresses"] else "-"

    rows: list[tuple[str, ...]] = [
        ("host A", "host", SEGMENT_A if a else "missing", cidrs(a), f"veth to {SEGMENT_B}"),
        (
            "host B",
            HOSTB_NETNS_PATH if hostb_usable else "missing",
            SEGMENT_B if b else "missing",
            cidrs(b),
            f"veth to {SEGMENT_A}",
        ),
        (
            M1,
            f"/proc/{m1_pid}/ns/net" if m1_pid else "-",
            m1["name"] if m1 else "missing",
            cidrs(m1),
            f"macvlan on host/{SEGMENT_A} (Docker network {NETWORK})",
        ),
        (
            M2,
            f"/proc/{m2_pid}/ns/net" if m2_pid else "-",
            m2["name"] if m2 else "missing",
            cidrs(m2),
            f"macvlan on {HOSTB_NETNS}/{SEGMENT_B} (moved in by flowtrace)",
        ),
    ]
    return table(("MACVLAN", "NETNS", "INTERFACE", "ADDRESS", "LINK"), rows), missing


def conflicts(client: Any) -> list[str]:
    """Names and addresses the scenario needs that something else holds."""
    found = foreign_netns_and_link(HOSTB_NETNS, HOSTB_NETNS_PATH, SEGMENT_A, SEGMENT_ALIAS)
    found += foreign_network(get_network(client, NETWORK), NETWORK)
    found += [
        f"{SUBNET} is already in use on this host ({use})"
        for use in host_range_conflicts(SUBNET, SEGMENT_A)
    ]
    found += [
        f"{SUBNET} holds an address this host talks to, {use}: the scenario's segment "
        "would cut it off"
        for use in destinations_inside(SUBNET, host_destinations())
    ]
    return found


# --- building -------------------------------------------------------------------------


def _configure_b(host_inode: int) -> list[str]:
    from pyroute2 import IPRoute

    if thread_is_in(host_inode):
        raise LabConflictError(f"{HOSTB_NETNS_PATH} turned out to be this host's namespace")
    made: list[str] = []
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        facts = link_facts(ipr, SEGMENT_B)
        if facts is None or facts["kind"] != "veth":
            raise FlowtraceError(f"{HOSTB_NETNS} has no veth {SEGMENT_B} after creating it")
        disable_ipv6(SEGMENT_B)
        cidr = f"{HOST_B_IP}/{PREFIXLEN}"
        if cidr not in facts["addresses"]:
            ipr.addr("add", index=facts["index"], address=HOST_B_IP, prefixlen=PREFIXLEN)
            made.append(f"address {cidr} on {HOSTB_NETNS}/{SEGMENT_B}")
        if not facts["up"]:
            ipr.link("set", index=facts["index"], state="up")
            made.append(f"{HOSTB_NETNS}/{SEGMENT_B} up")
    return made


def _delete_b_link() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=SEGMENT_B):
            ipr.link("del", index=index)


def _ensure_segment() -> list[str]:
    from pyroute2 import IPRoute

    changes = ensure_netns(HOSTB_NETNS, HOSTB_NETNS_PATH)
    a, b = _segment()
    with IPRoute() as ipr:
        if not _paired(a, b):
            if a is not None:
                ipr.link("del", index=a["index"])
            if b is not None:
                run_in_netns(HOSTB_NETNS_PATH, _delete_b_link)
            changes += add_veth_into(ipr, SEGMENT_A, HOSTB_NETNS, SEGMENT_B)
        changes += configure_here(
            ipr, SEGMENT_A, SEGMENT_ALIAS, HOST_A_IP, PREFIXLEN, "scenario macvlan"
        )
    changes += run_in_netns(HOSTB_NETNS_PATH, _configure_b, netns_inode(HOST_NETNS))
    return changes


def _ensure_network(client: Any) -> list[str]:
    from docker.types import IPAMConfig, IPAMPool

    if get_network(client, NETWORK) is not None:
        return []
    pool = IPAMPool(
        subnet=SUBNET,
        gateway=HOST_A_IP,  # only reserved: the network is internal, no default route
        aux_addresses={HOSTB_NETNS: HOST_B_IP, M2: M2_IP},
    )
    client.networks.create(
        NETWORK,
        driver="macvlan",
        options={"parent": SEGMENT_A, "macvlan_mode": "bridge"},
        ipam=IPAMConfig(pool_configs=[pool]),
        internal=True,
        labels={LAB_LABEL: LAB_LABEL_VALUE, SCENARIO_LABEL: SCENARIO},
        check_duplicate=True,
    )
    return [f"created network {NETWORK} (macvlan, parent {SEGMENT_A}, {SUBNET})"]


def build(client: Any) -> list[str]:
    """Before the containers: host B, the segment and the Docker network on it."""
    with _kernel_refusal(f"build {HOSTB_NETNS} and the segment {SEGMENT_A} <-> {SEGMENT_B}"):
        changes = _ensure_segment()
    return changes + _ensure_network(client)


def _add_child(pid: int) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        lower = ipr.link_lookup(ifname=SEGMENT_B)[0]
        ipr.link(
            "add",
            ifname=CHILD_IFNAME,
            kind="macvlan",
            address=M2_MAC,
            link=lower,
            macvlan_mode="bridge",
            net_ns_pid=pid,
        )


def _configure_child() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        facts = link_facts(ipr, CHILD_IFNAME)
        if facts is None:
            raise FlowtraceError(f"{M2} has no {CHILD_IFNAME} after moving it in")
        disable_ipv6(CHILD_IFNAME)
        if f"{M2_IP}/{PREFIXLEN}" not in facts["addresses"]:
            ipr.addr("add", index=facts["index"], address=M2_IP, prefixlen=PREFIXLEN)
        ipr.link("set", index=facts["index"], state="up")


def _remove_child() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=CHILD_IFNAME):
            ipr.link("del", index=index)


def attach(client: Any) -> list[str]:
    """After the containers: m1's macvlan is there (restart m1 if not), m2 gets its eth0."""
    changes: list[str] = []
    b = run_in_netns(HOSTB_NETNS_PATH, link_facts_here, SEGMENT_B)
    a = link_facts_here(SEGMENT_A)
    if a is None or b is None:
        raise FlowtraceError(f"the segment {SEGMENT_A} <-> {SEGMENT_B} vanished while building")
    m1 = owned(client, M1)
    m1_pid = running_pid(m1)
    if m1 is not None and m1_pid and _child_of(m1_pid, a["index"], HOST_NETNS) is None:
        m1.restart(timeout=0)  # Docker makes its macvlan again, on the new ft-l2a
        changes.append(f"restarted container {M1} (its macvlan on {SEGMENT_A} was gone)")
    pid = running_pid(owned(client, M2))
    if not pid:
        return changes
    child = _child_of(pid, b["index"], HOSTB_NETNS_PATH)
    want = f"{M2_IP}/{PREFIXLEN}"
    if child is not None and want in child["addresses"] and child["up"]:
        return changes
    path = f"/proc/{pid}/ns/net"
    with _kernel_refusal(f"give {M2} a macvlan of {HOSTB_NETNS}/{SEGMENT_B}"):
        if child is None:
            run_in_netns(path, _remove_child)  # a stray eth0 of another kind
            run_in_netns(HOSTB_NETNS_PATH, _add_child, pid)
        run_in_netns(path, _configure_child)
    changes.append(
        f"moved a macvlan of {HOSTB_NETNS}/{SEGMENT_B} into {M2} as {CHILD_IFNAME} ({want})"
    )
    return changes


# --- removing -------------------------------------------------------------------------


def remove(client: Any) -> tuple[list[str], list[str]]:
    """The network, the segment and host B: (removed, kept with why), in words."""
    from docker.errors import APIError
    from pyroute2 import IPRoute, netns

    removed: list[str] = []
    kept: list[str] = []
    network = get_network(client, NETWORK)
    if network is not None and is_lab_labelled(network.attrs.get("Labels")):
        try:
            network.remove()
            removed.append(f"network {NETWORK}")
        except APIError as exc:
            kept.append(f"network {NETWORK} ({short(exc)})")
    a = link_facts_here(SEGMENT_A)
    if a is not None and a["alias"] == SEGMENT_ALIAS:
        with IPRoute() as ipr, _kernel_refusal(f"delete {SEGMENT_A}"):
            ipr.link("del", index=a["index"])
        removed.append(f"veth {SEGMENT_A} <-> {HOSTB_NETNS}/{SEGMENT_B}")
    if os.path.exists(HOSTB_NETNS_PATH) and not names_the_host(HOSTB_NETNS_PATH):
        netns.remove(HOSTB_NETNS)
        removed.append(f"namespace {HOSTB_NETNS}")
    return removed, kept

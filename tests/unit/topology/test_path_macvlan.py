"""The path walk over recorded macvlan states: two "hosts" joined by a veth (the shared L2
segment), a Docker macvlan container on each host's end of it.

    host A (host)                         host B (ft-hostb)
    ft-l2a 198.51.100.65/26  <-- veth -->  ft-l2b 198.51.100.66/26
      `- m1/eth0 macvlan .67                 `- m2/eth0 macvlan .68

Interface indexes collide on purpose (every container's eth0 is 2, ft-l2b is 2 in
ft-hostb) and each namespace numbers the others differently, as the kernel does, so
only IFLA_LINK together with IFLA_LINK_NETNSID names a macvlan's parent.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from flowtrace.model import Namespace
from flowtrace.topology.kernel import RTN_LOCAL, RTN_UNREACHABLE, IfAddress, Link, NetnsState, Route
from flowtrace.topology.path import find_lower, plan_path

HOST = Namespace("/proc/self/ns/net", "host", 1)
HOSTB = Namespace("/run/netns/ft-hostb", "ft-hostb", 2)
M1 = Namespace("/proc/31/ns/net", "m1", 31, "m1")
M2 = Namespace("/proc/32/ns/net", "m2", 32, "m2")
C1 = Namespace("/proc/11/ns/net", "c1", 11, "c1")

SEGMENT = "198.51.100.64/26"


def lo() -> Link:
    return Link(1, "lo", "", None, None, None, "00:00:00:00:00:00", True, 0, 772)


def link(
    index: int, name: str, kind: str, peer: int | None = None, nsid: int | None = None
) -> Link:
    return Link(index, name, kind, None, peer, nsid, f"02:00:00:00:{index:02x}:01", True, 0)


#: (namespace, namespace it names) -> the id the first gave the second
NSIDS = {
    (HOST.inode, HOSTB.inode): 5,
    (HOST.inode, M1.inode): 6,
    (HOST.inode, C1.inode): 7,
    (HOSTB.inode, HOST.inode): 0,
    (HOSTB.inode, M2.inode): 1,
    (M1.inode, HOST.inode): 0,
    (M2.inode, HOSTB.inode): 0,
    (C1.inode, HOST.inode): 0,
}


@dataclass
class Machine:
    """Recorded states and routing tables (destination net, oif, gateway per namespace)."""

    states: dict[int, NetnsState]
    routes: dict[int, list[tuple[str, int, str | None]]] = field(default_factory=dict)

    def namespaces(self) -> list[Namespace]:
        return [ns for ns in (HOST, C1, M1, M2, HOSTB) if ns.inode in self.states]

    def state(self, ns: Namespace) -> NetnsState:
        return self.states[ns.inode]

    def named(self, ns: Namespace) -> Namespace:
        return ns

    def nsid(self, ns: Namespace, target: Namespace) -> int | None:
        return NSIDS.get((ns.inode, target.inode))

    def route(self, ns: Namespace, dst: str) -> Route:
        state = self.states[ns.inode]
        if state.owns(dst):
            return Route(RTN_LOCAL, 1, None, dst)
        for net, oif, gateway in self.routes.get(ns.inode, []):
            if ipaddress.ip_address(dst) in ipaddress.ip_network(net):
                own = state.addresses_of(oif)
                return Route(1, oif, gateway, own[0] if own else None)
        return Route(RTN_UNREACHABLE, None, None, None)


def two_hosts(shim: bool = False) -> Machine:
    host_links = [
        lo(),
        link(2, "eth0", ""),
        link(3, "docker0", "bridge"),
        link(10, "vethc1", "veth", 2, 7),
        link(20, "ft-l2a", "veth", 2, 5),
    ]
    host_addresses = [
        IfAddress("192.0.2.2", 24, 2),
        IfAddress("172.17.0.1", 16, 3),
        IfAddress("198.51.100.65", 26, 20),
    ]
    host_routes: list[tuple[str, int, str | None]] = [(SEGMENT, 20, None)]
    if shim:  # the usual fix: a macvlan of host A's own on ft-l2a, with a route to m1
        host_links.append(link(21, "ft-shim", "macvlan", 20, None))
        host_addresses.append(IfAddress("198.51.100.70", 32, 21))
        host_routes.insert(0, ("198.51.100.67/32", 21, None))
    host_links[3] = Link(10, "vethc1", "veth", 3, 2, 7, "02:00:00:00:0a:01", True, 0)
    return Machine(
        {
            HOST.inode: NetnsState(tuple(host_links), tuple(host_addresses)),
            C1.inode: NetnsState(
                (lo(), link(2, "eth0", "veth", 10, 0)), (IfAddress("172.17.0.2", 16, 2),)
            ),
            M1.inode: NetnsState(
                (lo(), link(2, "eth0", "macvlan", 20, 0)), (IfAddress("198.51.100.67", 26, 2),)
            ),
            HOSTB.inode: NetnsState(
                (lo(), link(2, "ft-l2b", "veth", 20, 0)), (IfAddress("198.51.100.66", 26, 2),)
            ),
            M2.inode: NetnsState(
                (lo(), link(2, "eth0", "macvlan", 2, 0)), (IfAddress("198.51.100.68", 26, 2),)
            ),
        },
        {
            HOST.inode: host_routes,
            M1.inode: [(SEGMENT, 2, None)],
            M2.inode: [(SEGMENT, 2, None)],
            HOSTB.inode: [(SEGMENT, 2, None)],
            C1.inode: [("172.17.0.0/16", 2, None)],
        },
    )


def ids(plan) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.id for p in plan.points]


def roles(plan) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.role for p in plan.points]


def test_find_lower_follows_the_netnsid_across_colliding_indexes() -> None:
    machine = two_hosts()
    m2_eth0 = machine.state(M2).link(2)
    assert m2_eth0 is not None
    found = find_lower(machine, M2, m2_eth0)
    assert found is not None
    assert (found[0], found[1].name) == (HOSTB, "ft-l2b")
    m1_eth0 = machine.state(M1).link(2)
    assert m1_eth0 is not None
    found = find_lower(machine, M1, m1_eth0)
    assert found is not None and (found[0], found[1].name) == (HOST, "ft-l2a")


def test_container_to_container_across_the_two_hosts() -> None:
    plan = plan_path(two_hosts(), M1, "198.51.100.68")
    assert ids(plan) == ["m1/eth0", "host/ft-l2a", "ft-hostb/ft-l2b", "m2/eth0"]
    assert roles(plan) == ["source", "parent", "parent", "destination"]
    assert plan.destination == "m2/eth0" and plan.blocked is None
    assert plan.src_ip == "198.51.100.67"


def test_the_reply_direction_walks_back() -> None:
    plan = plan_path(two_hosts(), M2, "198.51.100.67")
    assert ids(plan) == ["m2/eth0", "ft-hostb/ft-l2b", "host/ft-l2a", "m1/eth0"]
    assert plan.destination == "m1/eth0"


def test_container_to_the_other_host_works() -> None:
    plan = plan_path(two_hosts(), M1, "198.51.100.66")
    assert ids(plan) == ["m1/eth0", "host/ft-l2a", "ft-hostb/ft-l2b"]
    assert roles(plan) == ["source", "parent", "destination"]
    assert plan.destination == "ft-hostb/ft-l2b" and plan.blocked is None


def test_container_to_its_own_host_is_blocked_by_the_driver() -> None:
    plan = plan_path(two_hosts(), M1, "198.51.100.65")
    assert ids(plan) == ["m1/eth0", "host/ft-l2a"]
    assert roles(plan) == ["source", "parent"]
    assert plan.destination is None
    assert plan.blocked is not None
    assert plan.blocked.neighbor == "198.51.100.65"
    why = plan.blocked.why
    assert why.startswith(
        "m1/eth0 is a macvlan child of host/ft-l2a, and 198.51.100.65 belongs to host itself"
    )
    assert "never passes frames between a child and its own parent device" in why
    assert 'macvlan "shim" interface in host on ft-l2a' in why
    assert "ip link add NAME link ft-l2a type macvlan mode bridge" in why
    assert why in plan.notes


def test_host_b_container_to_its_own_host_is_blocked_too() -> None:
    plan = plan_path(two_hosts(), M2, "198.51.100.66")
    assert ids(plan) == ["m2/eth0", "ft-hostb/ft-l2b"]
    assert plan.blocked is not None
    assert "m2/eth0 is a macvlan child of ft-hostb/ft-l2b" in plan.blocked.why
    assert "shim" in plan.blocked.why


def test_host_to_its_own_container_is_blocked() -> None:
    plan = plan_path(two_hosts(), HOST, "198.51.100.67")
    assert ids(plan) == ["host/ft-l2a"]
    assert plan.blocked is not None and plan.blocked.neighbor == "198.51.100.67"
    assert plan.blocked.why.startswith(
        "198.51.100.67 belongs to m1/eth0, a macvlan child of host/ft-l2a"
    )


def test_host_to_the_other_hosts_container_arrives_through_its_parent() -> None:
    plan = plan_path(two_hosts(), HOST, "198.51.100.68")
    assert ids(plan) == ["host/ft-l2a", "ft-hostb/ft-l2b", "m2/eth0"]
    assert roles(plan) == ["source", "parent", "destination"]
    assert plan.blocked is None


def test_a_shim_on_the_parent_is_the_fix() -> None:
    machine = two_hosts(shim=True)
    plan = plan_path(machine, HOST, "198.51.100.67")
    assert ids(plan) == ["host/ft-shim", "m1/eth0"]
    assert plan.blocked is None and plan.destination == "m1/eth0"
    plan = plan_path(machine, M1, "198.51.100.70")
    assert ids(plan) == ["m1/eth0", "host/ft-shim"]
    assert plan.blocked is None and plan.destination == "host/ft-shim"


def test_veth_paths_are_unchanged() -> None:
    plan = plan_path(two_hosts(), C1, "172.17.0.1")
    assert ids(plan) == ["c1/eth0", "host/vethc1", "host/docker0"]
    assert plan.blocked is None

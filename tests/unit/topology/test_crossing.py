"""Paths across hosts on recorded kernel state: the lab's two hosts on one LAN, a published
port on B, macvlan on the LAN, and the swarm overlay ftover with its VXLAN devices."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from flowtrace.model import Namespace
from flowtrace.topology.crossing import HostPart, TunnelHop, plan_across
from flowtrace.topology.kernel import RTN_LOCAL, RTN_UNREACHABLE, IfAddress, Link, NetnsState, Route
from flowtrace.topology.overlay import VxlanFacts


def ns(host: str, name: str, inode: int, container: str | None = None) -> Namespace:
    return Namespace(f"{host}:/proc/{inode}/ns/net", f"{name}@{host}", inode, container)


def lo() -> Link:
    return Link(1, "lo", "", None, None, None, "00:00:00:00:00:00", True, 0, 772)


def link(
    index: int,
    name: str,
    kind: str,
    peer: int | None = None,
    nsid: int | None = None,
    master: int | None = None,
) -> Link:
    return Link(
        index,
        name,
        kind,
        master,
        peer,
        nsid,
        f"02:00:00:00:{index // 256:02x}:{index % 256:02x}",
        True,
        0,
    )


@dataclass
class Recorded:
    """One host's namespaces, routes (prefix -> oif, gateway, source) and nsids."""

    states: dict[int, NetnsState]
    routes: dict[int, list[tuple[str, int, str | None, str | None]]]
    nsids: dict[tuple[int, int], int]
    order: list[Namespace] = field(default_factory=list)

    def namespaces(self) -> list[Namespace]:
        return self.order

    def state(self, n: Namespace) -> NetnsState:
        return self.states[n.inode]

    def named(self, n: Namespace) -> Namespace:
        return next((k for k in self.order if k.key == n.key), n)

    def nsid(self, n: Namespace, target: Namespace) -> int | None:
        return self.nsids.get((n.inode, target.inode))

    def route(self, n: Namespace, dst: str) -> Route:
        if self.states[n.inode].owns(dst):
            return Route(RTN_LOCAL, 1, None, None)
        best = None
        for prefix, oif, gateway, src in self.routes.get(n.inode, []):
            net = ipaddress.ip_network(prefix)
            if ipaddress.ip_address(dst) in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, Route(1, oif, gateway, src))
        return best[1] if best else Route(RTN_UNREACHABLE, None, None, None)


HA, C1, O1, SA, M1 = (
    ns("hosta", "host", 100),
    ns("hosta", "c1", 101, "c1"),
    ns("hosta", "o1", 102, "o1"),
    ns("hosta", "overlay:ftover", 103),
    ns("hosta", "m1", 104, "m1"),
)
HB, WEB, O2, SB, M2 = (
    ns("hostb", "host", 200),
    ns("hostb", "web", 201, "web"),
    ns("hostb", "o2", 202, "o2"),
    ns("hostb", "overlay:ftover", 203),
    ns("hostb", "m2", 204, "m2"),
)

HOST_A = Recorded(
    {
        HA.inode: NetnsState(
            (
                lo(),
                link(2, "eth0", "veth", 3, 0),
                link(3, "docker0", "bridge"),
                link(6, "vethc1", "veth", 2, 1, master=3),
            ),
            (IfAddress("198.18.20.2", 24, 2), IfAddress("10.213.1.1", 24, 3)),
        ),
        C1.inode: NetnsState(
            (lo(), link(2, "eth0", "veth", 6, 0)), (IfAddress("10.213.1.2", 24, 2),)
        ),
        O1.inode: NetnsState(
            (lo(), link(2, "eth0", "veth", 15, 0)), (IfAddress("10.213.129.2", 24, 2),)
        ),
        SA.inode: NetnsState(
            (
                lo(),
                link(2, "br0", "bridge"),
                link(11, "vxlan0", "vxlan", 11, 0, master=2),
                link(15, "veth1", "veth", 2, 1, master=2),
            ),
            (IfAddress("10.213.129.1", 24, 2),),
        ),
        M1.inode: NetnsState(
            (lo(), link(20, "eth0", "macvlan", 2, 0)), (IfAddress("198.18.20.64", 24, 20),)
        ),
    },
    {
        HA.inode: [
            ("198.18.20.0/24", 2, None, "198.18.20.2"),
            ("10.213.1.0/24", 3, None, "10.213.1.1"),
        ],
        C1.inode: [
            ("10.213.1.0/24", 2, None, "10.213.1.2"),
            ("0.0.0.0/0", 2, "10.213.1.1", "10.213.1.2"),
        ],
        O1.inode: [("10.213.129.0/24", 2, None, "10.213.129.2")],
        SA.inode: [("10.213.129.0/24", 2, None, "10.213.129.1")],
        M1.inode: [("198.18.20.0/24", 20, None, "198.18.20.64")],
    },
    {
        (C1.inode, HA.inode): 0,
        (HA.inode, C1.inode): 1,
        (O1.inode, SA.inode): 0,
        (SA.inode, O1.inode): 1,
        (SA.inode, HA.inode): 0,
        (M1.inode, HA.inode): 0,
    },
    [HA, C1, O1, SA, M1],
)
HOST_B = Recorded(
    {
        HB.inode: NetnsState(
            (
                lo(),
                link(2, "eth0", "veth", 4, 0),
                link(3, "docker0", "bridge"),
                link(7, "vethweb", "veth", 2, 1, master=3),
            ),
            (IfAddress("198.18.20.3", 24, 2), IfAddress("10.213.2.1", 24, 3)),
        ),
        WEB.inode: NetnsState(
            (lo(), link(2, "eth0", "veth", 7, 0)), (IfAddress("10.213.2.2", 24, 2),)
        ),
        O2.inode: NetnsState(
            (lo(), link(2, "eth0", "veth", 17, 0)), (IfAddress("10.213.129.4", 24, 2),)
        ),
        SB.inode: NetnsState(
            (
                lo(),
                link(2, "br0", "bridge"),
                link(11, "vxlan0", "vxlan", 11, 0, master=2),
                link(17, "veth1", "veth", 2, 1, master=2),
            ),
            (IfAddress("10.213.129.1", 24, 2),),
        ),
        M2.inode: NetnsState(
            (lo(), link(21, "eth0", "macvlan", 2, 0)), (IfAddress("198.18.20.80", 24, 21),)
        ),
    },
    {
        HB.inode: [
            ("198.18.20.0/24", 2, None, "198.18.20.3"),
            ("10.213.2.0/24", 3, None, "10.213.2.1"),
        ],
        WEB.inode: [
            ("10.213.2.0/24", 2, None, "10.213.2.2"),
            ("0.0.0.0/0", 2, "10.213.2.1", "10.213.2.2"),
        ],
        O2.inode: [("10.213.129.0/24", 2, None, "10.213.129.4")],
        SB.inode: [("10.213.129.0/24", 2, None, "10.213.129.1")],
        M2.inode: [("198.18.20.0/24", 21, None, "198.18.20.80")],
    },
    {
        (WEB.inode, HB.inode): 0,
        (HB.inode, WEB.inode): 1,
        (O2.inode, SB.inode): 0,
        (SB.inode, O2.inode): 1,
        (SB.inode, HB.inode): 0,
        (M2.inode, HB.inode): 0,
    },
    [HB, WEB, O2, SB, M2],
)


def published(
    n: Namespace, ip: str, port: int | None, in_iface: str | None = None
) -> tuple[str, int | None, str] | None:
    if n.is_host and n.host == "hostb" and (ip, port) == ("198.18.20.3", 8080):
        return (
            "10.213.2.2",
            80,
            "198.18.20.3:8080 is published by container web: DNAT to 10.213.2.2:80",
        )
    return None


VXLANS = {103: VxlanFacts(11, 4097, 4789), 203: VxlanFacts(11, 4097, 4789)}
VTEPS = {
    (103, "10.213.129.4"): ("02:42:0a:d5:81:04", "198.18.20.3"),
    (203, "10.213.129.2"): ("02:42:0a:d5:81:02", "198.18.20.2"),
}


def part(name: str, view: Recorded, encrypted: bool = False) -> HostPart:
    return HostPart(
        name,
        view,
        published,
        lambda n, dev: VXLANS.get(n.inode) if dev.kind == "vxlan" else None,
        lambda n, dev, ip: VTEPS.get((n.inode, ip)),
        {4097: ("ftover", encrypted)},
    )


def ids(points: list[object]) -> list[str]:
    return [getattr(p, "id") for p in points]  # noqa: B009


def test_a_containers_packet_to_anothers_published_port_crosses_the_lan() -> None:
    a, b = part("hosta", HOST_A), part("hostb", HOST_B)
    crossing = plan_across([a, b], a, C1, "198.18.20.3", 8080)
    plan = crossing.plan
    assert ids(plan.points) == [
        "c1@hosta/eth0",
        "host@hosta/vethc1",
        "host@hosta/docker0",
        "host@hosta/eth0",
        "host@hostb/eth0",
        "host@hostb/docker0",
        "host@hostb/vethweb",
        "web@hostb/eth0",
    ]
    assert [p.role for p in plan.points][3:5] == ["egress", "ingress"]
    assert plan.destination == "web@hostb/eth0"
    assert plan.redirected == ("198.18.20.3", 8080) and (plan.dst_ip, plan.dst_port) == (
        "10.213.2.2",
        80,
    )
    assert crossing.unknown is None and crossing.tunnels == []
    assert not any("cannot follow" in n or "cannot find the peer" in n for n in plan.notes)


def test_macvlan_children_on_two_hosts_meet_through_their_parents() -> None:
    a, b = part("hosta", HOST_A), part("hostb", HOST_B)
    plan = plan_across([a, b], a, M1, "198.18.20.80").plan
    assert [(p.id, p.role) for p in plan.points] == [
        ("m1@hosta/eth0", "source"),
        ("host@hosta/eth0", "parent"),
        ("host@hostb/eth0", "parent"),
        ("m2@hostb/eth0", "destination"),
    ]


def test_a_macvlan_child_cannot_reach_its_own_host_and_no_host_is_crossed() -> None:
    a, b = part("hosta", HOST_A), part("hostb", HOST_B)
    plan = plan_across([a, b], a, M1, "198.18.20.2").plan
    assert plan.blocked is not None and plan.destination is None
    assert (
        "macvlan driver never passes frames between a child and its own parent" in plan.blocked.why
    )


def test_the_overlay_is_one_journey_inner_and_outer_with_its_vni_and_network() -> None:
    a, b = part("hosta", HOST_A), part("hostb", HOST_B)
    crossing = plan_across([a, b], a, O1, "10.213.129.4")
    assert [(p.id, p.role) for p in crossing.plan.points] == [
        ("o1@hosta/eth0", "source"),
        ("overlay:ftover@hosta/veth1", "veth-peer"),
        ("overlay:ftover@hosta/br0", "bridge"),
        ("overlay:ftover@hosta/vxlan0", "vxlan"),
        ("host@hosta/eth0", "underlay"),
        ("host@hostb/eth0", "underlay"),
        ("overlay:ftover@hostb/vxlan0", "vxlan"),
        ("overlay:ftover@hostb/br0", "bridge"),
        ("overlay:ftover@hostb/veth1", "veth-peer"),
        ("o2@hostb/eth0", "destination"),
    ]
    (tunnel,) = crossing.tunnels
    assert tunnel == TunnelHop(
        4097,
        4789,
        "ftover",
        False,
        "198.18.20.2",
        "198.18.20.3",
        "hosta",
        "hostb",
        (
            "overlay:ftover@hosta/vxlan0",
            "host@hosta/eth0",
            "host@hostb/eth0",
            "overlay:ftover@hostb/vxlan0",
        ),
    )
    assert tunnel.describe() in crossing.plan.notes
    assert (
        "VXLAN VNI 4097 on UDP 4789 from 198.18.20.2 (hosta) to 198.18.20.3 (hostb)"
        in tunnel.describe()
    )


def test_an_encrypted_overlay_says_the_inner_packet_is_not_seen_on_the_underlay() -> None:
    a, b = part("hosta", HOST_A, encrypted=True), part("hostb", HOST_B, encrypted=True)
    (tunnel,) = plan_across([a, b], a, O1, "10.213.129.4").tunnels
    assert tunnel.encrypted
    assert "IPsec ESP and the inner packet cannot be seen there" in tunnel.describe()


def test_a_next_hop_no_known_host_owns_ends_the_walk_and_is_reported() -> None:
    a, b = part("hosta", HOST_A), part("hostb", HOST_B)
    crossing = plan_across([a, b], a, C1, "198.18.20.99")
    assert crossing.unknown == "198.18.20.99"
    assert crossing.plan.destination is None
    assert ids(crossing.plan.points)[-1] == "host@hosta/eth0"
    assert any(
        "belongs to no host this trace knows (hosta, hostb)" in n for n in crossing.plan.notes
    )


def test_without_the_other_host_the_overlay_stops_at_the_underlay() -> None:
    a = part("hosta", HOST_A)
    crossing = plan_across([a], a, O1, "10.213.129.4")
    assert crossing.unknown == "198.18.20.3"
    assert ids(crossing.plan.points)[-2:] == ["overlay:ftover@hosta/vxlan0", "host@hosta/eth0"]

"""The path walk on recorded kernel state: a Docker host with docker0, a user bridge,
an uplink veth to an outside namespace, and a published port."""

from __future__ import annotations

import ipaddress

import pytest

from flowtrace.errors import NoPathError
from flowtrace.model import Namespace
from flowtrace.topology.kernel import RTN_LOCAL, RTN_UNREACHABLE, IfAddress, Link, NetnsState, Route
from flowtrace.topology.path import find_peer, plan_path

HOST = Namespace("/proc/self/ns/net", "host", 1)
C1 = Namespace("/proc/11/ns/net", "c1", 11, "c1")
C2 = Namespace("/proc/12/ns/net", "c2", 12, "c2")
C3 = Namespace("/proc/13/ns/net", "c3", 13, "c3")
WEB = Namespace("/proc/14/ns/net", "web", 14, "web")
OUT = Namespace("/run/netns/ft-outside", "ft-outside", 15)
LONELY = Namespace("/proc/16/ns/net", "lonely", 16, "lonely")


def lo() -> Link:
    return Link(1, "lo", "", None, None, None, "00:00:00:00:00:00", True, 0, 772)


def veth(index: int, name: str, peer: int, nsid: int | None, master: int | None = None) -> Link:
    return Link(index, name, "veth", master, peer, nsid, f"02:00:00:00:00:{index:02x}", True, 0)


# host ifindexes: 2 eth0, 3 docker0, 4 br-lab, 10.. veths; container eth0 is always 2 inside
STATES = {
    HOST.inode: NetnsState(
        (
            lo(),
            Link(2, "eth0", "", None, None, None, "02:fc:00:00:00:01", True, 0),
            Link(3, "docker0", "bridge", None, None, None, "02:42:00:00:00:01", True, 0),
            Link(4, "br-lab", "bridge", None, None, None, "02:42:00:00:00:02", True, 0),
            veth(10, "vethc1", 2, 0, master=3),
            veth(11, "vethc2", 2, 1, master=3),
            veth(12, "vethc3", 2, 2, master=4),
            veth(13, "vethweb", 2, 3, master=3),
            veth(14, "ft-uplink", 2, 4),
        ),
        (
            IfAddress("127.0.0.1", 8, 1),
            IfAddress("192.0.2.2", 24, 2),
            IfAddress("172.17.0.1", 16, 3),
            IfAddress("172.30.0.1", 16, 4),
            IfAddress("203.0.113.1", 24, 14),
        ),
    ),
    C1.inode: NetnsState((lo(), veth(2, "eth0", 10, 0)), (IfAddress("172.17.0.2", 16, 2),)),
    C2.inode: NetnsState((lo(), veth(2, "eth0", 11, 0)), (IfAddress("172.17.0.3", 16, 2),)),
    C3.inode: NetnsState((lo(), veth(2, "eth0", 12, 0)), (IfAddress("172.30.0.2", 16, 2),)),
    WEB.inode: NetnsState((lo(), veth(2, "eth0", 13, 0)), (IfAddress("172.17.0.4", 16, 2),)),
    OUT.inode: NetnsState((lo(), veth(2, "eth0", 14, 0)), (IfAddress("203.0.113.2", 24, 2),)),
    LONELY.inode: NetnsState((lo(),), (IfAddress("127.0.0.1", 8, 1),)),
}
NSIDS = {  # what the host calls each namespace
    (HOST.inode, C1.inode): 0,
    (HOST.inode, C2.inode): 1,
    (HOST.inode, C3.inode): 2,
    (HOST.inode, WEB.inode): 3,
    (HOST.inode, OUT.inode): 4,
}


def _in(ip: str, net: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(net)


class RecordedView:
    """Routing tables of the recorded machine, answered the way `ip route get` would."""

    def namespaces(self) -> list[Namespace]:
        return [HOST, C1, C2, C3, WEB, OUT, LONELY]

    def state(self, ns: Namespace) -> NetnsState:
        return STATES[ns.inode]

    def named(self, ns: Namespace) -> Namespace:
        return ns

    def nsid(self, ns: Namespace, target: Namespace) -> int | None:
        return NSIDS.get((ns.inode, target.inode), 0 if ns.inode != HOST.inode else None)

    def route(self, ns: Namespace, dst: str) -> Route:
        state = STATES[ns.inode]
        if state.owns(dst):
            return Route(RTN_LOCAL, 1, None, dst)
        if ns.inode == HOST.inode:
            for net, oif, src in (
                ("172.17.0.0/16", 3, "172.17.0.1"),
                ("172.30.0.0/16", 4, "172.30.0.1"),
                ("203.0.113.0/24", 14, "203.0.113.1"),
            ):
                if _in(dst, net):
                    return Route(1, oif, None, src)
            return Route(1, 2, "192.0.2.1", "192.0.2.2")
        if ns.inode == LONELY.inode:
            return Route(RTN_UNREACHABLE, None, None, None)
        own = state.addresses[0]
        if ns.inode == OUT.inode:
            if _in(dst, "203.0.113.0/24"):
                return Route(1, 2, None, own.ip)
            return Route(RTN_UNREACHABLE, None, None, None)
        subnet = f"{own.ip}/{own.prefixlen}"
        if ipaddress.ip_address(dst) in ipaddress.ip_network(subnet, strict=False):
            return Route(1, 2, None, own.ip)
        gateway = "172.17.0.1" if own.ip.startswith("172.17") else "172.30.0.1"
        return Route(1, 2, gateway, own.ip)


def ids(plan) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.id for p in plan.points]


def test_container_to_container_on_docker0_crosses_five_points() -> None:
    plan = plan_path(RecordedView(), C1, "172.17.0.3")
    assert ids(plan) == ["c1/eth0", "host/vethc1", "host/docker0", "host/vethc2", "c2/eth0"]
    assert [p.role for p in plan.points] == [
        "source",
        "veth-peer",
        "bridge",
        "veth-peer",
        "destination",
    ]
    assert plan.points[2].promisc and not plan.points[1].promisc
    assert plan.destination == "c2/eth0"
    assert plan.src_ip == "172.17.0.2"


def test_host_to_container_starts_on_the_bridge() -> None:
    plan = plan_path(RecordedView(), HOST, "172.17.0.3")
    assert ids(plan) == ["host/docker0", "host/vethc2", "c2/eth0"]
    assert plan.points[0].role == "source"


def test_container_to_host_ends_on_the_bridge() -> None:
    plan = plan_path(RecordedView(), C1, "172.17.0.1")
    assert ids(plan) == ["c1/eth0", "host/vethc1", "host/docker0"]
    assert plan.destination == "host/docker0"


def test_container_to_outside_leaves_by_the_uplink() -> None:
    plan = plan_path(RecordedView(), C1, "203.0.113.2")
    assert ids(plan) == [
        "c1/eth0",
        "host/vethc1",
        "host/docker0",
        "host/ft-uplink",
        "ft-outside/eth0",
    ]
    assert plan.points[3].role == "egress"
    assert plan.destination == "ft-outside/eth0"


def test_outside_to_published_port_follows_the_redirect() -> None:
    asked: list[str | None] = []

    def redirect(
        ns: Namespace, ip: str, port: int | None, in_iface: str | None = None
    ) -> tuple[str, int, str] | None:
        asked.append(in_iface)
        if ns.label == "host" and port == 8080:
            return "172.17.0.4", 80, "published by web"
        return None

    plan = plan_path(RecordedView(), OUT, "203.0.113.1", 8080, redirect)
    assert ids(plan) == [
        "ft-outside/eth0",
        "host/ft-uplink",
        "host/docker0",
        "host/vethweb",
        "web/eth0",
    ]
    assert (plan.dst_ip, plan.dst_port) == ("172.17.0.4", 80)
    assert plan.notes == ["published by web"]
    assert asked == ["ft-uplink", "eth0"]  # PREROUTING: the interface the SYN came in by
    assert plan.redirected == ("203.0.113.1", 8080) and not plan.dnat_at_source


def test_outside_to_host_without_redirect_ends_at_the_uplink() -> None:
    plan = plan_path(RecordedView(), OUT, "203.0.113.1")
    assert ids(plan) == ["ft-outside/eth0", "host/ft-uplink"]
    assert plan.destination == "host/ft-uplink"


def test_across_two_bridges_routes_through_the_host() -> None:
    plan = plan_path(RecordedView(), C1, "172.30.0.2")
    assert ids(plan) == [
        "c1/eth0",
        "host/vethc1",
        "host/docker0",
        "host/br-lab",
        "host/vethc3",
        "c3/eth0",
    ]
    assert plan.points[3].role == "bridge"


def test_same_namespace_stays_on_lo() -> None:
    plan = plan_path(RecordedView(), C1, "172.17.0.2")
    assert ids(plan) == ["c1/lo"]
    assert plan.points[0].role == "loopback"


def test_namespace_with_only_lo_has_no_path() -> None:
    with pytest.raises(NoPathError, match="no interface but lo"):
        plan_path(RecordedView(), LONELY, "172.17.0.3")


def test_outside_has_no_route_to_a_container() -> None:
    with pytest.raises(NoPathError, match=r"ft-outside has no route to 172\.17\.0\.3"):
        plan_path(RecordedView(), OUT, "172.17.0.3")


def test_find_peer_uses_the_netnsid_when_indexes_collide() -> None:
    view = RecordedView()
    host_veth = STATES[HOST.inode].link(11)
    assert host_veth is not None
    peer = find_peer(view, HOST, host_veth)
    assert peer is not None and peer[0] == C2


def test_host_to_its_own_published_port_is_rewritten_before_any_interface() -> None:
    asked: list[tuple[str, str | None]] = []

    def redirect(
        ns: Namespace, ip: str, port: int | None, in_iface: str | None = None
    ) -> tuple[str, int, str] | None:
        asked.append((ns.label, in_iface))
        if ns.label == "host" and ip == "203.0.113.1" and port == 8080:
            return "172.17.0.4", 80, "published by web"
        return None

    plan = plan_path(RecordedView(), HOST, "203.0.113.1", 8080, redirect)
    assert asked[0] == ("host", None)  # nat OUTPUT: the host's own packet has no in-interface
    assert ids(plan) == ["host/docker0", "host/vethweb", "web/eth0"]
    assert (plan.dst_ip, plan.dst_port, plan.src_ip) == ("172.17.0.4", 80, "203.0.113.1")
    assert plan.redirected == ("203.0.113.1", 8080) and plan.dnat_at_source
    assert plan.notes[0] == "published by web, in host's nat OUTPUT before any interface"
    stays = plan_path(RecordedView(), HOST, "203.0.113.1", 9, redirect)
    assert ids(stays) == ["host/lo"] and stays.redirected is None

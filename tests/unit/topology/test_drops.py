"""Where a lost packet vanished and which filter rule dropped it, on recorded rules and
constructed kernel state (a Docker host with docker0, a user bridge and an uplink)."""

from __future__ import annotations

from pathlib import Path

from flowtrace.model import Namespace, Point
from flowtrace.topology.drops import (
    DropSite,
    arrival,
    describe_answer_drop,
    describe_drop,
    drop_site,
    vanished_in,
)
from flowtrace.topology.kernel import RTN_LOCAL, RTN_UNREACHABLE, Link, NetnsState, Route
from flowtrace.topology.netfilter import find_drop, parse_iptables_save

DATA = Path(__file__).parents[2] / "data"
PUBLISHED = parse_iptables_save((DATA / "iptables-save-docker-published.txt").read_text())
USER_BRIDGE = "br-ad42cc5d303a"

HOST = Namespace("/proc/self/ns/net", "host", 1)
C1 = Namespace("/proc/11/ns/net", "c1", 11, "c1")
C3 = Namespace("/proc/13/ns/net", "c3", 13, "c3")
OUT = Namespace("/run/netns/ft-outside", "ft-outside", 15)

HOST_STATE = NetnsState(
    (
        Link(3, "docker0", "bridge", None, None, None, None, True, 1),
        Link(4, USER_BRIDGE, "bridge", None, None, None, None, True, 1),
        Link(10, "vethc1", "veth", 3, 2, 0, None, True, 1),
        Link(12, "vethc3", "veth", 4, 2, 2, None, True, 1),
        Link(14, "ft-uplink", "veth", None, 2, 4, None, True, 0),
    ),
    (),
)


def point(ns: Namespace, ifname: str, index: int, role: str) -> Point:
    return Point(f"{ns.label}/{ifname}", ns, ifname, index, role)


#: c1 (docker0) -> c3 (the user bridge): the path flowtrace plans.
C1_TO_C3 = [
    point(C1, "eth0", 2, "source"),
    point(HOST, "vethc1", 10, "veth-peer"),
    point(HOST, "docker0", 3, "bridge"),
    point(HOST, USER_BRIDGE, 4, "bridge"),
    point(HOST, "vethc3", 12, "veth-peer"),
    point(C3, "eth0", 2, "destination"),
]
#: ft-outside -> a container on docker0 through the uplink (not a bridge port).
OUTSIDE_TO_C1 = [
    point(OUT, "eth0", 2, "source"),
    point(HOST, "ft-uplink", 14, "veth-peer"),
    point(HOST, "docker0", 3, "bridge"),
    point(HOST, "vethc1", 10, "veth-peer"),
    point(C1, "eth0", 2, "destination"),
]


def test_a_packet_that_stops_inside_the_host_vanished_there() -> None:
    for last in ("host/vethc1", "host/docker0", f"host/{USER_BRIDGE}"):
        assert vanished_in(C1_TO_C3, last) == C1_TO_C3[1]
    assert vanished_in(OUTSIDE_TO_C1, "host/ft-uplink") == OUTSIDE_TO_C1[1]


def test_a_path_that_ends_where_the_packet_came_in_ends_in_that_namespace() -> None:
    """The walk found no way on from the host (a blackhole route): the host is to blame."""
    short = C1_TO_C3[:2]
    assert vanished_in(short, "host/vethc1") == short[1]
    leaving = [*C1_TO_C3[:2], point(HOST, "ft-uplink", 14, "uplink")]
    assert vanished_in(leaving, "host/ft-uplink") is None  # seen leaving: not dropped here


def test_no_namespace_to_blame_between_namespaces_or_at_the_ends() -> None:
    # c1/eth0 -> host/vethc1 crosses a veth: nothing there drops
    assert vanished_in(C1_TO_C3, "c1/eth0") is None
    assert vanished_in(C1_TO_C3, "host/vethc3") is None
    assert vanished_in(C1_TO_C3, "c3/eth0") is None
    assert vanished_in(C1_TO_C3, "nowhere/eth9") is None
    # the source namespace let the packet out: its OUTPUT chain is not the culprit
    from_host = [point(HOST, "docker0", 3, "source"), point(HOST, "vethc1", 10, "veth-peer")]
    assert vanished_in(from_host, "host/docker0") is None


def test_a_bridge_port_enters_as_its_bridge_and_leaves_by_the_route() -> None:
    route = Route(1, 4, None, "172.30.0.1")
    site = drop_site(C1_TO_C3[1], HOST_STATE, route)
    assert site == DropSite(HOST, "docker0", USER_BRIDGE)
    assert site is not None and site.chain == "FORWARD"


def test_a_plain_veth_enters_as_itself_and_local_delivery_is_input() -> None:
    site = drop_site(OUTSIDE_TO_C1[1], HOST_STATE, Route(RTN_LOCAL, 1, None, None))
    assert site == DropSite(HOST, "ft-uplink", None)
    assert site is not None and site.chain == "INPUT"


def test_no_route_or_unknown_interface_is_not_a_filter_drop() -> None:
    assert drop_site(C1_TO_C3[1], HOST_STATE, Route(RTN_UNREACHABLE, None, None, None)) is None
    gone = point(HOST, "vethgone", 99, "veth-peer")
    assert drop_site(gone, HOST_STATE, Route(1, 4, None, None)) is None


def test_isolation_drop_is_named_with_dockers_reason() -> None:
    site = drop_site(C1_TO_C3[1], HOST_STATE, Route(1, 4, None, None))
    assert site is not None
    found = find_drop(
        PUBLISHED, 1, "172.17.0.2", "10.231.7.2", None, None, site.in_iface, site.out_iface
    )
    assert found is not None and found.certain
    rule = f"-A DOCKER-ISOLATION-STAGE-2 -o {USER_BRIDGE} -j DROP"
    assert found.rule == rule
    text = describe_drop(found, site)
    assert text.startswith(
        f"dropped in host by `{rule}`, filter chain FORWARD from docker0 to {USER_BRIDGE}: "
        "Docker isolates its bridge networks from each other (DOCKER-ISOLATION-STAGE-2, "
        "Docker before 29.0): to let containers on two networks talk, connect one of them"
    )


def test_a_chain_policy_is_explained() -> None:
    site = DropSite(HOST, "ft-uplink", "docker0")
    found = find_drop(
        PUBLISHED, "tcp", "203.0.113.2", "172.17.0.2", 5555, 81, site.in_iface, site.out_iface
    )
    assert found is not None and found.rule == "-P FORWARD DROP"
    assert (
        "from ft-uplink to docker0: no rule accepted it, so the chain's policy dropped it: "
        "Docker sets the FORWARD policy to DROP"
    ) in describe_drop(found, site)
    # when flowtrace knows why (two engines' rules in conflict), that is the reason given
    podman = DropSite(HOST, "ft-uplink", "podman0")
    assert describe_drop(found, podman, "the engines' rules conflict").endswith(
        "filter chain FORWARD from ft-uplink to podman0: the engines' rules conflict"
    )
    assert describe_drop(found.rule, podman, "the engines' rules conflict").endswith(
        "filter chain FORWARD from ft-uplink to podman0: the engines' rules conflict"
    )


def test_a_delivered_packet_arrived_at_the_destinations_first_point() -> None:
    assert arrival(C1_TO_C3, "c3/eth0") == C1_TO_C3[-1]
    # the host as destination: it entered at the veth peer, before its bridge
    to_host = [point(C1, "eth0", 2, "source"), *C1_TO_C3[1:3]]
    assert arrival(to_host, "host/docker0") == C1_TO_C3[1]
    # never left the source's namespace, or not on the path: nothing to blame
    over_lo = [point(C1, "lo", 1, "loopback")]
    assert arrival(over_lo, "c1/lo") is None
    assert arrival(C1_TO_C3, "nowhere/eth9") is None


def test_an_answer_dropped_on_output_is_worded_as_such() -> None:
    assert describe_answer_drop("-A OUTPUT -p icmp -j DROP", "c3", "eth0") == (
        "the answer was dropped in c3 by `-A OUTPUT -p icmp -j DROP`, filter chain OUTPUT to eth0"
    )
    policy = describe_answer_drop("-P OUTPUT DROP", "c3", "eth0")
    assert policy.endswith("no rule accepted it, so the chain's policy dropped it")


# --- IPv6: neighbour solicitations a firewall drops -------------------------------------------


def test_the_solicited_node_address_of_a_target() -> None:
    from flowtrace.topology.drops import solicited_node

    assert solicited_node("fd6c:6162:3600::3") == "ff02::1:ff00:3"
    assert solicited_node("2001:db8::aabb:ccdd") == "ff02::1:ffbb:ccdd"
    assert solicited_node("fe80::42:acff:fe12:3") == "ff02::1:ff12:3"


def test_an_ndp_drop_in_words() -> None:
    from flowtrace.topology.drops import describe_ndp_drop

    text = describe_ndp_drop("-A INPUT -p ipv6-icmp -j DROP", "v6b", "eth0")
    assert text.startswith(
        "v6b dropped them by `-A INPUT -p ipv6-icmp -j DROP`, filter chain INPUT"
    )
    assert "NDP (ICMPv6 types 135 and 136)" in text

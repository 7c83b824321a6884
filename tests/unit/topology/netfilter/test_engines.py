"""Rules in their engine's terms: each layout's drop, accept and NAT, on recorded firewalls."""

from __future__ import annotations

import pytest

from flowtrace.topology.netfilter import NEW, Firewall, PacketView, find_drop, traverse
from flowtrace.topology.netfilter.engines import accept_words, drop_words, nat_words, routed_words

from .conftest import recorded

HOST = frozenset({"10.247.0.1", "10.247.1.1", "10.247.2.1", "10.247.3.1", "10.247.4.1",
                  "198.51.100.233", "127.0.0.1"})  # fmt: skip
ENGINES = ["docker-20.10", "docker-28.5", "docker-29.7-iptables", "docker-29.7-nftables"]


def _words(firewall: Firewall, src: str, dst: str, in_iface: str, out_iface: str) -> str:
    found = find_drop(
        firewall, "icmp", src, dst, None, None, in_iface, out_iface, HOST, icmp_type=8
    )
    assert found is not None and found.certain
    words = drop_words(found.source, found.base, found.packet or PacketView(0))
    assert words is not None
    return words


@pytest.mark.parametrize("engine", ENGINES)
def test_cross_bridge_drops_say_what_docker_did(engine: str) -> None:
    words = _words(recorded(engine), "10.247.0.2", "10.247.1.2", "ftfw-d0", "ftfw-b1")
    if engine == "docker-20.10":
        assert words.startswith("Docker isolates its bridge networks from each other")
    else:
        assert words.startswith(
            "Docker (28.0 and later) drops packets for a container's own address"
        )
        assert "(10.247.1.2)" in words and "bridge ftfw-b1" in words


@pytest.mark.parametrize("engine", ENGINES)
def test_internal_and_icc_off_are_named_as_such(engine: str) -> None:
    firewall = recorded(engine)
    internal = _words(firewall, "10.247.1.2", "10.247.3.2", "ftfw-b1", "ftfw-int")
    assert "ftfw-int was created with `--internal`" in internal
    icc = _words(firewall, "10.247.2.2", "10.247.2.3", "ftfw-b2", "ftfw-b2")
    assert icc.startswith("inter-container communication is disabled on bridge ftfw-b2")


def test_the_forward_policy_dockers_own_and_the_per_bridge_drop() -> None:
    firewall = recorded("docker-20.10")
    # 20.10: an unpublished port of a container, straight from a neighbour: the policy
    words = _words(firewall, "198.51.100.234", "10.247.0.3", "ftfw-up", "ftfw-d0")
    assert "Docker sets the FORWARD policy to DROP" in words
    # 29.7 with nftables: a host's other bridge to a container's port nothing publishes
    nft = recorded("docker-29.7-nftables")
    # (leaving an internal network for the outside: the map of the way out decides)
    found = find_drop(
        nft, "tcp", "10.247.3.2", "198.51.100.234", 1, 81, "ftfw-int", "ftfw-up", HOST
    )
    assert found is not None and found.source is not None
    assert found.source.comment == "INTERNAL NETWORK EGRESS"
    found = find_drop(nft, "tcp", "198.51.100.234", "10.247.4.2", 1, 81, "ftfw-up", "ftfw-rt", HOST)
    assert found is not None and found.source is not None
    assert found.source.comment == "UNPUBLISHED PORT DROP"
    words = drop_words(found.source, found.base, found.packet or PacketView(0))
    assert words is not None and "10.247.4.2:81/tcp is not" in words


@pytest.mark.parametrize("engine", ["netavark-1-iptables", "netavark-2-nftables"])
def test_netavarks_isolation(engine: str) -> None:
    words = _words(recorded(engine), "10.247.1.2", "10.247.2.2", "ftfw-b1", "ftfw-b2")
    assert words.startswith("Podman's netavark isolates networks created with `--opt isolate=true`")


@pytest.mark.parametrize("engine", ["docker-28.5", "docker-29.7-iptables", "docker-29.7-nftables"])
def test_routed_mode_accepts_icmp_by_the_rule_docker_wrote_for_it(engine: str) -> None:
    packet = PacketView(1, "198.51.100.234", "10.247.4.2", None, None, "ftfw-up", "ftfw-rt", NEW,
                        HOST, icmp_type=8)  # fmt: skip
    forward = traverse(recorded(engine), packet, "forward").hook("forward")
    assert forward is not None and forward.verdict == "accept"
    chain = forward.chains[0]
    assert chain.walk is not None and chain.walk.rule is not None
    words = accept_words(chain.walk.rule, chain.base, packet)
    assert words is not None and "gateway mode `routed`" in words


def test_nat_words() -> None:
    firewall = recorded("docker-29.7-iptables")
    nat = firewall.table("nat")
    assert nat is not None
    masq, dnat = nat.chains["POSTROUTING"].rules[2], nat.chains["DOCKER"].rules[0]
    assert "Docker masquerades 10.247.0.0/24" in (nat_words(masq) or "")
    assert nat_words(dnat) == "a port published by a container (`docker run -p`, to 10.247.0.2:80)"
    mark = recorded("netavark-1-iptables").table("nat")
    assert mark is not None
    (hostport,) = mark.chains["NETAVARK-HOSTPORT-MASQ"].rules
    assert (nat_words(hostport) or "").startswith("netavark masquerades what it marked 0x2000")
    assert "route back" in routed_words("10.247.4.2", "ftfw-up")


def test_firewalld_names_the_zone_whose_interface_the_packet_came_by() -> None:
    """firewalld's base chain rejects after its zones (`reject with icmpx admin-prohibited`
    in filter_INPUT): the zone is the one filter_INPUT_ZONES sent the packet to."""
    firewall = recorded("firewalld-nftables")
    local = ["198.51.100.1"]
    found = find_drop(
        firewall, "tcp", "198.51.100.2", "198.51.100.1", 40000, 8080, "eth0", None, local
    )
    assert found is not None and found.certain and found.hook == "input"
    assert found.rule == (
        "table inet firewalld chain filter_INPUT handle 27: reject with icmpx admin-prohibited"
    )
    words = drop_words(found.source, found.base, found.packet or PacketView(0))
    assert words is not None
    assert words.startswith("firewalld's zone public rejects it: allow it in that zone")
    assert "`firewall-cmd --zone=public --add-port=PORT/PROTO`" in words
    # the zone's services are accepted: ssh passes, ping (icmp) too
    assert (
        find_drop(firewall, "tcp", "198.51.100.2", local[0], 40000, 22, "eth0", None, local) is None
    )
    assert (
        find_drop(
            firewall, "icmp", "198.51.100.2", local[0], None, None, "eth0", None, local, icmp_type=8
        )
        is None
    )

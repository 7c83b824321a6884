"""Rule matching: three-valued, as flowtrace cannot evaluate every match."""

from __future__ import annotations

from flowtrace.topology.netfilter.iptables_save import parse_rule
from flowtrace.topology.netfilter.matching import PacketView, rule_matches


def test_rule_matching_is_three_valued() -> None:
    rule = parse_rule("-A X -s 10.0.0.0/8 ! -i docker0 -p tcp --dport 80 -m set --match-set a src")
    assert rule_matches(rule, PacketView(6, "10.1.2.3", None, 1, 80, "eth0")) is None
    assert rule_matches(rule, PacketView(6, "11.1.2.3", None, 1, 80, "eth0")) is False
    assert rule_matches(rule, PacketView(6, "10.1.2.3", None, 1, 80, "docker0")) is False
    wildcard = parse_rule("-A X -i veth+ -j ACCEPT")
    assert rule_matches(wildcard, PacketView(6, in_iface="veth1a2b")) is True
    assert rule_matches(wildcard, PacketView(6, in_iface=None)) is False


def test_ipv6_prefixes_match_ipv6_addresses_only() -> None:
    rule = parse_rule("-A POSTROUTING -s fd6c:6162:3600::/64 ! -o br-6 -j MASQUERADE")
    assert rule_matches(rule, PacketView(58, "fd6c:6162:3600::2", None, out_iface="eth0")) is True
    assert rule_matches(rule, PacketView(58, "fd6c:6162:3601::2", None, out_iface="eth0")) is False
    assert rule_matches(rule, PacketView(58, "fd6c:6162:3600::2", None, out_iface="br-6")) is False
    # an IPv4 address is in no IPv6 prefix (and the other way round): never a maybe
    assert rule_matches(rule, PacketView(1, "172.18.0.2", None, out_iface="eth0")) is False
    v4 = parse_rule("-A POSTROUTING -s 172.18.0.0/16 -j MASQUERADE")
    assert rule_matches(v4, PacketView(58, "fd6c:6162:3600::2")) is False
    not_loopback = parse_rule("-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DOCKER")
    local = frozenset({"2001:db8:f6::1"})
    assert rule_matches(not_loopback, PacketView(6, None, "::1", local_addresses=local)) is False
    assert rule_matches(not_loopback, PacketView(6, None, "2001:db8:f6::1", local_addresses=local))

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

"""The iptables-save parser, on rulesets recorded from Docker 20.10 here.

tests/data/iptables-save-docker-default.txt: `iptables-save` with only the default bridge.
tests/data/iptables-save-docker-published.txt: plus a user network (br-ad42cc5d303a,
10.231.7.0/24), a container publishing 8080->80/tcp (172.17.0.2) and one publishing
5353/udp (10.231.7.2).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flowtrace.topology.netfilter.iptables_save import parse_iptables_save, parse_rule
from flowtrace.topology.netfilter.rules import RulesetFormatError

DATA = Path(__file__).resolve().parents[3] / "data"
DEFAULT = parse_iptables_save((DATA / "iptables-save-docker-default.txt").read_text())
PUBLISHED = parse_iptables_save((DATA / "iptables-save-docker-published.txt").read_text())

MASQUERADE_DEFAULT = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
PUBLISH_8080 = (
    "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80"
)


def test_recorded_default_ruleset_tables_chains_and_policies() -> None:
    assert set(DEFAULT.tables) == {"filter", "nat"}
    nat = DEFAULT.nat.chains
    assert list(nat) == ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING", "DOCKER"]
    assert nat["PREROUTING"].policy == "ACCEPT" and nat["DOCKER"].policy is None
    assert DEFAULT.filter.chains["FORWARD"].policy == "DROP"
    assert [r.text for r in DEFAULT.rules("nat")] == [
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        "-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER",
        MASQUERADE_DEFAULT,
        "-A DOCKER -i docker0 -j RETURN",
    ]
    assert len(DEFAULT.rules("filter")) == 11


def test_matches_and_targets_are_parsed() -> None:
    masquerade = DEFAULT.nat.chains["POSTROUTING"].rules[0]
    assert masquerade.target == "MASQUERADE"
    assert [(c.kind, c.negated, c.text) for c in masquerade.criteria] == [
        ("source", False, "-s 172.17.0.0/16"),
        ("out", True, "! -o docker0"),
    ]
    publish = PUBLISHED.nat.chains["DOCKER"].rules[2]
    assert publish.text == PUBLISH_8080
    assert publish.option("--to-destination") == "172.17.0.2:80"
    assert [(c.kind, c.negated) for c in publish.criteria] == [
        ("in", True),
        ("proto", False),
        ("dport", False),
    ]
    local = DEFAULT.nat.chains["OUTPUT"].rules[0]
    assert [(c.kind, c.negated, c.names) for c in local.criteria][1] == (
        "dst-type",
        False,
        ("LOCAL",),
    )
    established = DEFAULT.filter.chains["FORWARD"].rules[2]
    assert established.criteria[1].kind == "ctstate"
    assert established.criteria[1].names == ("RELATED", "ESTABLISHED")


def test_comments_counters_multiport_and_unknown_matches() -> None:
    rule = parse_rule(
        "[12:3456] -A PREROUTING -i eth0 -p tcp -m multiport --dports 80,443,8000:8100 "
        '-m mark ! --mark 0x1 -m set --match-set lb src -m comment --comment "web: to the lb" '
        "-j DNAT --to-destination 10.0.0.5-10.0.0.7"
    )
    assert rule.chain == "PREROUTING" and rule.comment == "web: to the lb"
    assert rule.text.startswith("-A PREROUTING -i eth0")
    kinds = [(c.kind, c.negated) for c in rule.criteria]
    assert kinds == [
        ("in", False),
        ("proto", False),
        ("dport", False),
        ("mark", True),
        ("unknown", False),  # --match-set lb src
    ]
    assert rule.criteria[3].mark == (1, 0xFFFFFFFF)
    assert rule.criteria[2].ports == ((80, 80), (443, 443), (8000, 8100))
    assert parse_rule("-A X -p udp --sport 1024: -j RETURN").criteria[1].ports == ((1024, 65535),)


def test_malformed_input_is_a_clear_error() -> None:
    with pytest.raises(RulesetFormatError, match="outside a table"):
        parse_iptables_save("-A POSTROUTING -j MASQUERADE\n")
    with pytest.raises(RulesetFormatError, match="cannot read"):
        parse_iptables_save("*nat\n:POSTROUTING ACCEPT [0:0]\nbogus line\nCOMMIT\n")
    with pytest.raises(RulesetFormatError):
        parse_rule('-A X -m comment --comment "unterminated')
    assert parse_iptables_save("").tables == {}
    assert parse_iptables_save("").nat.chains == {}


# --- ip6tables-save ---------------------------------------------------------------------------

#: `ip6tables-save` of Docker 20.10 with "ip6tables" and "experimental" on: a user network
#: with IPv6 (br-b251832aced5, fd6c:6162:3600::/64) and a container publishing 8086->80.
IPV6 = parse_iptables_save((DATA / "ip6tables-save-docker-ipv6.txt").read_text())
BRIDGE6 = "br-b251832aced5"


def test_ip6tables_save_reads_as_iptables_save_does() -> None:
    import ipaddress

    assert set(IPV6.tables) == {"filter", "nat"}
    assert IPV6.filter.chains["FORWARD"].policy == "DROP"
    (masquerade, hairpin) = IPV6.nat.chains["POSTROUTING"].rules
    assert masquerade.text == f"-A POSTROUTING -s fd6c:6162:3600::/64 ! -o {BRIDGE6} -j MASQUERADE"
    (source,) = [c for c in masquerade.criteria if c.kind == "source"]
    assert source.networks == (ipaddress.ip_network("fd6c:6162:3600::/64"),)
    assert [c.kind for c in hairpin.criteria] == ["source", "destination", "proto", "dport"]
    dnat = IPV6.nat.chains["DOCKER"].rules[1]
    assert dnat.option("--to-destination") == "[fd6c:6162:3600::2]:80"
    (output,) = IPV6.nat.chains["OUTPUT"].rules
    (loopback,) = [c for c in output.criteria if c.kind == "destination"]
    assert loopback.negated and loopback.networks == (ipaddress.ip_network("::1/128"),)


def test_ipv6_icmp_and_the_icmpv6_type_match() -> None:
    rule = parse_rule("-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j DROP", "filter")
    (proto, icmp_type) = rule.criteria
    assert (proto.kind, proto.proto) == ("proto", 58)
    assert (icmp_type.kind, icmp_type.names) == ("icmp-type", ("135",))

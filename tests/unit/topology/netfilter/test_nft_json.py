"""Native nftables tables read structurally, on what nft printed for the replicas' rules."""

from __future__ import annotations

import json

import pytest

from flowtrace.topology.netfilter.nft_json import parse_nft_json, rule_texts
from flowtrace.topology.netfilter.rules import NFTABLES, RulesetFormatError

from .conftest import FIREWALLS


def _docker29() -> tuple[str, str]:
    folder = FIREWALLS / "docker-29.7-nftables"
    return (folder / "nft.json").read_text(), (folder / "nft.txt").read_text()


def test_docker29s_table_chains_hooks_priorities_and_policies() -> None:
    doc, text = _docker29()
    (table,), notes = parse_nft_json(doc, rule_texts(text))
    assert (table.family, table.name, table.source) == ("ip", "docker-bridges", NFTABLES)
    assert notes == []
    raw = table.chains["raw-PREROUTING"]
    assert (raw.hook, raw.priority, raw.kind, raw.policy) == (
        "prerouting",
        -300,
        "filter",
        "ACCEPT",
    )
    forward = table.chains["filter-FORWARD"]
    assert (forward.hook, forward.priority, forward.policy) == ("forward", 0, "DROP")
    nat = table.chains["nat-POSTROUTING"]
    assert (nat.hook, nat.priority, nat.kind) == ("postrouting", 100, "nat")
    assert table.chains["filter-forward-in__ftfw-d0"].hook is None  # a regular chain


def test_rules_keep_their_printed_text_handle_and_comment() -> None:
    doc, text = _docker29()
    (table,), _ = parse_nft_json(doc, rule_texts(text))
    drop = table.chains["raw-PREROUTING"].rules[0]
    assert (
        drop.text
        == 'ip daddr 10.247.0.2 iifname != "ftfw-d0" counter drop comment "DROP DIRECT ACCESS"'
    )
    assert drop.comment == "DROP DIRECT ACCESS" and drop.target == "DROP"
    assert drop.shown.startswith("table ip docker-bridges chain raw-PREROUTING handle ")
    assert [(c.kind, c.negated) for c in drop.criteria] == [
        ("family", False),
        ("destination", False),
        ("in", True),
    ]


def test_verdict_maps_become_entries_and_dnat_its_target() -> None:
    doc, text = _docker29()
    (table,), _ = parse_nft_json(doc, rule_texts(text))
    jump_in = table.chains["filter-FORWARD"].rules[0]
    assert [(e.match.kind, e.match.names, e.target) for e in jump_in.vmap][:2] == [
        ("out", ("ftfw-d0",), "filter-forward-in__ftfw-d0"),
        ("out", ("ftfw-b1",), "filter-forward-in__ftfw-b1"),
    ]
    (dnat,) = table.chains["nat-prerouting-and-output"].rules
    assert dnat.target == "DNAT" and dnat.option("--to-destination") == "10.247.0.2:80"
    kinds = [(c.kind, c.negated) for c in dnat.criteria]
    assert kinds == [("in", True), ("proto", False), ("dport", False)]  # tcp dport implies tcp


def test_marks_sets_and_ct_mark_of_netavark() -> None:
    folder = FIREWALLS / "netavark-2-nftables"
    (table,), _ = parse_nft_json((folder / "nft.json").read_text())
    setmark = table.chains["NETAVARK-HOSTPORT-SETMARK"].rules[0]
    (effect,) = setmark.effects
    assert (effect.target, effect.source, effect.bits) == ("mark", "mark", 0x2000)
    assert effect.apply(0, 0) == 0x2000
    masq = table.chains["POSTROUTING"].rules[0]
    assert masq.criteria[0].kind == "mark" and masq.criteria[0].mark == (0x2000, 0x2000)
    dnat = table.chains["nv_2f259bab_10_247_0_0_nm24_dnat"].rules[2]
    assert [e.target for e in dnat.effects] == ["ctmark"]
    assert dnat.effects[0].apply(0x2000, 0) == 0x3000
    accept = table.chains["FORWARD"].rules[1]
    assert accept.criteria[0].kind == "ctmark" and accept.criteria[0].mark == (0x1000, 0x1000)


def test_iptables_nft_tables_are_left_to_iptables_save() -> None:
    folder = FIREWALLS / "mixed-docker-29.7-iptables-netavark-2"
    doc = (folder / "nft.json").read_text()
    skip = {("ip", "raw"), ("ip", "filter"), ("ip", "nat")}
    tables, _ = parse_nft_json(doc, rule_texts((folder / "nft.txt").read_text()), skip)
    assert [(t.family, t.name) for t in tables] == [("inet", "netavark")]


SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
DPORT = {"payload": {"protocol": "tcp", "field": "dport"}}


def test_what_flowtrace_does_not_follow_only_maybe_matches() -> None:
    doc = {"nftables": [
        {"table": {"family": "inet", "name": "t", "handle": 1}},
        {"chain": {"family": "inet", "table": "t", "name": "c", "handle": 1, "type": "filter",
                   "hook": "input", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 2, "expr": [
            {"limit": {"rate": 10, "per": "second"}}, {"drop": None}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"concat": [SADDR, DPORT]}, "right": "@pairs"}},
            {"accept": None}]}},
        {"table": {"family": "bridge", "name": "b", "handle": 2}},
        {"chain": {"family": "bridge", "table": "b", "name": "f", "handle": 1, "type": "filter",
                   "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "bridge", "table": "b", "chain": "f", "handle": 2,
                  "expr": [{"drop": None}]}},
    ]}  # fmt: skip
    (table,), notes = parse_nft_json(json.dumps(doc))
    limit, pairs = table.chains["c"].rules
    assert [c.kind for c in limit.criteria] == ["unknown"] and limit.target == "DROP"
    assert [c.kind for c in pairs.criteria] == ["unknown"]
    assert notes and "table bridge b is not modelled" in notes[0]


def test_malformed_json_is_a_clear_error() -> None:
    with pytest.raises(RulesetFormatError, match="not JSON"):
        parse_nft_json("{nope")
    with pytest.raises(RulesetFormatError, match="no `nftables` list"):
        parse_nft_json('{"something": 1}')
    assert parse_nft_json("") == ([], [])


def test_rule_texts_map_handles_to_lines() -> None:
    _, text = _docker29()
    texts = rule_texts(text)
    lines = [v for (f, t, c, _), v in texts.items() if c == "filter-FORWARD"]
    assert lines == [
        "oifname vmap @filter-forward-in-jumps",
        "iifname vmap @filter-forward-out-jumps",
    ]
    assert all(not v.endswith("{") for v in texts.values())


def test_inet_rules_match_ipv6_packets_as_the_kernel_does() -> None:
    """In an inet table `ip protocol tcp` matches IPv4 packets only (nft adds the family
    test itself), and `icmpv6 type echo-request` is type 128, not ICMP's 8: both were
    the other way round in flowtrace's reading, against what the kernel did."""
    from flowtrace.topology.netfilter.matching import PacketView, rule_matches

    doc = {"nftables": [
        {"table": {"family": "inet", "name": "t", "handle": 1}},
        {"chain": {"family": "inet", "table": "t", "name": "forward", "handle": 1,
                   "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "t", "chain": "forward", "handle": 2, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}},
                       "right": "echo-request"}}, {"drop": None}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "forward", "handle": 3, "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "protocol"}},
                       "right": "tcp"}}, {"drop": None}]}},
        {"rule": {"family": "inet", "table": "t", "chain": "forward", "handle": 4, "expr": [
            {"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                       "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, {"drop": None}]}},
    ]}  # fmt: skip
    (table,), _ = parse_nft_json(json.dumps(doc))
    echo, tcp4, not_ten = table.chains["forward"].rules
    echo6 = PacketView(58, "2001:db8:1::2", "2001:db8:2::2", icmp_type=128)
    echo4 = PacketView(1, "10.1.0.2", "10.2.0.2", icmp_type=8)
    tcp6 = PacketView(6, "2001:db8:1::2", "2001:db8:2::2", 40000, 80)
    tcp_v4 = PacketView(6, "10.1.0.2", "10.2.0.2", 40000, 80)
    assert rule_matches(echo, echo6) is True and rule_matches(echo, echo4) is False
    assert rule_matches(tcp4, tcp6) is False and rule_matches(tcp4, tcp_v4) is True
    assert rule_matches(not_ten, tcp6) is False  # not an IPv4 packet at all
    assert rule_matches(not_ten, PacketView(6, "192.168.0.1", "10.2.0.2", 1, 80)) is True

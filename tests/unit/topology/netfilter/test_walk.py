"""One base chain walked for one packet: jumps, gotos, RETURN, maps, marks, maybes."""

from __future__ import annotations

from flowtrace.topology.netfilter import PacketView, parse_iptables_save, walk_chain
from flowtrace.topology.netfilter.rules import Chain, Criterion, MapEntry, Rule, Table

RULES = parse_iptables_save("""
*mangle
:PREROUTING ACCEPT [0:0]
:TAG - [0:0]
:SKIP - [0:0]
-A PREROUTING -i eth0 -j TAG
-A PREROUTING -m mark --mark 0x10/0x10 -j ACCEPT
-A PREROUTING -j DROP
-A TAG -p tcp -g SKIP
-A TAG -j MARK --set-xmark 0x10/0x10
-A SKIP -p tcp --dport 22 -j RETURN
-A SKIP -m set --match-set admins src -j MARK --set-xmark 0x10/0x10
COMMIT
""").tables["mangle"]


def test_a_mark_set_in_a_jumped_chain_is_seen_after_it() -> None:
    walk = walk_chain(RULES, "PREROUTING", PacketView(17, "10.0.0.1", "10.0.0.2", 1, 53, "eth0"))
    assert walk.verdict == "accept" and walk.mark == 0x10 and walk.certain
    assert [s.action for s in walk.steps] == ["jump TAG", "MARK", "ACCEPT"]


def test_a_packet_starts_with_mark_zero() -> None:
    walk = walk_chain(RULES, "PREROUTING", PacketView(17, "10.0.0.1", "10.0.0.2", 1, 53, "eth1"))
    assert walk.verdict == "drop" and walk.mark == 0 and walk.certain


def test_a_goto_returns_to_the_callers_caller_and_a_maybe_mark_becomes_unknown() -> None:
    # tcp: TAG goes to SKIP; SKIP's set match is unknown, so the mark may or may not be set;
    # SKIP's end returns past TAG (its MARK never runs) to PREROUTING.
    walk = walk_chain(RULES, "PREROUTING", PacketView(6, "10.0.0.1", "10.0.0.2", 1, 80, "eth0"))
    assert walk.mark is None
    assert [s.action for s in walk.steps][:3] == ["jump TAG", "goto SKIP", "MARK"]
    assert "MARK" not in [s.action for s in walk.steps if s.depth == 1]  # TAG's own MARK
    accept = next(s for s in walk.steps if s.action == "ACCEPT")
    assert not accept.certain and accept.unknown == ("-m mark --mark 0x10/0x10",)
    assert walk.verdict == "drop" and not walk.certain  # unless the mark was set


def test_return_from_a_jumped_chain_goes_on_after_the_jump() -> None:
    walk = walk_chain(RULES, "PREROUTING", PacketView(6, "10.0.0.1", "10.0.0.2", 1, 22, "eth0"))
    assert [s.action for s in walk.steps] == ["jump TAG", "goto SKIP", "RETURN", "DROP"]
    assert walk.verdict == "drop" and walk.certain


def _map_table() -> Table:
    jump = Rule(
        "t", "base", "oifname vmap { ... }",
        vmap=(MapEntry(Criterion("out", names=("br0",)), "to-br0"),
              MapEntry(Criterion("out", names=("br1",)), "DROP")),
    )  # fmt: skip
    second = Rule("t", "base", "counter accept", target="ACCEPT")
    inside = Rule(
        "t",
        "to-br0",
        "ct state established accept",
        (Criterion("ctstate", names=("ESTABLISHED",)),),
        "ACCEPT",
    )
    chains = {
        "base": Chain("base", "DROP", (jump, second), "forward", 0, "filter"),
        "to-br0": Chain("to-br0", None, (inside,)),
    }
    return Table("t", chains, "inet", "nftables")


def test_a_verdict_map_entry_acts_as_the_rules_target() -> None:
    table = _map_table()
    to_br1 = walk_chain(table, "base", PacketView(1, "10.0.0.1", "10.0.0.2", out_iface="br1"))
    assert to_br1.verdict == "drop" and [s.action for s in to_br1.steps] == ["DROP"]
    # br0's chain does not decide a new packet: back in base, the next rule accepts
    to_br0 = walk_chain(table, "base", PacketView(1, "10.0.0.1", "10.0.0.2", out_iface="br0"))
    assert [s.action for s in to_br0.steps] == ["jump to-br0", "ACCEPT"]
    # no element for the key: the map does nothing
    other = walk_chain(table, "base", PacketView(1, "10.0.0.1", "10.0.0.2", out_iface="eth0"))
    assert (
        other.verdict == "accept" and other.rule is not None and other.rule.text == "counter accept"
    )


def test_falling_off_a_base_chain_is_its_policy() -> None:
    table = _map_table()
    walk = walk_chain(Table("t", {"base": table.chains["base"]}), "base", PacketView(1))
    assert walk.ending == "accept"  # the second rule
    empty = Table("t", {"base": Chain("base", "DROP", (), "forward", 0, "filter")})
    policy = walk_chain(empty, "base", PacketView(1))
    assert (policy.ending, policy.verdict, policy.rule) == ("policy", "drop", None)

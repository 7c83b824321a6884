"""The fwmark a packet carries into POSTROUTING, on the ruleset recorded with netavark 1.4
(Podman 4.3.1) next to Docker 20.10 here: tests/data/iptables-save-netavark-with-docker.txt
(Podman's default network 10.88.0.0/16 on podman0, a user network 10.89.0.0/24, a
container 10.88.0.4 publishing 8089 -> 80/tcp).

The marks are those of the hook model (hooks.run_hook, walk): a probe's packet starts
with mark 0, MARK rules met on its way change it, and a later `-m mark` sees the result.
"""

from __future__ import annotations

from pathlib import Path

from flowtrace.topology.netfilter.firewall import Firewall
from flowtrace.topology.netfilter.hooks import run_hook
from flowtrace.topology.netfilter.iptables_save import parse_iptables_save, parse_rule
from flowtrace.topology.netfilter.matching import PacketView, rule_matches
from flowtrace.topology.netfilter.rules import NatRuleset, Rule

DATA = Path(__file__).resolve().parents[3] / "data"
NETAVARK = parse_iptables_save((DATA / "iptables-save-netavark-with-docker.txt").read_text())
HOST = frozenset({"10.88.0.1", "10.89.0.1", "172.17.0.1", "203.0.113.1", "127.0.0.1"})


def apply_mark(mark: int, rule: Rule) -> int | None:
    """The packet's mark after a MARK rule (None: a form flowtrace does not follow)."""
    (effect,) = rule.effects
    return effect.apply(mark, 0)


def mark_before_postrouting(
    ruleset: NatRuleset, packet: PacketView, local_stack: bool = False
) -> int | None:
    """The mark the packet (as it entered) carries out of prerouting, or output for the
    namespace's own packets: what postrouting's `-m mark` sees."""
    hook = "output" if local_stack else "prerouting"
    _, after = run_hook(Firewall.from_ruleset(ruleset), hook, packet)
    return after.mark


def test_mark_targets_change_the_mark_as_iptables_does() -> None:
    setmark = parse_rule("-A X -j MARK --set-xmark 0x2000/0x2000")
    assert apply_mark(0, setmark) == 0x2000
    assert apply_mark(0x4001, setmark) == 0x6001  # xmark: clear the mask, then xor
    assert apply_mark(0xF0, parse_rule("-A X -j MARK --set-mark 0x1/0xf")) == 0xF1
    assert apply_mark(0x10, parse_rule("-A X -j MARK --or-mark 0x1")) == 0x11
    assert apply_mark(0x11, parse_rule("-A X -j MARK --and-mark 0x10")) == 0x10
    assert apply_mark(0x11, parse_rule("-A X -j MARK --xor-mark 0x1")) == 0x10
    assert apply_mark(0, parse_rule("-A X -j MARK --set-mark nonsense")) is None


def test_a_mark_match_fits_the_masked_value_and_is_unknown_without_a_mark() -> None:
    rule = parse_rule("-A X -m mark --mark 0x2000/0x2000 -j MASQUERADE")
    assert rule.criteria[0].kind == "mark"
    assert rule_matches(rule, PacketView(1, mark=0x2000)) is True
    assert rule_matches(rule, PacketView(1, mark=0x3000)) is True
    assert rule_matches(rule, PacketView(1, mark=0)) is False
    assert rule_matches(rule, PacketView(1, mark=None)) is None  # unknown after a maybe MARK
    assert rule_matches(rule, PacketView(1)) is False  # a probe carries mark 0
    whole = parse_rule("-A X -m mark ! --mark 0x1 -j ACCEPT")
    assert rule_matches(whole, PacketView(1, mark=1)) is False


def test_a_container_going_out_is_not_marked() -> None:
    packet = PacketView(1, "10.88.0.2", "203.0.113.2", in_iface="podman0", local_addresses=HOST)
    assert mark_before_postrouting(NETAVARK, packet) == 0


def test_a_container_to_its_networks_published_port_is_marked() -> None:
    """NETAVARK-DN-...: from the network's own subnet (hairpin) the packet is marked."""
    packet = PacketView(6, "10.88.0.2", "10.88.0.1", 40000, 8089, "podman0", local_addresses=HOST)
    assert mark_before_postrouting(NETAVARK, packet) == 0x2000


def test_the_outside_to_a_published_port_is_not_marked() -> None:
    packet = PacketView(
        6, "203.0.113.2", "203.0.113.1", 40000, 8089, "ft-uplink", local_addresses=HOST
    )
    assert mark_before_postrouting(NETAVARK, packet) == 0


def test_the_hosts_own_connection_to_loopback_is_marked_in_output() -> None:
    packet = PacketView(6, "127.0.0.1", "127.0.0.1", 40000, 8089, local_addresses=HOST)
    assert mark_before_postrouting(NETAVARK, packet, local_stack=True) == 0x2000


def test_a_mark_rule_that_only_maybe_fits_makes_the_mark_unknown() -> None:
    ruleset = parse_iptables_save(
        "*mangle\n:PREROUTING ACCEPT [0:0]\n"
        "-A PREROUTING -m set --match-set lab src -j MARK --set-mark 0x1\nCOMMIT\n"
    )
    assert (
        mark_before_postrouting(ruleset, PacketView(1, "10.0.0.1", "10.0.0.2", in_iface="x"))
        is None
    )

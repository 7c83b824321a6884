"""The firewall's rules as flowtrace models them, and which rule rewrote or dropped a packet.

rules: the model (tables, chains, rules, matches); iptables_save: its parser;
matching: whether a rule fits a packet and the kernel's walk through chains;
explain: NAT and drop attribution; read: running iptables-save in a namespace.
Pure code except read.  The names callers use are re-exported here.
"""

from __future__ import annotations

from flowtrace.topology.netfilter.explain import attribute, explains, find_drop_rule
from flowtrace.topology.netfilter.iptables_save import parse_iptables_save, parse_rule
from flowtrace.topology.netfilter.matching import (
    PacketView,
    Tristate,
    rule_matches,
    walk,
    walk_chain,
)
from flowtrace.topology.netfilter.read import read_ruleset
from flowtrace.topology.netfilter.rules import (
    PROTOCOLS,
    Chain,
    Criterion,
    NatRuleset,
    Rule,
    RulesetFormatError,
    Table,
)

__all__ = [
    "PROTOCOLS",
    "Chain",
    "Criterion",
    "NatRuleset",
    "PacketView",
    "Rule",
    "RulesetFormatError",
    "Table",
    "Tristate",
    "attribute",
    "explains",
    "find_drop_rule",
    "parse_iptables_save",
    "parse_rule",
    "read_ruleset",
    "rule_matches",
    "walk",
    "walk_chain",
]

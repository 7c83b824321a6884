"""The firewall as flowtrace models it, and which rule rewrote or dropped a packet.

rules: the model (tables, chains, rules, matches, mark effects, verdict maps);
iptables_save and nft_json: its parsers; matching: whether a rule fits a packet;
walk: one base chain for one packet; firewall: one namespace's tables of every
backend and the base chains at each hook; hooks: a packet's way through a
namespace's hooks; explain: NAT and drop attribution; engines: what a rule means in
Docker's, Podman's or firewalld's terms; read: running the readers in a namespace.
Pure code except read.  The names callers use are re-exported here, each loaded on
first use (PEP 562): a trace that reads no rules imports only the submodule it asks for
(watch, for the rules' fingerprints), not the model (80 ms of imports on the 2-core VM).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flowtrace.topology.netfilter.explain import (
        Attribution,
        DropFinding,
        attribute,
        attribute_detail,
        explains,
        find_drop,
        find_drop_rule,
        first_drop,
        way_of,
    )
    from flowtrace.topology.netfilter.firewall import HOOKS, BaseChain, Firewall
    from flowtrace.topology.netfilter.hooks import (
        ChainVisit,
        HookVisit,
        NamespacePass,
        Rewrite,
        run_hook,
        traverse,
    )
    from flowtrace.topology.netfilter.iptables_save import parse_iptables_save, parse_rule
    from flowtrace.topology.netfilter.matching import NEW, PacketView, Tristate, rule_matches
    from flowtrace.topology.netfilter.nft_json import parse_nft_json, rule_texts
    from flowtrace.topology.netfilter.read import read_firewall, read_ruleset
    from flowtrace.topology.netfilter.rules import (
        PROTOCOLS,
        Chain,
        Criterion,
        NatRuleset,
        Rule,
        RulesetFormatError,
        Table,
    )
    from flowtrace.topology.netfilter.walk import ChainWalk, Step, walk_chain

#: Where each name below lives.
_HOMES = {
    **dict.fromkeys(
        (
            "Attribution",
            "DropFinding",
            "attribute",
            "attribute_detail",
            "explains",
            "find_drop",
            "find_drop_rule",
            "first_drop",
            "way_of",
        ),
        "flowtrace.topology.netfilter.explain",
    ),
    **dict.fromkeys(("BaseChain", "Firewall", "HOOKS"), "flowtrace.topology.netfilter.firewall"),
    **dict.fromkeys(
        ("ChainVisit", "HookVisit", "NamespacePass", "Rewrite", "run_hook", "traverse"),
        "flowtrace.topology.netfilter.hooks",
    ),
    **dict.fromkeys(
        ("parse_iptables_save", "parse_rule"), "flowtrace.topology.netfilter.iptables_save"
    ),
    **dict.fromkeys(
        ("NEW", "PacketView", "Tristate", "rule_matches"), "flowtrace.topology.netfilter.matching"
    ),
    **dict.fromkeys(("parse_nft_json", "rule_texts"), "flowtrace.topology.netfilter.nft_json"),
    **dict.fromkeys(("read_firewall", "read_ruleset"), "flowtrace.topology.netfilter.read"),
    **dict.fromkeys(
        ("Chain", "Criterion", "NatRuleset", "PROTOCOLS", "Rule", "RulesetFormatError", "Table"),
        "flowtrace.topology.netfilter.rules",
    ),
    **dict.fromkeys(("ChainWalk", "Step", "walk_chain"), "flowtrace.topology.netfilter.walk"),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'flowtrace.topology.netfilter' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


__all__ = [
    "HOOKS",
    "NEW",
    "PROTOCOLS",
    "Attribution",
    "BaseChain",
    "Chain",
    "ChainVisit",
    "ChainWalk",
    "Criterion",
    "DropFinding",
    "Firewall",
    "HookVisit",
    "NamespacePass",
    "NatRuleset",
    "PacketView",
    "Rewrite",
    "Rule",
    "RulesetFormatError",
    "Step",
    "Table",
    "Tristate",
    "attribute",
    "attribute_detail",
    "explains",
    "find_drop",
    "find_drop_rule",
    "first_drop",
    "parse_iptables_save",
    "parse_nft_json",
    "parse_rule",
    "read_firewall",
    "read_ruleset",
    "rule_matches",
    "rule_texts",
    "run_hook",
    "traverse",
    "walk_chain",
    "way_of",
]

"""Whose rules these are: the chains Docker and netavark (Podman) write, what each is for,
and what happens when both engines' rules meet on one host (pure).

netavark names a network's chains after the first 13 hex digits (upper case) of the
SHA-512 of the network's name: NETAVARK-<hash> (its MASQUERADE for what leaves the
network) and NETAVARK-DN-<hash> (the DNAT of its published ports); the
NETAVARK-HOSTPORT-* chains serve every network's published ports, and NETAVARK_FORWARD
accepts, in the filter table, what leaves a network and what answers it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from flowtrace.topology.netfilter.firewall import Firewall
from flowtrace.topology.netfilter.rules import NatRuleset, Table

_CHAIN = re.compile(r"-A (\S+)")
#: A native nftables rule as flowtrace shows it: `table inet netavark chain X handle 7: ...`.
_NFT_CHAIN = re.compile(r"table \S+ \S+ chain (\S+)")
_NETAVARK_NETWORK = re.compile(r"^NETAVARK-(DN-)?([0-9A-F]{13})$")


def netavark_hash(network: str) -> str:
    """The part of a netavark chain's name that stands for `network`."""
    return hashlib.sha512(network.encode()).hexdigest()[:13].upper()


def rule_chain(rule: str) -> str | None:
    """The chain a rule's text (`-A CHAIN ...`, or nft's `table F T chain CHAIN ...`)
    belongs to."""
    found = _CHAIN.match(rule) or _NFT_CHAIN.match(rule)
    return found.group(1) if found else None


def chain_purpose(chain: str, networks: Iterable[str] = ()) -> str | None:
    """What an engine's chain is for, in words, or None for chains of neither engine.

    `networks`: the names of Podman's networks, to name the one a NETAVARK-<hash> chain
    belongs to.
    """
    found = _NETAVARK_NETWORK.match(chain)
    if found is not None:
        by_hash = {netavark_hash(name): name for name in networks}
        network = by_hash.get(found.group(2))
        which = f"Podman network {network}" if network else "a Podman network"
        if found.group(1):
            return f"{chain} is netavark's chain for the published ports of {which} (DNAT)"
        return f"{chain} is netavark's chain for {which}: it masquerades what leaves the network"
    if chain == "NETAVARK-HOSTPORT-DNAT":
        return f"{chain} is netavark's entry to the DNAT of every Podman published port"
    if chain == "NETAVARK-HOSTPORT-SETMARK":
        return f"{chain} marks (0x2000) what a container sends to a port its own network publishes"
    if chain == "NETAVARK-HOSTPORT-MASQ":
        return f"{chain} masquerades what netavark marked 0x2000 (a published port's hairpin)"
    if chain == "NETAVARK_FORWARD":
        return (
            f"{chain} is netavark's forward filter: it accepts what leaves a Podman network "
            "and what answers it"
        )
    return None


def rule_notes(rules: Iterable[str | None], networks: Iterable[str] = ()) -> list[str]:
    """The purpose of each engine chain the given rules are in, once each."""
    names = list(networks)
    notes: list[str] = []
    for rule in rules:
        chain = rule_chain(rule or "")
        purpose = chain_purpose(chain, names) if chain else None
        if purpose and purpose not in notes:
            notes.append(purpose)
    return notes


def _filter(rules: NatRuleset | Firewall) -> Table:
    """iptables' filter table (of the backend holding netavark's chains, if two do)."""
    if isinstance(rules, NatRuleset):
        return rules.filter
    found = [t for t in rules.tables if t.name == "filter" and t.family == "ip"]
    found = [t for t in found if t.source != "nftables"]
    for table in found:
        if "NETAVARK_FORWARD" in table.chains:
            return table
    return found[0] if found else Table("filter")


def both_engines(ruleset: NatRuleset | Firewall) -> bool:
    """Docker's and netavark's chains are both in the filter table."""
    chains = _filter(ruleset).chains
    return "NETAVARK_FORWARD" in chains and any(name.startswith("DOCKER") for name in chains)


def forward_conflict(
    rule: str, ruleset: NatRuleset | Firewall, out_iface: str | None
) -> str | None:
    """Why Docker's FORWARD policy dropped a packet netavark would have let through, in
    words, when that is what happened (else None).

    Docker sets the filter FORWARD policy to DROP and accepts only for its own bridges;
    netavark 1.4 accepts in NETAVARK_FORWARD only what comes from its networks or
    answers them, and leaves a new connection to a published port to the policy.
    """
    if rule != "-P FORWARD DROP" or not both_engines(ruleset):
        return None
    forward = _filter(ruleset).chains["NETAVARK_FORWARD"]
    sources = [
        c.text.split()[-1]
        for r in forward.rules
        for c in r.criteria
        if c.kind == "source" and not c.negated and r.target == "ACCEPT"
    ]
    towards = f" to {out_iface}" if out_iface else ""
    return (
        f"Docker set FORWARD's policy to DROP and accepts only for its own bridges; "
        f"netavark's NETAVARK_FORWARD accepts only what leaves its networks "
        f"({', '.join(sources) or 'none'}) or answers them, so a new connection from "
        f"elsewhere{towards} (a Podman published port from outside) falls to Docker's "
        "policy: the two engines' rules conflict on this host"
    )

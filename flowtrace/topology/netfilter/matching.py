"""Whether a rule fits a packet, and the walk through a table's chains the kernel makes.

Matches flowtrace cannot evaluate (sets, limits, a mark it does not know...) count as "maybe": a
maybe-match can still be the answer when its target explains what was seen, but
never hides the rules after it (a RETURN or ACCEPT must match for certain).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from flowtrace.topology.netfilter.rules import Criterion, Rule, Table

#: The conntrack state of a connection's first packet, the one nat rules see.
NEW = "NEW"

#: True: matches; False: does not; None: flowtrace cannot tell.
Tristate = bool | None


@dataclass(frozen=True)
class PacketView:
    """The packet as a chain sees it: None where a field is unknown.

    An interface of None means there is none at that hook (no input interface for
    locally generated packets, no output interface before routing), which is how
    the kernel matches `-i`/`-o` there.  An empty `local_addresses` means unknown,
    and so does a `mark` of None (the packet's fwmark, which MARK targets set).
    """

    proto: int
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    in_iface: str | None = None
    out_iface: str | None = None
    ctstate: str = NEW
    local_addresses: frozenset[str] = frozenset()
    mark: int | None = None


def rule_matches(rule: Rule, packet: PacketView) -> Tristate:
    """Whether every match of the rule fits the packet (None: some cannot be told)."""
    result: Tristate = True
    for criterion in rule.criteria:
        fits = _fits(criterion, packet)
        if fits is not None and criterion.negated:
            fits = not fits
        if fits is False:
            return False
        if fits is None:
            result = None
    return result


def _fits(c: Criterion, p: PacketView) -> Tristate:
    kind = c.kind
    if kind == "source" or kind == "destination":
        address = p.src if kind == "source" else p.dst
        if address is None:
            return None
        ip = ipaddress.ip_address(address)
        return any(ip in net for net in c.networks)
    if kind == "in" or kind == "out":
        return _iface_fits(c.names[0], p.in_iface if kind == "in" else p.out_iface)
    if kind == "proto":
        return c.proto == 0 or c.proto == p.proto
    if kind == "sport" or kind == "dport" or kind == "port":
        ports = {"sport": (p.sport,), "dport": (p.dport,), "port": (p.sport, p.dport)}[kind]
        known = [port for port in ports if port is not None]
        if len(known) < len(ports):
            return None
        return any(low <= port <= high for port in known for low, high in c.ports)
    if kind == "dst-type" or kind == "src-type":
        return _address_type_fits(c.names, p.dst if kind == "dst-type" else p.src, p)
    if kind == "ctstate":
        return p.ctstate in c.names if p.ctstate else None
    if kind == "mark" and c.mark is not None:
        return None if p.mark is None else p.mark & c.mark[1] == c.mark[0]
    return None


def _iface_fits(pattern: str, iface: str | None) -> bool:
    name = iface or ""
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _address_type_fits(types: tuple[str, ...], address: str | None, p: PacketView) -> Tristate:
    if address is None:
        return None
    ip = ipaddress.ip_address(address)
    answers: list[Tristate] = []
    for kind in types:
        if kind == "LOCAL":
            if ip.is_loopback or address in p.local_addresses:
                answers.append(True)
            else:
                answers.append(False if p.local_addresses else None)
        elif kind == "MULTICAST":
            answers.append(ip.is_multicast)
        elif kind == "UNICAST":
            answers.append(None if not ip.is_multicast else False)
        else:
            answers.append(None)
    if True in answers:
        return True
    return None if None in answers else False


Outcome = Literal["found", "stop", "continue"]
Decide = Callable[[Rule, bool], Outcome]
#: How a walk ended: at a rule `decide` found, stopped (an ACCEPT), returned, or off the end.
WalkStatus = Literal["found", "stop", "return", "fallthrough"]
_MAX_DEPTH = 32


def walk(table: Table, chain: str, packet: PacketView, decide: Decide) -> Rule | None:
    """Walk `chain` as the kernel would; return the rule `decide` calls "found".

    decide(rule, certain) is asked about every rule whose matches fit (certainly or
    maybe) and whose target is not a chain: "found" ends the walk with that rule,
    "stop" ends it with nothing (an ACCEPT), "continue" goes on.
    """
    status, rule = walk_chain(table, chain, packet, decide)
    if status == "found":
        return rule
    return None


def walk_chain(
    table: Table, chain: str, packet: PacketView, decide: Decide
) -> tuple[WalkStatus, Rule | None]:
    """Like walk, and how the walk ended: a drop by the chain's policy is one that fell off."""
    return _walk(table, chain, packet, decide, 0)


def _walk(
    table: Table, name: str, packet: PacketView, decide: Decide, depth: int
) -> tuple[WalkStatus, Rule | None]:
    chain = table.chains.get(name)
    if chain is None or depth > _MAX_DEPTH:
        return "fallthrough", None
    for rule in chain.rules:
        fits = rule_matches(rule, packet)
        if fits is False:
            continue
        certain = fits is True
        target = rule.target
        if target is not None and target in table.chains:
            status, found = _walk(table, target, packet, decide, depth + 1)
            if status == "found" or (status == "stop" and certain):
                return status, found
            if rule.goto and certain:
                return "return", None
            continue
        if target == "RETURN":
            if certain:
                return "return", None
            continue
        outcome = decide(rule, certain)
        if outcome == "found":
            return "found", rule
        if outcome == "stop":
            return "stop", None
    return "fallthrough", None

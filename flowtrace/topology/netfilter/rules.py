"""The rule model of the firewall: tables of chains of rules, each rule's matches parsed.

Readers (iptables_save for iptables' tables, nft_json for native nftables tables) turn
what the kernel holds into these values; the matcher (matching), the walk (walk, hooks)
and the explanations (explain, engines) work on them alone, whatever they were read
from.  A rule keeps the text the system prints for it, so what flowtrace names is what
the user finds in `iptables-save` or `nft -a list ruleset`.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from flowtrace.errors import FlowtraceError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]
ALL_BITS = 0xFFFFFFFF

#: Protocol names iptables-save and nft print, and their numbers.
PROTOCOLS = {
    "all": 0,
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "icmp6": 58,
    "sctp": 132,
    "udplite": 136,
}

#: Where a table's rules come from: the three ways rules reach the kernel.
IPTABLES_NFT = "iptables-nft"
IPTABLES_LEGACY = "iptables-legacy"
NFTABLES = "nftables"


@dataclass(frozen=True)
class Criterion:
    """One match of a rule, parsed into the field its kind uses.

    kinds: source/destination (networks), in/out (names: interface patterns, `+` a
    wildcard), proto (proto, or protos for a set), sport/dport/port (ports),
    dst-type/src-type, ctstate, ctstatus and icmp-type (names), mark and ctmark
    (mark: value and mask, matching when `x & mask == value`), and "unknown" for
    anything flowtrace does not evaluate (names: its arguments).
    """

    kind: str
    negated: bool = False
    networks: tuple[IPNetwork, ...] = ()
    ports: tuple[PortRange, ...] = ()
    names: tuple[str, ...] = ()
    proto: int | None = None
    protos: tuple[int, ...] = ()
    mark: tuple[int, int] | None = None
    text: str = ""  # as written: "! -o docker0", 'iifname != "bridge1"'


@dataclass(frozen=True)
class MarkEffect:
    """A change to the packet's mark or its connection's mark: `mark set ...`, MARK, CONNMARK.

    new = ((base & keep) | bits) ^ flip, where base is the current value of `source`
    ("mark", "ctmark", or None for 0).  `exact` is False when flowtrace only
    approximates the statement (CONNMARK with masks): the result is then unknown.
    """

    target: str  # "mark" or "ctmark"
    source: str | None
    keep: int = ALL_BITS
    bits: int = 0
    flip: int = 0
    exact: bool = True

    def apply(self, mark: int | None, ctmark: int | None) -> int | None:
        if not self.exact:
            return None
        base = {"mark": mark, "ctmark": ctmark, None: 0}[self.source]
        if base is None:
            return None
        return (((base & self.keep) | self.bits) ^ self.flip) & ALL_BITS


@dataclass(frozen=True)
class MapEntry:
    """One element of a verdict map: the key's match and the verdict it gives."""

    match: Criterion
    target: str  # a chain, or ACCEPT/DROP/RETURN/CONTINUE
    goto: bool = False


@dataclass(frozen=True)
class Rule:
    """One rule as the system prints it, with its matches, effects and target parsed."""

    table: str
    chain: str
    #: iptables: the iptables-save line; nftables: the rule as `nft list` prints it.
    text: str
    criteria: tuple[Criterion, ...] = ()
    target: str | None = None  # "MASQUERADE", "DOCKER", "RETURN", None without -j
    target_options: tuple[tuple[str, str], ...] = ()
    goto: bool = False  # -g: the chain's end returns to the caller's caller
    comment: str | None = None
    #: Mark changes made when the rule matches (before its target).
    effects: tuple[MarkEffect, ...] = ()
    #: A verdict map (`oifname vmap @jumps`): the first entry that fits decides.
    vmap: tuple[MapEntry, ...] = ()
    #: nftables: the family ("ip", "inet", ...) and the rule's handle.
    family: str = ""
    handle: int | None = None

    def option(self, name: str) -> str | None:
        """The value of a target option (`--to-destination`), or None."""
        for key, value in self.target_options:
            if key == name:
                return value
        return None

    @property
    def shown(self) -> str:
        """The rule as a person finds it: the iptables-save line, or nft's table, chain,
        handle and rule text."""
        if self.handle is None:
            return self.text
        return (
            f"table {self.family} {self.table} chain {self.chain} handle {self.handle}: {self.text}"
        )


@dataclass(frozen=True)
class Chain:
    name: str
    policy: str | None = None  # None for user chains ("-")
    rules: tuple[Rule, ...] = ()
    #: nftables base chains: the hook, priority and type (filter, nat, route).
    hook: str | None = None
    priority: int | None = None
    kind: str | None = None


@dataclass(frozen=True)
class Table:
    name: str
    chains: Mapping[str, Chain] = field(default_factory=dict)
    family: str = "ip"
    source: str = IPTABLES_NFT


@dataclass(frozen=True)
class NatRuleset:
    """The tables of one iptables-save document (one backend, one address family)."""

    tables: Mapping[str, Table] = field(default_factory=dict)

    @property
    def nat(self) -> Table:
        return self.tables.get("nat") or Table("nat")

    @property
    def filter(self) -> Table:
        return self.tables.get("filter") or Table("filter")

    def rules(self, table: str = "nat") -> list[Rule]:
        """Every rule of a table, chain by chain, in file order."""
        t = self.tables.get(table)
        return [r for c in t.chains.values() for r in c.rules] if t else []

    def rule_count(self) -> int:
        return sum(len(c.rules) for t in self.tables.values() for c in t.chains.values())


class RulesetFormatError(FlowtraceError):
    """Firewall rules (iptables-save output, nft JSON) flowtrace cannot read."""


def protocol_number(name: str) -> int:
    """A protocol's number from its name as iptables prints it ("tcp", "ipv6-icmp", "47")."""
    name = name.lower()
    if name.isdigit():
        return int(name)
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    try:
        return socket.getprotobyname(name)
    except OSError:
        raise ValueError(name) from None


def parse_mark(text: str) -> tuple[int, int]:
    """`0x2000/0x2000` or `5` -> (value, mask)."""
    value, _, mask = text.partition("/")
    return int(value, 0), int(mask, 0) if mask else ALL_BITS

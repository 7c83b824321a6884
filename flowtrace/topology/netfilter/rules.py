"""The rule model of the firewall: tables of chains of rules, each rule's matches parsed.

A reader (iptables_save today) turns what the kernel holds into these values; the
matcher (matching) and the explanations (explain) work on them alone, whatever
they were read from.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from flowtrace.errors import FlowtraceError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]

#: Protocol names iptables-save prints, and their numbers.
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


@dataclass(frozen=True)
class Criterion:
    """One match of a rule, parsed into the field its kind uses.

    kinds: source/destination (networks), in/out (names: the interface pattern),
    proto, sport/dport/port (ports), dst-type/src-type and ctstate (names), mark
    (`-m mark --mark VALUE[/MASK]`: mark), and "unknown" for anything flowtrace does
    not evaluate (names: its arguments).
    """

    kind: str
    negated: bool = False
    networks: tuple[IPNetwork, ...] = ()
    ports: tuple[PortRange, ...] = ()
    names: tuple[str, ...] = ()
    proto: int | None = None
    #: (value, mask) of a mark match: it fits when packet mark & mask == value.
    mark: tuple[int, int] | None = None
    text: str = ""  # as written: "! -o docker0"


@dataclass(frozen=True)
class Rule:
    """One rule as iptables-save printed it, with its matches and target parsed."""

    table: str
    chain: str
    text: str  # "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    criteria: tuple[Criterion, ...] = ()
    target: str | None = None  # "MASQUERADE", "DOCKER", "RETURN", None without -j
    target_options: tuple[tuple[str, str], ...] = ()
    goto: bool = False  # -g: the chain's end returns to the caller's caller
    comment: str | None = None

    def option(self, name: str) -> str | None:
        """The value of a target option (`--to-destination`), or None."""
        for key, value in self.target_options:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class Chain:
    name: str
    policy: str | None = None  # None for user chains ("-")
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str
    chains: Mapping[str, Chain] = field(default_factory=dict)


@dataclass(frozen=True)
class NatRuleset:
    """The tables of one namespace's iptables-save output (nat and filter matter here)."""

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


class RulesetFormatError(FlowtraceError):
    """Firewall rules (iptables-save output) flowtrace cannot read."""


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

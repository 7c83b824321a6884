"""One namespace's firewall: every table of every backend, and the base chains at each hook.

The kernel runs, at each hook a packet meets, every base chain registered there in
priority order, whoever registered it: iptables' built-in chains (iptables-nft makes
them nftables base chains, iptables-legacy registers x_tables hooks, both at the same
fixed priorities) and native nftables base chains (Docker 29's `ip docker-bridges`,
netavark's `inet netavark`, firewalld's `inet firewalld`) at the priorities their
tables give.  An accept ends only the chain that said it: the next base chain on the
hook still runs; a drop ends the packet.  Pure: the tables come from read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flowtrace.topology.netfilter.iptables_save import parse_iptables_save
from flowtrace.topology.netfilter.rules import (
    IPTABLES_LEGACY,
    IPTABLES_NFT,
    NFTABLES,
    Chain,
    NatRuleset,
    Rule,
    Table,
)

HOOKS = ("prerouting", "input", "forward", "output", "postrouting")

#: iptables' built-in chains: (table, chain) -> (hook, priority, type).  The
#: priorities are NF_IP_PRI_* (include/uapi/linux/netfilter_ipv4.h); iptables-nft
#: creates its base chains at the same ones.
IPTABLES_BASE: dict[tuple[str, str], tuple[str, int, str]] = {
    ("raw", "PREROUTING"): ("prerouting", -300, "filter"),
    ("raw", "OUTPUT"): ("output", -300, "filter"),
    ("mangle", "PREROUTING"): ("prerouting", -150, "filter"),
    ("mangle", "INPUT"): ("input", -150, "filter"),
    ("mangle", "FORWARD"): ("forward", -150, "filter"),
    ("mangle", "OUTPUT"): ("output", -150, "route"),
    ("mangle", "POSTROUTING"): ("postrouting", -150, "filter"),
    ("nat", "PREROUTING"): ("prerouting", -100, "nat"),
    ("nat", "OUTPUT"): ("output", -100, "nat"),
    ("filter", "INPUT"): ("input", 0, "filter"),
    ("filter", "FORWARD"): ("forward", 0, "filter"),
    ("filter", "OUTPUT"): ("output", 0, "filter"),
    ("security", "INPUT"): ("input", 50, "filter"),
    ("security", "FORWARD"): ("forward", 50, "filter"),
    ("security", "OUTPUT"): ("output", 50, "filter"),
    ("nat", "INPUT"): ("input", 100, "nat"),
    ("nat", "POSTROUTING"): ("postrouting", 100, "nat"),
}

#: iptables' tables in the order people name them.
IPTABLES_TABLES = ("raw", "mangle", "nat", "filter", "security")
_SOURCE_ORDER = {IPTABLES_LEGACY: 0, IPTABLES_NFT: 1, NFTABLES: 2}


@dataclass(frozen=True)
class BaseChain:
    """A chain the kernel calls at a hook: its table, priority and type."""

    table: Table
    chain: Chain
    hook: str
    priority: int
    kind: str  # filter, nat, route

    @property
    def source(self) -> str:
        return self.table.source

    @property
    def label(self) -> str:
        """`nat POSTROUTING (iptables-nft)` or `table ip docker-bridges chain nat-POSTROUTING`."""
        if self.table.source == NFTABLES:
            return f"table {self.table.family} {self.table.name} chain {self.chain.name}"
        return f"{self.table.name} {self.chain.name} ({self.table.source})"

    def policy_text(self) -> str:
        """The chain's policy as the system prints it: `-P FORWARD DROP`."""
        policy = (self.chain.policy or "ACCEPT").upper()
        if self.table.source == NFTABLES:
            return f"{self.label}: policy {policy.lower()}"
        return f"-P {self.chain.name} {policy}"


@dataclass(frozen=True)
class Firewall:
    """Every table one namespace holds, from every backend, and what could not be read."""

    tables: tuple[Table, ...] = ()
    #: Sentences about the reading: a backend missing, a table not understood.
    notes: tuple[str, ...] = field(default=())
    #: What could not be read at all ("iptables", "nftables"): a verdict that these
    #: might change is never certain.
    unread: tuple[str, ...] = ()

    @classmethod
    def from_iptables_save(
        cls, text: str, source: str = IPTABLES_NFT, family: str = "ip"
    ) -> Firewall:
        return cls(tuple(parse_iptables_save(text, source, family).tables.values()))

    @classmethod
    def from_ruleset(cls, ruleset: NatRuleset) -> Firewall:
        return cls(tuple(ruleset.tables.values()))

    def with_tables(self, tables: tuple[Table, ...], notes: tuple[str, ...] = ()) -> Firewall:
        return Firewall((*self.tables, *tables), (*self.notes, *notes), self.unread)

    def table(self, name: str, source: str | None = None, family: str = "ip") -> Table | None:
        for table in self.tables:
            if table.name == name and table.family == family and source in (None, table.source):
                return table
        return None

    def rules(self, table: str = "nat", family: str = "ip") -> list[Rule]:
        """Every rule of the tables named `table` (every backend's), chain by chain, in
        the order read: what NatRuleset.rules gave for one iptables-save document."""
        return [
            rule
            for t in self.tables
            if t.name == table and t.family == family
            for chain in t.chains.values()
            for rule in chain.rules
        ]

    def base_chains(self, hook: str, family: int = 4) -> list[BaseChain]:
        """The chains the kernel calls at `hook` for an IPv4 (or IPv6) packet, in order.

        Equal priorities run in the order they were registered, which the rules do not
        show: iptables' chains are put first (engines load them at boot).
        """
        wanted = ("ip", "inet") if family == 4 else ("ip6", "inet")
        found: list[tuple[int, int, int, BaseChain]] = []
        for position, table in enumerate(self.tables):
            if table.family not in wanted:
                continue
            for chain in table.chains.values():
                base = self._base(table, chain)
                if base is not None and base.hook == hook:
                    rank = _SOURCE_ORDER.get(table.source, 3)
                    found.append((base.priority, rank, position, base))
        return [base for *_, base in sorted(found, key=lambda item: item[:3])]

    def backends(self) -> list[str]:
        """The backends that hold rules (or a policy that is not accept), in a fixed order."""
        held = {t.source for t in self.tables if _holds_rules(t)}
        return sorted(held, key=lambda s: _SOURCE_ORDER.get(s, 3))

    @staticmethod
    def _base(table: Table, chain: Chain) -> BaseChain | None:
        if table.source == NFTABLES:
            if chain.hook is None:
                return None
            return BaseChain(table, chain, chain.hook, chain.priority or 0, chain.kind or "filter")
        known = IPTABLES_BASE.get((table.name, chain.name))
        if known is None:
            return None
        hook, priority, kind = known
        return BaseChain(table, chain, hook, priority, kind)


def _holds_rules(table: Table) -> bool:
    return any(c.rules or (c.policy or "ACCEPT").upper() != "ACCEPT" for c in table.chains.values())

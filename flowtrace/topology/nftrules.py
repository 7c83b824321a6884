"""A namespace's nftables rules by handle, and iptables-nft's lines for them (pure).

The kernel's trace names a rule by family, table, chain and handle; nft prints an
iptables-nft rule with opaque `xt match "..."` expressions where iptables has matches
nftables cannot express.  People know those rules as `iptables-save` prints them, so a
rule of an iptables-nft table is shown as its iptables-save line: in both listings the
rules of a chain come in the same order, so the n-th rule of chain C in
`nft -j list ruleset` is the n-th `-A C` line of `iptables-nft-save` (when the chain has
as many rules in both; otherwise nothing is guessed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from flowtrace.topology.nftrace import HookVisit, RuleMet, is_flowtraces

#: The tables iptables-nft makes in the ip family.
IPTABLES_TABLES = ("raw", "mangle", "nat", "filter", "security")

ChainKey = tuple[str, str, str]  # family, table, chain


@dataclass(frozen=True)
class RuleBook:
    """One namespace's rules: each chain's handles in order, hooks, iptables-save lines."""

    handles: Mapping[ChainKey, tuple[int, ...]] = field(default_factory=dict)
    #: Base chains: their hook and type (filter, nat, route).
    hooks: Mapping[ChainKey, tuple[str, str]] = field(default_factory=dict)
    #: iptables-nft-save: per (table, chain), the `-A` lines in order, and the policies.
    saved: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    policies: Mapping[tuple[str, str], str] = field(default_factory=dict)
    #: Chains whose rules changed between two reads: their handles are not trusted.
    unsettled: frozenset[ChainKey] = frozenset()
    #: Base chains' priorities (a drop at a lower one means a later chain was never reached).
    priorities: Mapping[ChainKey, int] = field(default_factory=dict)

    @classmethod
    def read(
        cls,
        tables_json: Sequence[str],
        iptables_save: str = "",
        tables_again: Sequence[str] | None = None,
    ) -> RuleBook:
        """From `nft -j list table` of each table and `iptables-nft-save` output;
        `tables_again`, the tables read again after iptables-nft-save, tells which chains
        changed meanwhile."""
        handles, hooks = _chains(tables_json)
        priorities = _priorities(tables_json)
        unsettled: set[ChainKey] = set()
        if tables_again is not None:
            again, _ = _chains(tables_again)
            unsettled = {k for k in set(handles) | set(again) if handles.get(k) != again.get(k)}
        saved, policies = parse_iptables_save(iptables_save)
        return cls(handles, hooks, saved, policies, frozenset(unsettled), priorities)

    def iptables_line(self, rule: RuleMet) -> str | None:
        """The iptables-save line of a rule of an iptables-nft table (a policy: `-P ...`)."""
        if rule.family != "ip" or rule.table not in IPTABLES_TABLES:
            return None
        key = (rule.family, rule.table, rule.chain)
        if key in self.unsettled:
            return None
        if rule.handle is None:
            policy = self.policies.get((rule.table, rule.chain))
            if policy is None or not rule.text.startswith("policy "):
                return None
            return f"-P {rule.chain} {rule.verdict.upper()}"
        order = self.handles.get(key)
        lines = self.saved.get((rule.table, rule.chain))
        if order is None or lines is None or len(order) != len(lines):
            return None
        if rule.handle not in order:
            return None
        return lines[order.index(rule.handle)]

    def resolve(self, visit: HookVisit) -> HookVisit:
        """The visit with each rule's iptables-save line filled in where it has one."""
        chains = tuple(
            replace(c, rules=tuple(replace(r, iptables=self.iptables_line(r)) for r in c.rules))
            for c in visit.chains
        )
        met = {(c.family, c.table, c.chain) for c in visit.chains}
        dropped = next((c for c in visit.chains if c.verdict == "drop"), None)
        drop_at = (
            self.priorities.get((dropped.family, dropped.table, dropped.chain))
            if dropped is not None
            else None
        )
        skipped = tuple(
            f"{key[0]} {key[1]} {key[2]}"
            for key, (hook, kind) in self.hooks.items()
            if hook == visit.hook
            and kind == "nat"
            and key not in met
            # a chain after the one that dropped the packet was never reached: no skip
            and not (drop_at is not None and self.priorities.get(key, drop_at + 1) > drop_at)
        )
        return replace(visit, chains=chains, skipped=skipped)


def _items(docs: Sequence[str]) -> list[object]:
    """The objects of `nft -j list ...` documents; one that is not JSON adds nothing."""
    items: list[object] = []
    for text in docs:
        try:
            doc = json.loads(text) if text.strip() else {}
        except json.JSONDecodeError:
            continue
        found = doc.get("nftables", []) if isinstance(doc, dict) else []
        items += found if isinstance(found, list) else []
    return items


def _chains(
    docs: Sequence[str],
) -> tuple[dict[ChainKey, tuple[int, ...]], dict[ChainKey, tuple[str, str]]]:
    handles: dict[ChainKey, list[int]] = {}
    hooks: dict[ChainKey, tuple[str, str]] = {}
    for item in _items(docs):
        if not isinstance(item, dict):
            continue
        chain, rule = item.get("chain"), item.get("rule")
        if isinstance(chain, dict):
            key = (str(chain.get("family")), str(chain.get("table")), str(chain.get("name")))
            handles.setdefault(key, [])
            if isinstance(chain.get("hook"), str):
                hooks[key] = (chain["hook"], str(chain.get("type", "filter")))
        elif isinstance(rule, dict) and isinstance(rule.get("handle"), int):
            key = (str(rule.get("family")), str(rule.get("table")), str(rule.get("chain")))
            handles.setdefault(key, []).append(rule["handle"])
    frozen = {k: tuple(v) for k, v in handles.items() if not is_flowtraces(k[1])}
    return frozen, {k: v for k, v in hooks.items() if not is_flowtraces(k[1])}


def _priorities(docs: Sequence[str]) -> dict[ChainKey, int]:
    found: dict[ChainKey, int] = {}
    for item in _items(docs):
        chain = item.get("chain") if isinstance(item, dict) else None
        if isinstance(chain, dict) and isinstance(chain.get("prio"), int):
            key = (str(chain.get("family")), str(chain.get("table")), str(chain.get("name")))
            found[key] = chain["prio"]
    return found


def parse_iptables_save(
    text: str,
) -> tuple[dict[tuple[str, str], tuple[str, ...]], dict[tuple[str, str], str]]:
    """Per (table, chain), the `-A` lines in order; and each built-in chain's policy."""
    rules: dict[tuple[str, str], list[str]] = {}
    policies: dict[tuple[str, str], str] = {}
    table = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":") and table:
            parts = line[1:].split()
            rules.setdefault((table, parts[0]), [])
            if len(parts) > 1 and parts[1] != "-":
                policies[(table, parts[0])] = parts[1]
        elif line.startswith("-A ") and table:
            chain = line.split()[1]
            rules.setdefault((table, chain), []).append(line)
    return {k: tuple(v) for k, v in rules.items()}, policies


def legacy_tables(ip_tables_names: str) -> list[str]:
    """The iptables-legacy tables /proc/net/ip_tables_names lists (registered in the
    namespace: their rules never appear in an nftables trace)."""
    return [name for name in ip_tables_names.split() if name]

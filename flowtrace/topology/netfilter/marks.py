"""The fwmark a packet carries when it reaches POSTROUTING: what MARK targets set on it.

netavark marks the packets of a published port (`NETAVARK-HOSTPORT-SETMARK`, -j MARK
--set-xmark 0x2000/0x2000) in nat PREROUTING/OUTPUT, and masquerades in POSTROUTING
only what carries the mark; Docker 28 marks too.  A packet that enters a namespace
from a veth or a bridge starts with mark 0 (the kernel clears it on the way between
namespaces), so walking the chains before POSTROUTING and applying the MARK rules
that fit tells the mark, unless a MARK rule only maybe fits: then it is unknown.
"""

from __future__ import annotations

from dataclasses import replace

from flowtrace.topology.netfilter.matching import Outcome, PacketView, walk_chain
from flowtrace.topology.netfilter.rules import NatRuleset, Rule

#: Targets that end a walk through the nat table when they fire (the rest is not seen).
_TERMINAL = frozenset(("DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP", "ACCEPT", "DROP"))


def apply_mark(mark: int, rule: Rule) -> int | None:
    """The mark after a MARK rule (None: an option flowtrace does not read)."""
    for option in ("--set-xmark", "--set-mark", "--or-mark", "--and-mark", "--xor-mark"):
        spec = rule.option(option)
        if spec is None:
            continue
        value_text, _, mask_text = spec.partition("/")
        try:
            value = int(value_text, 0)
            mask = int(mask_text, 0) if mask_text else 0xFFFFFFFF
        except ValueError:
            return None
        if option == "--set-xmark":
            return (mark & ~mask & 0xFFFFFFFF) ^ value
        if option == "--set-mark":
            return (mark & ~mask & 0xFFFFFFFF) | value
        if option == "--or-mark":
            return mark | value
        if option == "--and-mark":
            return mark & value
        return mark ^ value
    return None


def mark_before_postrouting(
    ruleset: NatRuleset, packet: PacketView, local_stack: bool = False
) -> int | None:
    """The fwmark `packet` (as it entered: src, dst, in_iface) has in POSTROUTING.

    The chains walked are mangle and nat PREROUTING, or OUTPUT for a packet of the
    namespace's own stack (local_stack); None when a MARK rule there only maybe fits.
    """
    hook = "OUTPUT" if local_stack else "PREROUTING"
    mark: int | None = 0
    for table_name in ("mangle", "nat"):
        table = ruleset.tables.get(table_name)
        if mark is None or table is None or hook not in table.chains:
            continue
        walker = _MarkWalk(mark)
        walk_chain(table, hook, replace(packet, mark=mark), walker.decide)
        mark = walker.mark
    return mark


class _MarkWalk:
    """Applies the MARK rules a walk meets until a target ends it."""

    def __init__(self, mark: int) -> None:
        self.mark: int | None = mark
        #: A terminal target only maybe fired: whether later rules were reached is unknown.
        self.ended_maybe = False

    def decide(self, rule: Rule, certain: bool) -> Outcome:
        if rule.target == "MARK":
            if not certain or self.ended_maybe or self.mark is None:
                self.mark = None
                return "stop"
            self.mark = apply_mark(self.mark, rule)
            return "continue"
        if rule.target in _TERMINAL:
            if certain:
                return "stop"
            self.ended_maybe = True
        return "continue"

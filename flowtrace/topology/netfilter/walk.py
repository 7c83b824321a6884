"""One base chain walked for one packet, the way the kernel walks it.

Jumps descend and come back, a goto's chain returns to the caller's caller, RETURN
goes back up (in a base chain: to the policy), a verdict map's entry acts as the
rule's target, and marks set on the way are carried (a later `-m mark` sees them).
A rule that only maybe matches is followed without deciding anything: its jump is
walked with everything under it marked maybe, a terminal target it has is kept as a
doubt (it might have ended the chain), and a mark it might set becomes unknown.
So the walk's ending is the one the certain rules give, and `doubts` says what
might have ended it earlier.  Pure: values in, values out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from flowtrace.topology.netfilter.matching import PacketView, criteria_match, criterion_fits
from flowtrace.topology.netfilter.rules import Criterion, MarkEffect, Rule, Table

#: Targets that end a chain's walk (and the base chain's, for this packet).
TERMINAL = frozenset(("ACCEPT", "DROP", "REJECT", "QUEUE", "NFQUEUE"))
#: NAT targets: terminal, and the connection's binding is made.
NAT_TARGETS = frozenset(("DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"))
DROP_TARGETS = frozenset(("DROP", "REJECT"))
_MAX_DEPTH = 64


@dataclass(frozen=True)
class Step:
    """A rule the packet met whose matches fit, certainly or maybe, and what it did."""

    rule: Rule
    certain: bool
    #: "jump DOCKER", "goto LB", "ACCEPT", "DROP", "RETURN", "MARK", "DNAT", ...
    action: str
    #: The matches flowtrace could not evaluate (why the step is a maybe).
    unknown: tuple[str, ...] = ()
    #: How many jumps deep (0: the base chain itself).
    depth: int = 0


@dataclass(frozen=True)
class ChainWalk:
    """How one base chain treated one packet."""

    table: Table
    chain: str
    steps: tuple[Step, ...]
    #: "accept", "drop" (DROP or REJECT), "nat" (a NAT target made the binding),
    #: "queue" (handed to userspace: unknown), or "policy" (the chain's end).
    ending: str
    #: The rule that ended the walk (None: the policy did).
    rule: Rule | None
    policy: str | None
    #: Rules that only maybe matched and would have ended the chain, passed over.
    doubts: tuple[Step, ...]
    mark: int | None
    ctmark: int | None

    @property
    def verdict(self) -> str:
        """What the chain did with the packet: accept, drop, or queue."""
        if self.ending == "policy":
            return "drop" if (self.policy or "ACCEPT").upper() == "DROP" else "accept"
        return "accept" if self.ending == "nat" else self.ending

    @property
    def certain(self) -> bool:
        return not self.doubts

    @property
    def deciding(self) -> Step | None:
        """The step of the rule that ended the walk (None: the policy)."""
        for step in reversed(self.steps):
            if step.rule is self.rule and step.certain:
                return step
        return None


def walk_chain(table: Table, chain: str, packet: PacketView) -> ChainWalk:
    """Walk base chain `chain` of `table` for `packet` (its marks as the walk begins)."""
    walker = _Walker(table, packet)
    status = walker.chain(chain, maybe=False, depth=0)
    ending = walker.ending if status == "end" else "policy"
    base = table.chains.get(chain)
    return ChainWalk(
        table,
        chain,
        tuple(walker.steps),
        ending,
        walker.decided if status == "end" else None,
        base.policy if base else None,
        tuple(walker.doubts),
        walker.mark,
        walker.ctmark,
    )


class _Walker:
    def __init__(self, table: Table, packet: PacketView) -> None:
        self.table = table
        self.packet = packet
        self.steps: list[Step] = []
        self.doubts: list[Step] = []
        self.mark, self.ctmark = packet.mark, packet.ctmark
        self.ending = "policy"
        self.decided: Rule | None = None

    def view(self) -> PacketView:
        if self.mark == self.packet.mark and self.ctmark == self.packet.ctmark:
            return self.packet
        return replace(self.packet, mark=self.mark, ctmark=self.ctmark)

    def chain(self, name: str, maybe: bool, depth: int) -> str:
        """ "end" when a certain terminal ended the walk; else "return" or "fallthrough"."""
        chain = self.table.chains.get(name)
        if chain is None or depth > _MAX_DEPTH:
            return "fallthrough"
        for rule in chain.rules:
            for criteria, target, goto in _branches(rule):
                view = self.view()
                fits = criteria_match(criteria, view)
                if fits is False:
                    continue
                certain = fits is True and not maybe
                unknown = tuple(c.text for c in criteria if criterion_fits(c, view) is None)
                self._apply(rule.effects, certain)
                outcome = self._target(rule, target, goto, certain, unknown, depth)
                if outcome in ("end", "return"):
                    return outcome
                if rule.vmap and certain:
                    break  # a map gives one verdict at most
        return "fallthrough"

    def _target(
        self,
        rule: Rule,
        target: str | None,
        goto: bool,
        certain: bool,
        unknown: tuple[str, ...],
        depth: int,
    ) -> str:
        if target is not None and target in self.table.chains:
            how = "goto" if goto else "jump"
            self.steps.append(Step(rule, certain, f"{how} {target}", unknown, depth))
            status = self.chain(target, maybe=not certain, depth=depth + 1)
            if status == "end":
                return "end"
            return "return" if goto and certain else "continue"
        if target == "RETURN":
            self.steps.append(Step(rule, certain, "RETURN", unknown, depth))
            return "return" if certain else "continue"
        terminal = target in TERMINAL or target in NAT_TARGETS
        if not terminal:
            if target not in (None, "CONTINUE") or rule.effects:
                self.steps.append(Step(rule, certain, target or "mark", unknown, depth))
            return "continue"
        step = Step(rule, certain, target or "", unknown, depth)
        self.steps.append(step)
        if not certain:
            self.doubts.append(step)
            return "continue"
        self.decided = rule
        if target in NAT_TARGETS:
            self.ending = "nat"
        elif target in DROP_TARGETS:
            self.ending = "drop"
        elif target == "ACCEPT":
            self.ending = "accept"
        else:
            self.ending = "queue"
        return "end"

    def _apply(self, effects: tuple[MarkEffect, ...], certain: bool) -> None:
        for effect in effects:
            value = effect.apply(self.mark, self.ctmark)
            current = self.mark if effect.target == "mark" else self.ctmark
            if not certain and value != current:
                value = None  # it may or may not have been set
            if effect.target == "mark":
                self.mark = value
            else:
                self.ctmark = value


def _branches(rule: Rule) -> list[tuple[tuple[Criterion, ...], str | None, bool]]:
    """The rule's matches and target, or one branch per verdict-map entry."""
    if not rule.vmap:
        return [(rule.criteria, rule.target, rule.goto)]
    return [((*rule.criteria, e.match), e.target, e.goto) for e in rule.vmap]

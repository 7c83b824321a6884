"""Which rule rewrote (or dropped) a packet: the answers flowtrace gives about NAT and drops.

Both run the packet through the namespace's hooks (hooks.traverse) with every base
chain of every backend.  `attribute` names, for an observed rewrite, the first NAT
rule the kernel met (for the connection's first packet, the only one nat rules see)
whose target explains the values after it; `find_drop` names, for a packet that
vanished in a namespace, the rule (or chain policy) that dropped it.  A rule that
only maybe matched can be the answer, and then says so (`doubt`): flowtrace never
states as certain a rule whose matches it could not evaluate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from flowtrace.model import Address, NatEvent
from flowtrace.topology.netfilter.firewall import BaseChain, Firewall
from flowtrace.topology.netfilter.hooks import NamespacePass, nat_steps, traverse
from flowtrace.topology.netfilter.matching import NEW, PacketView
from flowtrace.topology.netfilter.rules import NatRuleset, Rule, protocol_number
from flowtrace.topology.netfilter.walk import DROP_TARGETS, Step

Rules = Firewall | NatRuleset


@dataclass(frozen=True)
class Attribution:
    """The rule behind a rewrite, as the system prints it, and why it may not be the one."""

    rule: str
    #: None when certain; else in words: "maybe: flowtrace cannot evaluate `-m set ...`".
    doubt: str | None = None
    #: The rule itself (its table, comment and matches, for engine explanations).
    source: Rule | None = None


@dataclass(frozen=True)
class DropFinding:
    """The rule (or chain policy) that dropped a packet, where, and how sure that is."""

    rule: str  # as the system prints it; a policy: `-P FORWARD DROP`
    hook: str
    base: BaseChain
    source: Rule | None  # None: the chain's policy
    certain: bool = True
    unknown: tuple[str, ...] = ()
    #: The packet as the hook saw it (after a DNAT earlier on its way).
    packet: PacketView | None = None

    @property
    def doubt(self) -> str | None:
        if self.certain:
            return None
        return maybe_words(self.unknown)


def as_firewall(rules: Rules) -> Firewall:
    return rules if isinstance(rules, Firewall) else Firewall.from_ruleset(rules)


def maybe_words(unknown: Iterable[str]) -> str:
    texts = [f"`{t}`" for t in unknown if t]
    if not texts:
        return "maybe: a rule before it could not be evaluated"
    return "maybe: flowtrace cannot evaluate " + ", ".join(texts)


def way_of(in_iface: str | None, out_iface: str | None) -> str:
    """forward with both interfaces, input without an output one, output without an input one."""
    if in_iface is not None and out_iface is not None:
        return "forward"
    return "input" if out_iface is None else "output"


def _way_through(hook: str, in_iface: str | None, out_iface: str | None) -> str:
    """The way that meets `hook`: output and input are their own (a packet of the
    namespace's own whose way out is not known still meets output)."""
    if hook in ("output", "input"):
        return hook
    return way_of(in_iface, out_iface)


def attribute(
    ruleset: Rules,
    event: NatEvent,
    proto: str | int,
    in_iface: str | None,
    out_iface: str | None,
    local_addresses: Iterable[str] = frozenset(),
    *,
    peer: Address | None = None,
) -> str | None:
    """The text of the nat rule that made `event`, or None if none explains it."""
    found = attribute_detail(ruleset, event, proto, in_iface, out_iface, local_addresses, peer=peer)
    return found.rule if found else None


def attribute_detail(
    ruleset: Rules,
    event: NatEvent,
    proto: str | int,
    in_iface: str | None,
    out_iface: str | None,
    local_addresses: Iterable[str] = frozenset(),
    *,
    peer: Address | None = None,
    before_dnat: Address | None = None,
) -> Attribution | None:
    """The nat rule that made `event` and how sure that is; None if none explains it.

    in_iface/out_iface: the packet's interfaces in the namespace that did the NAT
    (None: it has none there: locally generated, or delivered there).  A DNAT happens
    in prerouting, or output for the namespace's own packets; a SNAT in postrouting,
    or input for a packet delivered there.  `local_addresses` are the namespace's own
    addresses (for MASQUERADE, REDIRECT and address types; empty: unknown).  `peer`
    is the other end of the packet before the rewrite, for rules that match on it.
    `before_dnat`: a SNAT's destination before a DNAT the same namespace made on the
    packet's way in (prerouting then sees it as it came, and sets the marks it sets).
    """
    number = proto if isinstance(proto, int) else _protocol_number_or_zero(proto)
    local = frozenset(local_addresses)
    before = event.before
    src: str | None
    dst: str | None
    if event.kind == "DNAT":
        hook = "prerouting" if in_iface is not None else "output"
        src, dst = (peer.ip if peer else None), before.ip
        sport, dport = (peer.port if peer else None), before.port
    else:
        hook = "postrouting" if out_iface is not None else "input"
        src, dst = before.ip, (peer.ip if peer else None)
        sport, dport = before.port, (peer.port if peer else None)
        if before_dnat is not None:
            dst, dport = before_dnat.ip, before_dnat.port
    packet = PacketView(number, src, dst, sport, dport, in_iface, out_iface, NEW, local)
    passed = traverse(as_firewall(ruleset), packet, _way_through(hook, in_iface, out_iface))
    visit = passed.hook(hook)
    if visit is None:
        return None
    steps = nat_steps(visit)
    explaining = [s for s in steps if explains(s.rule, event, local)]
    if not explaining:
        return None
    chosen = explaining[0]
    if not chosen.certain:
        return Attribution(chosen.rule.shown, maybe_words(chosen.unknown), chosen.rule)
    earlier = [s for s in steps[: steps.index(chosen)] if not s.certain]
    if earlier:
        first = earlier[0]
        doubt = f"unless `{first.rule.shown}` matched first ({maybe_words(first.unknown)})"
        return Attribution(chosen.rule.shown, doubt, chosen.rule)
    return Attribution(chosen.rule.shown, None, chosen.rule)


def explains(rule: Rule, event: NatEvent, local_addresses: frozenset[str] = frozenset()) -> bool:
    """Whether the rule's target could have turned event.before into event.after."""
    target = rule.target
    before, after = event.before, event.after
    if target == "DNAT" and event.kind == "DNAT":
        spec = rule.option("--to-destination")
        return spec is not None and _within(spec, before, after, keep_port=True)
    if target == "SNAT" and event.kind == "SNAT":
        spec = rule.option("--to-source")
        return spec is not None and _within(spec, before, after, keep_port=False)
    if target == "MASQUERADE" and event.kind == "SNAT":
        if local_addresses and after.ip not in local_addresses:
            return False
        return _port_within(rule.option("--to-ports"), before, after, keep_port=False)
    if target == "REDIRECT" and event.kind == "DNAT":
        if local_addresses and after.ip not in local_addresses:
            return False
        return _port_within(rule.option("--to-ports"), before, after, keep_port=True)
    if target == "NETMAP":
        mapped = rule.option("--to")
        if mapped is None or (rule.chain == "POSTROUTING") != (event.kind == "SNAT"):
            return False
        try:
            return ipaddress.ip_address(after.ip) in ipaddress.ip_network(mapped, strict=False)
        except ValueError:
            return False
    return False


def _within(spec: str, before: Address, after: Address, keep_port: bool) -> bool:
    """Whether `after` fits a --to-destination/--to-source spec: ip[-ip][:port[-port]]."""
    for one in spec.split():
        addresses, ports = _split_nat_spec(one)
        if addresses and not _ip_in_range(after.ip, addresses):
            continue
        if not addresses and after.ip != before.ip:
            continue
        if _port_within(ports, before, after, keep_port):
            return True
    return False


def _split_nat_spec(spec: str) -> tuple[str, str | None]:
    if spec.startswith("["):  # [2001:db8::1]:80
        host, _, rest = spec[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if spec.count(":") > 1:  # a bare IPv6 address
        return spec, None
    host, sep, ports = spec.partition(":")
    return host, ports if sep else None


def _ip_in_range(ip: str, spec: str) -> bool:
    low, _, high = spec.partition("-")
    try:
        value = ipaddress.ip_address(ip)
        first = ipaddress.ip_address(low)
        last = ipaddress.ip_address(high) if high else first
    except ValueError:
        return False
    return value.version == first.version and first <= value <= last  # type: ignore[operator]


def _port_within(spec: str | None, before: Address, after: Address, keep_port: bool) -> bool:
    """Ports: in the rule's range if it names one; else unchanged (DNAT) or anything (SNAT)."""
    if not spec:
        return not keep_port or after.port == before.port
    if after.port is None:
        return False
    low, _, high = spec.partition("-")
    try:
        return int(low) <= after.port <= int(high or low)
    except ValueError:
        return False


def _protocol_number_or_zero(name: str) -> int:
    try:
        return protocol_number(name)
    except ValueError:
        return 0


def find_drop(
    ruleset: Rules,
    proto: str | int,
    src: str,
    dst: str,
    sport: int | None = None,
    dport: int | None = None,
    in_iface: str | None = None,
    out_iface: str | None = None,
    local_addresses: Iterable[str] = frozenset(),
    ctstate: str = NEW,
    icmp_type: int | None = None,
) -> DropFinding | None:
    """The rule (or chain policy) that dropped a packet that vanished in a namespace.

    The packet goes through the hooks of its way (forward with both interfaces,
    input without an output one, output without an input one), every table at each.
    Since the packet is known to be gone, the first drop it meets is the answer, one
    that only maybe matches included (and then marked uncertain).
    """
    number = proto if isinstance(proto, int) else _protocol_number_or_zero(proto)
    packet = PacketView(
        number, src, dst, sport, dport, in_iface, out_iface, ctstate, frozenset(local_addresses),
        icmp_type=icmp_type,
    )  # fmt: skip
    passed = traverse(as_firewall(ruleset), packet, way_of(in_iface, out_iface))
    return first_drop(passed)


def first_drop(passed: NamespacePass) -> DropFinding | None:
    """The first drop along a pass: a maybe-dropping rule met before counts (uncertain)."""
    for visit in passed.hooks:
        for chain in visit.chains:
            walk = chain.walk
            if walk is None:
                continue
            for step in walk.steps:
                if step.action in DROP_TARGETS and (not step.certain or step.rule is walk.rule):
                    return DropFinding(
                        step.rule.shown, visit.hook, chain.base, step.rule, step.certain,
                        step.unknown, visit.packet,
                    )  # fmt: skip
            if walk.verdict == "drop" and walk.rule is None:
                return DropFinding(
                    chain.base.policy_text(), visit.hook, chain.base, None, packet=visit.packet
                )
    return None


def find_drop_rule(
    ruleset: Rules,
    proto: str | int,
    src: str,
    dst: str,
    sport: int | None = None,
    dport: int | None = None,
    in_iface: str | None = None,
    out_iface: str | None = None,
    local_addresses: Iterable[str] = frozenset(),
    ctstate: str = NEW,
) -> str | None:
    """find_drop's rule text alone (`-P FORWARD DROP` for a policy), or None."""
    found = find_drop(
        ruleset, proto, src, dst, sport, dport, in_iface, out_iface, local_addresses, ctstate
    )
    return found.rule if found else None


def doubt_of(steps: list[Step]) -> str | None:
    """In words, what makes a walk's outcome uncertain (None: nothing)."""
    if not steps:
        return None
    return maybe_words(t for s in steps for t in s.unknown)

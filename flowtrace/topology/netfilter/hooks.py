"""A packet's way through one namespace, hook by hook, every base chain at each.

The hooks a packet meets follow from its way there: forwarded (prerouting, forward,
postrouting), delivered (prerouting, input), sent by the namespace itself (output,
postrouting).  At each hook every base chain runs in priority order (firewall); an
accept ends one chain, a drop ends the packet.  nat chains see only a connection's
first packet, and at one hook only until one of them makes the binding; the binding
rewrites the packet the later chains see (a DNAT in prerouting is what forward
filters).  Marks set in one chain are seen by the next.  Pure.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from flowtrace.topology.netfilter.firewall import BaseChain, Firewall
from flowtrace.topology.netfilter.matching import NEW, PacketView
from flowtrace.topology.netfilter.rules import Rule
from flowtrace.topology.netfilter.walk import NAT_TARGETS, ChainWalk, Step, walk_chain

WAYS = {
    "forward": ("prerouting", "forward", "postrouting"),
    "input": ("prerouting", "input"),
    "output": ("output", "postrouting"),
}
_DNAT_HOOKS = ("prerouting", "output")

#: An interface's addresses in the namespace (for MASQUERADE and REDIRECT); [] unknown.
AddressesOf = Callable[[str | None], Sequence[str]]


def no_addresses(iface: str | None) -> Sequence[str]:
    return ()


@dataclass(frozen=True)
class Rewrite:
    """A NAT binding a nat chain made: the rule and the address (and port) it gave."""

    kind: str  # DNAT or SNAT
    #: None for conntrack's own rewrite of a reply (it undoes the request's binding).
    rule: Rule | None
    hook: str
    before: tuple[str | None, int | None]
    #: None where the new address cannot be told (a MASQUERADE on an unknown interface).
    after: tuple[str | None, int | None]


@dataclass(frozen=True)
class ChainVisit:
    base: BaseChain
    walk: ChainWalk | None
    #: Why the chain did not run for this packet (nat: not the first packet).
    skipped: str | None = None
    #: The packet as this chain saw it (the marks and rewrites of the chains before).
    packet: PacketView | None = None


@dataclass(frozen=True)
class HookVisit:
    """One hook: the packet as it came, each base chain's walk, the outcome."""

    hook: str
    packet: PacketView
    chains: tuple[ChainVisit, ...]
    #: The chain whose certain drop ended the packet here, if one did.
    dropped_by: ChainVisit | None = None
    rewrites: tuple[Rewrite, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        if self.dropped_by is not None:
            return "drop"
        if any(c.walk is not None and c.walk.verdict == "queue" for c in self.chains):
            return "queue"
        return "accept"

    @property
    def doubts(self) -> list[Step]:
        return [s for c in self.chains if c.walk for s in c.walk.doubts]

    @property
    def certain(self) -> bool:
        return not self.doubts


@dataclass(frozen=True)
class NamespacePass:
    """A packet's way through one namespace's hooks (ending early where it is dropped)."""

    way: str
    hooks: tuple[HookVisit, ...]
    packet: PacketView

    def hook(self, name: str) -> HookVisit | None:
        return next((h for h in self.hooks if h.hook == name), None)

    @property
    def dropped_at(self) -> HookVisit | None:
        return next((h for h in self.hooks if h.dropped_by is not None), None)

    @property
    def verdict(self) -> str:
        if self.dropped_at is not None:
            return "drop"
        return "queue" if any(h.verdict == "queue" for h in self.hooks) else "accept"

    @property
    def rewrites(self) -> list[Rewrite]:
        return [r for h in self.hooks for r in h.rewrites]

    @property
    def doubts(self) -> list[Step]:
        return [s for h in self.hooks for s in h.doubts]

    @property
    def certain(self) -> bool:
        return not self.doubts


def traverse(
    firewall: Firewall,
    packet: PacketView,
    way: str,
    addresses_of: AddressesOf = no_addresses,
    undo: Sequence[Rewrite] = (),
) -> NamespacePass:
    """The packet's way through the namespace's hooks for `way` (forward, input, output).

    `packet` has the interfaces of the whole way (in_iface None when the namespace
    sent it, out_iface None when it is delivered); each hook sees the ones it has.
    `undo`: for a reply, the request's bindings in this namespace, which conntrack
    reverses (a SNAT's at the hook where DNAT would happen, a DNAT's where SNAT would).
    """
    visits = []
    for hook in WAYS[way]:
        visit, packet = run_hook(firewall, hook, packet, addresses_of, undo)
        visits.append(visit)
        if visit.dropped_by is not None:
            break
    return NamespacePass(way, tuple(visits), packet)


def run_hook(
    firewall: Firewall,
    hook: str,
    packet: PacketView,
    addresses_of: AddressesOf = no_addresses,
    undo: Sequence[Rewrite] = (),
) -> tuple[HookVisit, PacketView]:
    """Every base chain at `hook` for the packet; the visit and the packet after it."""
    whole = packet
    seen = _at_hook(packet, hook)
    first = seen
    chains: list[ChainVisit] = []
    rewrites: list[Rewrite] = []
    bound = False
    dropped: ChainVisit | None = None
    bases = firewall.base_chains(hook, seen.family)
    reverse = _reversal(undo, hook)
    nat_point = -100 if hook in _DNAT_HOOKS else 100
    for base in bases:
        if reverse is not None and base.priority >= nat_point:
            seen, reverse = _undone(seen, reverse, rewrites, hook), None
        if base.kind == "nat" and seen.ctstate != NEW:
            chains.append(ChainVisit(base, None, "nat chains see only a connection's first packet"))
            continue
        if base.kind == "nat" and bound:
            chains.append(ChainVisit(base, None, "an earlier nat chain made the binding"))
            continue
        walk = walk_chain(base.table, base.chain.name, seen)
        visit = ChainVisit(base, walk, packet=seen)
        chains.append(visit)
        seen = replace(seen, mark=walk.mark, ctmark=walk.ctmark)
        if walk.ending == "nat" and walk.rule is not None:
            bound = True
            rewrite = _rewrite(walk.rule, hook, seen, addresses_of)
            rewrites.append(rewrite)
            seen = _rewritten(seen, rewrite)
        if walk.verdict == "drop":
            dropped = visit
            break
    if reverse is not None and dropped is None:
        seen = _undone(seen, reverse, rewrites, hook)
    notes = _tie_notes(chains)
    after = replace(
        whole, src=seen.src, dst=seen.dst, sport=seen.sport, dport=seen.dport,
        mark=seen.mark, ctmark=seen.ctmark,
    )  # fmt: skip
    return HookVisit(hook, first, tuple(chains), dropped, tuple(rewrites), notes), after


def _reversal(undo: Sequence[Rewrite], hook: str) -> Rewrite | None:
    """The request's binding conntrack reverses for the reply at this hook, if any."""
    kind = "SNAT" if hook in _DNAT_HOOKS else "DNAT"  # a reply's dst was the request's src
    if hook not in (*_DNAT_HOOKS, "postrouting", "input"):
        return None
    return next((r for r in undo if r.kind == kind), None)


def _undone(packet: PacketView, binding: Rewrite, rewrites: list[Rewrite], hook: str) -> PacketView:
    ip, port = binding.before
    if binding.kind == "SNAT":  # the reply comes back to the rewritten source
        rewrites.append(Rewrite("DNAT", None, hook, (packet.dst, packet.dport), (ip, port)))
        return replace(packet, dst=ip or packet.dst, dport=port)
    rewrites.append(Rewrite("SNAT", None, hook, (packet.src, packet.sport), (ip, port)))
    return replace(packet, src=ip or packet.src, sport=port)


def _at_hook(packet: PacketView, hook: str) -> PacketView:
    """The interfaces a hook has: no output one before routing, no input one for output."""
    if hook in ("prerouting", "input"):
        return replace(packet, out_iface=None)
    if hook == "output":
        return replace(packet, in_iface=None)
    return packet


def _tie_notes(chains: list[ChainVisit]) -> tuple[str, ...]:
    ran = [c for c in chains if c.walk is not None and c.walk.steps]
    notes = []
    for i, one in enumerate(ran):
        for other in ran[i + 1 :]:
            if one.base.priority == other.base.priority:
                notes.append(
                    f"{one.base.label} and {other.base.label} share priority "
                    f"{one.base.priority}: the kernel runs them in the order they were "
                    "registered, which the rules do not show"
                )
    return tuple(notes)


def _rewrite(rule: Rule, hook: str, packet: PacketView, addresses_of: AddressesOf) -> Rewrite:
    target = rule.target or ""
    if target in ("DNAT", "REDIRECT") or (target == "NETMAP" and hook in _DNAT_HOOKS):
        before = (packet.dst, packet.dport)
        kind = "DNAT"
    else:
        before = (packet.src, packet.sport)
        kind = "SNAT"
    ip, port = before
    after: tuple[str | None, int | None]
    if target in ("DNAT", "SNAT"):
        spec = rule.option("--to-destination" if target == "DNAT" else "--to-source") or ""
        after = _first_of_spec(spec.split()[0] if spec else "", before)
    elif target == "MASQUERADE":
        after = (_address_of(addresses_of(packet.out_iface), packet), _port(rule, port))
    elif target == "REDIRECT":
        if hook == "output":
            local: str | None = "127.0.0.1" if packet.family == 4 else "::1"
        else:
            local = _address_of(addresses_of(packet.in_iface), packet)
        after = (local, _port(rule, port))
    else:  # NETMAP: the prefix changes, the host part stays
        after = (_netmap(rule.option("--to"), ip), port)
    return Rewrite(kind, rule, hook, before, after)


def _rewritten(packet: PacketView, rewrite: Rewrite) -> PacketView:
    ip, port = rewrite.after
    if rewrite.kind == "DNAT":
        return replace(packet, dst=ip or packet.dst, dport=port)
    return replace(packet, src=ip or packet.src, sport=port)


def _first_of_spec(
    spec: str, before: tuple[str | None, int | None]
) -> tuple[str | None, int | None]:
    """`10.0.0.5-10.0.0.7:8000-8010` -> ("10.0.0.5", 8000); a missing part keeps `before`'s."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        ports = rest[1:] if rest.startswith(":") else ""
    elif spec.count(":") > 1:
        host, ports = spec, ""
    else:
        host, _, ports = spec.partition(":")
    first = host.split("-", 1)[0] or before[0]
    low = ports.split("-", 1)[0]
    return first, int(low) if low.isdigit() else before[1]


def _port(rule: Rule, port: int | None) -> int | None:
    spec = rule.option("--to-ports") or ""
    low = spec.split("-", 1)[0]
    return int(low) if low.isdigit() else port


def _address_of(addresses: Sequence[str], packet: PacketView) -> str | None:
    for address in addresses:
        if (":" in address) == (packet.family == 6):
            return address
    return None


def _netmap(spec: str | None, ip: str | None) -> str | None:
    if not spec or ip is None:
        return None
    try:
        net = ipaddress.ip_network(spec, strict=False)
        value = ipaddress.ip_address(ip)
        host = int(value) & int(net.hostmask)
        return str(ipaddress.ip_address(int(net.network_address) | host))
    except ValueError:
        return None


def nat_steps(visit: HookVisit) -> list[Step]:
    """The NAT rules met at a hook, maybe or certain, in the order the kernel met them."""
    return [
        s
        for c in visit.chains
        if c.walk is not None and c.base.kind == "nat"
        for s in c.walk.steps
        if s.action in NAT_TARGETS
    ]

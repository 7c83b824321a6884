"""Which rule rewrote (or dropped) a packet: the answers flowtrace gives about NAT and drops.

`attribute` walks a chain the way the kernel would for the first packet of a
connection (nat rules only see that one): DNAT in PREROUTING (OUTPUT for locally
generated packets), SNAT and MASQUERADE in POSTROUTING; it names the first rule that
matches the packet as it was before the rewrite and whose target explains the values
after it.  `find_drop_rule` does the same for a packet that vanished, in the filter
table.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import replace

from flowtrace.model import Address, NatEvent
from flowtrace.topology.netfilter.marks import mark_before_postrouting
from flowtrace.topology.netfilter.matching import (
    NEW,
    Outcome,
    PacketView,
    walk,
    walk_chain,
)
from flowtrace.topology.netfilter.rules import NatRuleset, Rule, protocol_number

#: Targets that end the walk through a table when they fire.
_NAT_TARGETS = frozenset(("DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"))
_DROP_TARGETS = frozenset(("DROP", "REJECT"))


def attribute(
    ruleset: NatRuleset,
    event: NatEvent,
    proto: str | int,
    in_iface: str | None,
    out_iface: str | None,
    local_addresses: Iterable[str] = frozenset(),
    *,
    peer: Address | None = None,
) -> str | None:
    """The text of the nat rule that made `event`, or None if none explains it.

    in_iface/out_iface: the packet's interfaces in the namespace that did the NAT
    (None: it has none there: locally generated, or not routed yet).  For DNAT the
    chain is PREROUTING, or OUTPUT when in_iface is None; for SNAT it is POSTROUTING,
    or INPUT when out_iface is None.  `local_addresses` are the namespace's own
    addresses (for MASQUERADE, REDIRECT and --dst-type LOCAL; empty: unknown).
    `peer` is the other end of the packet before the rewrite (the source for DNAT,
    the destination for SNAT), for rules that match on it.
    """
    number = proto if isinstance(proto, int) else _protocol_number_or_zero(proto)
    local = frozenset(local_addresses)
    before = event.before
    if event.kind == "DNAT":
        chain = "PREROUTING" if in_iface is not None else "OUTPUT"
        packet = PacketView(
            number,
            peer.ip if peer else None,
            before.ip,
            peer.port if peer else None,
            before.port,
            in_iface,
            out_iface if chain == "OUTPUT" else None,
            NEW,
            local,
        )
    else:
        chain = "POSTROUTING" if out_iface is not None else "INPUT"
        packet = PacketView(
            number,
            before.ip,
            peer.ip if peer else None,
            before.port,
            peer.port if peer else None,
            in_iface if chain == "INPUT" else None,
            out_iface,
            NEW,
            local,
        )

    def decide(rule: Rule, certain: bool) -> Outcome:
        if rule.target in _NAT_TARGETS:
            return "found" if explains(rule, event, local) else "continue"
        if rule.target == "ACCEPT" and certain:
            return "stop"
        return "continue"

    if chain == "POSTROUTING":
        # A rule on the packet's mark (netavark's portfw MASQUERADE) fits only the
        # packets the earlier hooks marked: tell it when the mark can be known, and walk
        # with it unknown again when that finds nothing.
        entered = replace(packet, in_iface=in_iface, out_iface=None)
        mark = mark_before_postrouting(ruleset, entered, local_stack=in_iface is None)
        if mark is not None:
            found = walk(ruleset.nat, chain, replace(packet, mark=mark), decide)
            if found is not None:
                return found.text
    found = walk(ruleset.nat, chain, packet, decide)
    return found.text if found else None


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


def find_drop_rule(
    ruleset: NatRuleset,
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
    """The filter rule (or chain policy) that dropped a packet that vanished in a namespace.

    The chain is FORWARD when the packet has both interfaces there, INPUT when it
    has no output interface (delivered locally), OUTPUT when it has no input one.
    Since the packet is known to be gone, an ACCEPT that only maybe matches is
    passed over and a DROP or REJECT that maybe matches is the answer.  A chain
    policy is returned as `-P FORWARD DROP`.
    """
    if in_iface is not None and out_iface is not None:
        chain = "FORWARD"
    elif out_iface is None:
        chain = "INPUT"
    else:
        chain = "OUTPUT"
    number = proto if isinstance(proto, int) else _protocol_number_or_zero(proto)
    packet = PacketView(
        number, src, dst, sport, dport, in_iface, out_iface, ctstate, frozenset(local_addresses)
    )

    def decide(rule: Rule, certain: bool) -> Outcome:
        if rule.target in _DROP_TARGETS:
            return "found"
        if rule.target == "ACCEPT" and certain:
            return "stop"
        return "continue"

    table = ruleset.filter
    status, rule = walk_chain(table, chain, packet, decide)
    if status == "found" and rule is not None:
        return rule.text
    builtin = table.chains.get(chain)
    if status in ("fallthrough", "return") and builtin and builtin.policy == "DROP":
        return f"-P {chain} DROP"
    return None

"""Whether a rule fits a packet: three-valued, because flowtrace cannot evaluate every match.

Matches flowtrace cannot evaluate (ipset and nft sets it cannot read, limits, owners,
opaque iptables-nft expressions...) count as "maybe": a maybe-match can still be the
answer when its target explains what was seen, but never hides the rules after it (a
RETURN or ACCEPT must match for certain).  Marks are known: a probe's packet carries
mark 0 and its connection ctmark 0 until a rule sets them (walk follows the rules that
do), and None once a rule that only maybe matched might have changed them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flowtrace.topology.netfilter.rules import Criterion, Rule

#: The conntrack state of a connection's first packet, the one nat rules see.
NEW = "NEW"

#: True: matches; False: does not; None: flowtrace cannot tell.
Tristate = bool | None

#: ICMP type names as iptables and nft print them.
ICMP_TYPES = {
    "echo-reply": 0,
    "destination-unreachable": 3,
    "redirect": 5,
    "echo-request": 8,
    "time-exceeded": 11,
    "parameter-problem": 12,
}
#: ICMPv6's, as nft and ip6tables name them (RFC 4443, RFC 4861): other numbers.
ICMPV6_TYPES = {
    "destination-unreachable": 1,
    "packet-too-big": 2,
    "time-exceeded": 3,
    "parameter-problem": 4,
    "echo-request": 128,
    "echo-reply": 129,
    "mld-listener-query": 130,
    "mld-listener-report": 131,
    "mld-listener-done": 132,
    "nd-router-solicit": 133,
    "nd-router-advert": 134,
    "nd-neighbor-solicit": 135,
    "nd-neighbor-advert": 136,
    "nd-redirect": 137,
    "router-solicitation": 133,
    "router-advertisement": 134,
    "neighbour-solicitation": 135,
    "neighbour-advertisement": 136,
    "neighbor-solicitation": 135,
    "neighbor-advertisement": 136,
    "redirect": 137,
}


@dataclass(frozen=True)
class PacketView:
    """The packet as a chain sees it: None where a field is unknown.

    An interface of None means there is none at that hook (no input interface for
    locally generated packets, no output interface before routing), which is how
    the kernel matches `-i`/`-o` there.  An empty `local_addresses` means unknown.
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
    #: The packet's mark and its connection's mark (None: unknown).
    mark: int | None = 0
    ctmark: int | None = 0
    icmp_type: int | None = None

    @property
    def family(self) -> int:
        """4 or 6, from the addresses (4 when neither is known)."""
        for address in (self.src, self.dst):
            if address:
                return 6 if ":" in address else 4
        return 4


def rule_matches(rule: Rule, packet: PacketView) -> Tristate:
    """Whether every match of the rule fits the packet (None: some cannot be told)."""
    return criteria_match(rule.criteria, packet)


def criteria_match(criteria: tuple[Criterion, ...], packet: PacketView) -> Tristate:
    result: Tristate = True
    for criterion in criteria:
        fits = criterion_fits(criterion, packet)
        if fits is False:
            return False
        if fits is None:
            result = None
    return result


def criterion_fits(criterion: Criterion, packet: PacketView) -> Tristate:
    """One match, its negation applied (an unknown stays unknown)."""
    fits = _fits(criterion, packet)
    if fits is not None and criterion.negated:
        fits = not fits
    return fits


def unknown_matches(rule: Rule, packet: PacketView) -> tuple[str, ...]:
    """The texts of the rule's matches flowtrace could not evaluate for this packet."""
    return tuple(c.text for c in rule.criteria if criterion_fits(c, packet) is None)


def _fits(c: Criterion, p: PacketView) -> Tristate:
    kind = c.kind
    if kind == "source" or kind == "destination":
        address = p.src if kind == "source" else p.dst
        if address is None:
            return None
        ip = ipaddress.ip_address(address)
        return any(ip in net for net in c.networks)
    if kind == "in" or kind == "out":
        iface = p.in_iface if kind == "in" else p.out_iface
        return any(_iface_fits(name, iface) for name in c.names)
    if kind == "proto":
        wanted = c.protos or ((c.proto,) if c.proto is not None else ())
        return 0 in wanted or p.proto in wanted
    if kind == "family":
        return str(p.family) in c.names
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
    if kind == "mark" or kind == "ctmark":
        value = p.mark if kind == "mark" else p.ctmark
        if value is None or c.mark is None:
            return None
        return value & c.mark[1] == c.mark[0]
    if kind == "icmp-type":
        if p.proto not in (1, 58):
            return False
        if p.icmp_type is None:
            return None
        return any(_icmp_type_number(name, p.proto) == p.icmp_type for name in c.names)
    return None


def _icmp_type_number(name: str, proto: int | None = 1) -> int:
    """`echo-request`, `8` or `8/0` (iptables-save prints numbers) -> 8 for ICMP, 128 for
    ICMPv6 (proto 58: the same names, other numbers); -1 if unknown."""
    head = name.split("/", 1)[0]
    if head.isdigit():
        return int(head)
    return (ICMPV6_TYPES if proto == 58 else ICMP_TYPES).get(head, -1)


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
        elif kind == "BROADCAST":
            answers.append(True if str(ip) == "255.255.255.255" else None)
        elif kind == "UNICAST":
            answers.append(None if not ip.is_multicast else False)
        else:
            answers.append(None)
    if True in answers:
        return True
    return None if None in answers else False

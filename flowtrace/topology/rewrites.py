"""The one NAT explainer: the rule that made a rewrite and the flow's conntrack entry.

A rewrite is seen as the difference between two sightings of one packet (or between
what a socket sent and the first sighting).  Which chain made it follows from where
it happened: a DNAT in PREROUTING when the packet came in by an interface of that
namespace, in OUTPUT when the namespace's own stack sent it; a SNAT in POSTROUTING.
The rule is found by walking that namespace's nat table as the kernel would; the
conntrack entry by asking the namespace's conntrack table for the flow as it was
before the rewrite.  A reply's rewrite that undoes a request's takes the request's
rule and entry (one conntrack entry covers both directions).  An IPv6 rewrite (NAT66)
is explained from the namespace's ip6tables rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from flowtrace.errors import FlowtraceError
from flowtrace.model import Address, NatEvent, Packet, Point, ip_version
from flowtrace.topology.conntrack import find_entry
from flowtrace.topology.kernel import NetnsState, read_state

if TYPE_CHECKING:
    from flowtrace.topology.netfilter import Firewall


@dataclass(frozen=True)
class Flow:
    """A connection as the kernel's conntrack table keys it: before any rewrite."""

    proto: str
    src: str
    dst: str
    sport: int | None = None
    dport: int | None = None
    icmp_id: int | None = None


def explain_rewrite(
    ev: NatEvent,
    netns_path: str,
    flow: Flow,
    *,
    in_iface: str | None,
    out_iface: str | None,
    local: Iterable[str] | None = None,
    peer: Address | None = None,
    before_dnat: Address | None = None,
    firewalls: dict[str, Firewall] | None = None,
) -> NatEvent:
    """`ev` with the nat rule that made it and the conntrack entry of `flow`.

    in_iface/out_iface: the packet's interfaces in the namespace that rewrote it (None:
    it has none there).  `local`: that namespace's own addresses (None: read them);
    `peer`: the packet's other end before the rewrite, for rules that match on it;
    `before_dnat`: for a SNAT, the destination before a DNAT the same namespace made
    (the marks its prerouting rules set on the way decide some SNATs: netavark's).
    `firewalls`: namespaces' rules already read at this moment, by path (filled in).
    What cannot be read is said in the field instead ("(rules not readable: ...)").
    """
    # Imported here: only a trace that saw a rewrite reads rules (the model costs 8-10 ms).
    from flowtrace.topology.netfilter import attribute_detail, read_firewall
    from flowtrace.topology.netfilter.engines import nat_words

    doubt = words = None
    try:
        addresses = (
            list(local) if local is not None else [a.ip for a in read_state(netns_path).addresses]
        )
        known = firewalls if firewalls is not None else {}
        ipv6 = ip_version(flow.src) == 6
        key = f"{netns_path} ip6" if ipv6 else netns_path  # ip6tables' rules for IPv6
        if key not in known:
            known[key] = read_firewall(netns_path, ipv6=ipv6)
        found = attribute_detail(
            known[key], ev, flow.proto, in_iface, out_iface, addresses,
            peer=peer, before_dnat=before_dnat,
        )  # fmt: skip
        rule, doubt = (found.rule, found.doubt) if found else (None, None)
        words = nat_words(found.source) if found and found.source else None
    except FlowtraceError as exc:
        rule = f"(rules not readable: {exc.message})"
    try:
        conntrack = find_entry(
            netns_path, flow.proto, flow.src, flow.dst, flow.sport, flow.dport, flow.icmp_id
        )
    except FlowtraceError as exc:
        conntrack = f"(conntrack not readable: {exc.message})"
    return replace(ev, rule=rule, conntrack=conntrack, rule_doubt=doubt, explanation=words)


def attribute_nat(packets: Sequence[Packet], points: Sequence[Point]) -> list[Packet]:
    """Each rewrite between two points with its rule and entry, read where it happened.

    A SNAT happens in the namespace of the point after it (POSTROUTING, on the way
    out), a DNAT in that of the point before it (PREROUTING, on the way in).
    """
    by_id = {p.id: p for p in points}
    out = []
    #: The latest request rewrite per (kind, hop): a reply's reverse takes its rule and entry.
    forward: dict[tuple[str, str, str], NatEvent] = {}
    firewalls: dict[str, Firewall] = {}  # each namespace's rules, read once for these packets
    for pkt in packets:
        events = []
        # namespace (host, inode) -> destination before its DNAT
        dnat_in: dict[tuple[str | None, int], Address] = {}
        for ev in pkt.nat:
            a, b = by_id.get(ev.between[0]), by_id.get(ev.between[1])
            if a is None or b is None:
                events.append(ev)
                continue
            if ev.reverse_of is None:
                where = b if ev.kind == "SNAT" else a
                earlier = dnat_in.get(where.netns.key) if ev.kind == "SNAT" else None
                ev = _between_points(ev, pkt, where, a, b, earlier, firewalls)
                if ev.kind == "DNAT":
                    dnat_in[where.netns.key] = ev.before
                forward[(ev.kind, ev.between[1], ev.between[0])] = ev
            else:
                twin = next((f for f in forward.values() if f.kind == ev.reverse_of), None)
                if twin is not None:
                    ev = replace(
                        ev, rule=twin.rule, conntrack=twin.conntrack, rule_doubt=twin.rule_doubt
                    )
            events.append(ev)
        out.append(replace(pkt, nat=tuple(events)))
    return out


def _between_points(
    ev: NatEvent,
    pkt: Packet,
    where: Point,
    a: Point,
    b: Point,
    before_dnat: Address | None,
    firewalls: dict[str, Firewall],
) -> NatEvent:
    before = next((s for s in pkt.sightings if s.point == ev.between[0]), pkt.first)
    h = before.headers
    flow = Flow(h.proto_name, h.src, h.dst, h.sport, h.dport, h.icmp_id)
    key = where.netns.key  # (host, inode): two hosts may number their namespaces alike
    # The packet's other end, for rules that match on it (the source of a DNAT'ed packet).
    peer = Address(h.src, h.sport) if ev.kind == "DNAT" else Address(h.dst, h.dport)
    try:
        state = read_state(where.netns.path)
    except FlowtraceError:
        state = None
    return explain_rewrite(
        ev,
        where.netns.path,
        flow,
        in_iface=_l3(state, a) if a.netns.key == key else None,
        out_iface=_l3(state, b) if b.netns.key == key else None,
        local=[x.ip for x in state.addresses] if state is not None else None,
        peer=peer,
        before_dnat=before_dnat,
        firewalls=firewalls,
    )


def _l3(state: NetnsState | None, point: Point) -> str:
    """The interface rules match for a point: a bridge port's bridge, else its device."""
    link = state.link(point.ifindex) if state is not None else None
    if state is None or link is None or link.master is None:
        return point.ifname
    master = state.link(link.master)
    return master.name if master is not None and master.kind == "bridge" else point.ifname

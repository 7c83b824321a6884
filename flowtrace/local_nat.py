"""Rewrites the source namespace's own stack makes before the first observation point.

No capture point sees a packet between the socket that sends it and the first
interface it crosses, so a rewrite made there shows as no difference between two
sightings.  Two such rewrites matter for Docker's published ports:

* the host reaching its own published port: Docker's nat OUTPUT DNATs the probe to the
  container before it reaches docker0, and the reply is put back on its way in;
* the host reaching 172.17.0.1 (its own docker0 address) leaves by lo, so Docker's
  `-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE` rewrites its source
  before lo.

Both are told by comparing what the probe was sent as with its first sighting, and
shown as events between "<namespace> (local stack)" and the first point, with the rule
(walked in OUTPUT or POSTROUTING) and the conntrack entry.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from flowtrace.errors import FlowtraceError
from flowtrace.model import Address, NatEvent, Packet

if TYPE_CHECKING:
    from flowtrace.api import Route


def local_stack(route: Route) -> str:
    """The pseudo point where the source namespace's own stack rewrites a packet."""
    return f"{route.src.netns.label} (local stack)"


def source_dnat(route: Route, pkt: Packet) -> Packet:
    """The DNAT the source's nat OUTPUT made before the first point, and its reversal.

    The event is between the source's own stack (where the probe was addressed to the
    published port) and the first point; the reply is put back after the last point,
    on its way into that stack.
    """
    sent = Address(route.dst_ip, route.dst_port)
    if pkt.probe is None or pkt.first.headers.proto != 6:
        return pkt
    if pkt.direction == "request":
        h = pkt.first.headers
        if (h.dst, h.dport) == (sent.ip, sent.port):
            return pkt
        ev = NatEvent("DNAT", (local_stack(route), pkt.first.point), sent, Address(h.dst, h.dport))
        ev = _explain(route, ev, h.proto_name, None, Address(h.src, h.sport), h.icmp_id)
    else:
        h = pkt.last.headers
        if (h.src, h.sport) == (sent.ip, sent.port):
            return pkt
        ev = NatEvent(
            "SNAT", (pkt.last.point, local_stack(route)), Address(h.src, h.sport), sent, None
        )
        ev = replace(ev, reverse_of="DNAT")
    return replace(pkt, nat=(ev, *pkt.nat))


def loopback_snat(route: Route, out_iface: str, pkt: Packet) -> Packet:
    """A probe's source rewritten before lo: SNAT between the stack and the lo point."""
    h = pkt.first.headers
    sent = route.plan.src_ip
    if pkt.probe is None or pkt.direction != "request" or not sent or h.src == sent:
        return pkt
    ev = NatEvent(
        "SNAT",
        (local_stack(route), pkt.first.point),
        Address(sent, h.sport),
        Address(h.src, h.sport),
    )
    ev = _explain(route, ev, h.proto_name, out_iface, Address(h.dst, h.dport), h.icmp_id)
    return replace(pkt, nat=(ev, *pkt.nat))


def _explain(
    route: Route,
    ev: NatEvent,
    proto: str,
    out_iface: str | None,
    peer: Address,
    icmp_id: int | None,
) -> NatEvent:
    """The rule (nat OUTPUT for a DNAT, POSTROUTING for a SNAT) and the conntrack entry."""
    from flowtrace.topology.conntrack import find_entry
    from flowtrace.topology.netfilter import attribute, read_ruleset

    ns = route.src.netns.path
    local = (*route.src.addresses, ev.after.ip if ev.kind == "SNAT" else peer.ip)
    try:
        rule = attribute(read_ruleset(ns), ev, proto, None, out_iface, local, peer=peer)
    except FlowtraceError as exc:
        rule = f"(rules not readable: {exc.message})"
    # the connection as the source opened it: before either rewrite
    src = ev.before if ev.kind == "SNAT" else peer
    dst = peer if ev.kind == "SNAT" else ev.before
    try:
        conntrack = find_entry(ns, proto, src.ip, dst.ip, src.port, dst.port, icmp_id)
    except FlowtraceError as exc:
        conntrack = f"(conntrack not readable: {exc.message})"
    return replace(ev, rule=rule, conntrack=conntrack)

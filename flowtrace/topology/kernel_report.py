"""The kernel's word on a run, put together: which probe each traced packet was, the
hooks and rules it met namespace by namespace, where that agrees with flowtrace's own
reading of the rules (the verdicts' and rewrites' rules), and the drop reasons the
kernel reported while each probe was out.  Pure: the run (run.kernel_word) hands in
what it read; the result is the JSON-ready `kernel` section of a trace or a lookup.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flowtrace.model import NatEvent, Packet, Point, Verdict
from flowtrace.topology.kfree import MATCHED_BY, ProbeDrop, reason_words
from flowtrace.topology.nftrace import (
    HookVisit,
    RuleMet,
    TraceMatch,
    describe_packet,
    int_field,
    quoted_ip_id,
    tcp_flags_text,
)

_ICMP_ERRORS = ("destination-unreachable", "time-exceeded", "parameter-problem")


@dataclass(frozen=True)
class ProbeKeys:
    """What tells which probe a traced packet belongs to."""

    match: TraceMatch
    #: The IP ID of each probe's request (NAT never rewrites it) -> the probe.
    ip_ids: Mapping[int, int]
    #: When each probe was sent (CLOCK_MONOTONIC ns), in probe order.
    sent_ns: Sequence[int]

    def probe_and_direction(self, visit: HookVisit) -> tuple[int | None, str]:
        f = visit.fields
        icmp_type = f.get("icmp type")
        if icmp_type in _ICMP_ERRORS:
            quoted = quoted_ip_id(f)
            return self._by_ip_id(quoted, visit), "reply"
        if self.match.kind == "socket":
            if int_field(f, "udp dport") == self.match.port:
                return 0, "reply"
            return 0, "request"
        if self.match.kind == "tcp":
            # nft prints no sequence numbers: an answer is what acknowledges (SYN-ACK,
            # RST-ACK from the destination), the rest are requests (the SYN, the source's
            # bare RST after a SYN-ACK).
            if "ACK" in tcp_flags_text(f.get("tcp flags", "")).split("+"):
                return self._by_time(visit), "reply"
            return self._by_ip_id(int_field(f, "ip id"), visit), "request"
        if icmp_type == "echo-reply":
            seq = int_field(f, "icmp sequence")
            return self._by_sequence(seq, visit), "reply"
        return self._by_ip_id(int_field(f, "ip id"), visit), "request"

    def _by_ip_id(self, ip_id: int | None, visit: HookVisit) -> int | None:
        if ip_id is not None and ip_id in self.ip_ids:
            return self.ip_ids[ip_id]
        return self._by_time(visit)

    def _by_sequence(self, seq: int | None, visit: HookVisit) -> int | None:
        probes = [p for p in range(len(self.sent_ns)) if seq is not None and p & 0xFFFF == seq]
        if len(probes) == 1:
            return probes[0]
        return self._by_time(visit)

    def _by_time(self, visit: HookVisit) -> int | None:
        """The probe that was out when flowtrace read the event."""
        for probe in range(len(self.sent_ns) - 1, -1, -1):
            if self.sent_ns[probe] <= visit.time_ns:
                return probe
        return None


@dataclass(frozen=True)
class KernelPacket:
    """One packet of a probe as the kernel traced it, hook by hook along the path."""

    probe: int | None
    direction: str
    what: str
    visits: tuple[HookVisit, ...]

    @property
    def dropped(self) -> tuple[HookVisit, RuleMet] | None:
        for visit in self.visits:
            rule = visit.dropped_by
            if rule is not None:
                return visit, rule
        return None


def _what(fields: Mapping[str, str]) -> str:
    """A packet's kind as NAT leaves it: no ports (they may be rewritten)."""
    text = describe_packet(fields)
    return "udp" if text.startswith("udp ") else text


def kernel_packets(
    visits: Mapping[str, Sequence[HookVisit]], path_netns: Sequence[str], keys: ProbeKeys
) -> list[KernelPacket]:
    """The namespaces' visits as packets: grouped by probe, direction and kind, each
    packet's namespaces in path order (a reply's in reverse), each namespace's visits in
    the kernel's order."""
    rank = {label: i for i, label in enumerate(dict.fromkeys(path_netns))}
    groups: dict[tuple[int | None, str, str], list[HookVisit]] = {}
    for label in visits:
        for visit in visits[label]:
            probe, direction = keys.probe_and_direction(visit)
            groups.setdefault((probe, direction, _what(visit.fields)), []).append(visit)
    packets = []
    for (probe, direction, what), members in groups.items():
        sign = -1 if direction == "reply" else 1
        ordered = sorted(
            enumerate(members),
            key=lambda item: (sign * rank.get(item[1].netns, len(rank)), item[0]),
        )
        packets.append(KernelPacket(probe, direction, what, tuple(v for _, v in ordered)))
    first_seen = {id(p): min(v.time_ns for v in p.visits) for p in packets}
    packets.sort(
        key=lambda p: (p.probe is None, p.probe or 0, p.direction != "request", first_seen[id(p)])
    )
    return packets


# --- flowtrace's reading against the kernel's ---------------------------------------------------


def _same_rule(model: str, rule: RuleMet) -> bool:
    """Whether flowtrace's rule is the one the kernel met: a native nftables rule by its
    table, chain and handle (nft's text of it differs between listing and trace: counters),
    else by its text."""
    named = _NFT_NAMED.match(model)
    if named is not None:
        family, table, chain, handle = named.groups()
        key = (family, table, chain, int(handle) if handle else None)
        if handle is None and model.split(": ", 1)[-1] != rule.text:
            return False  # a chain's policy: the same chain, the same policy
        return key == (rule.family, rule.table, rule.chain, rule.handle)
    said = " ".join(model.split())
    return any(
        said == " ".join(text.split()) for text in (rule.iptables, rule.text, rule.shown) if text
    )


#: A native nftables rule as flowtrace names it: `table F T chain C handle N: text`, or a
#: chain's policy `table F T chain C: policy drop`.
_NFT_NAMED = re.compile(r"^table (\S+) (\S+) chain (\S+)(?: handle (\d+))?: ")


def _where(visit: HookVisit) -> str:
    return f"{visit.netns} {visit.hook}"


def drop_check(verdict: Verdict, packets: Sequence[KernelPacket]) -> dict[str, Any] | None:
    """The verdict's rule against the rule the kernel saw drop the probe, if either has one."""
    mine = [p for p in packets if p.probe == verdict.probe]
    if not mine:
        return None
    dropped = next((d for p in mine if (d := p.dropped) is not None), None)
    model = verdict.rule
    if dropped is None and model is None:
        return _trace_end(verdict, mine)
    record: dict[str, Any] = {
        "probe": verdict.probe,
        "about": "drop",
        "model": model,
        "kernel": dropped[1].shown if dropped else None,
        "where": _where(dropped[0]) if dropped else None,
    }
    if dropped is not None and model is not None:
        visit, rule = dropped
        agree = _same_rule(model, rule)
        text = (
            f"the kernel agrees: dropped in {_where(visit)} by `{rule.shown}`"
            if agree
            else f"the model and the kernel disagree: the verdict names `{model}`, the "
            f"kernel's trace shows the probe dropped in {_where(visit)} by `{rule.shown}`"
        )
    elif dropped is not None:
        visit, rule = dropped
        agree = False
        text = (
            f"the kernel's trace names what the verdict does not: dropped in {_where(visit)} "
            f"by `{rule.shown}`"
        )
    else:
        agree = False
        text = (
            f"the model and the kernel disagree: the verdict names `{model}`, but in the "
            "kernel's trace no rule or policy dropped the probe's packets at any hook they "
            "reached"
        )
    return {**record, "agree": agree, "text": text}


def _trace_end(verdict: Verdict, mine: Sequence[KernelPacket]) -> dict[str, Any] | None:
    """A lost probe no rule dropped: where the kernel's trace of its request ends."""
    if verdict.outcome not in ("lost", "delivered"):
        return None
    requests = [p for p in mine if p.direction == "request" and p.visits]
    if not requests or any(p.direction == "reply" for p in mine):
        return None
    last = requests[0].visits[-1]
    return {
        "probe": verdict.probe,
        "about": "drop",
        "model": None,
        "kernel": None,
        "where": _where(last),
        "agree": True,
        "text": f"the kernel's trace of the request ends at {_where(last)}, where no rule or "
        "policy dropped it: the kernel did, by itself",
    }


_NAT_WORDS = {
    "DNAT": ("-j DNAT", "-j REDIRECT", "dnat to", "redirect to", "dnat ip to"),
    "SNAT": ("-j SNAT", "-j MASQUERADE", "snat to", "masquerade", "snat ip to"),
}


def _nat_rules(packet: KernelPacket, netns: str, kind: str) -> list[tuple[HookVisit, RuleMet]]:
    words = _NAT_WORDS[kind]
    return [
        (visit, rule)
        for visit in packet.visits
        if visit.netns == netns
        for chain in visit.chains
        for rule in chain.rules
        if any(w in (rule.iptables or rule.text) for w in words)
    ]


def nat_check(
    ev: NatEvent,
    packet: Packet,
    netns: str,
    kernel: Sequence[KernelPacket],
) -> dict[str, Any] | None:
    """A rewrite's rule (flowtrace's reading) against the nat rule the kernel saw apply."""
    if ev.reverse_of is not None or ev.rule is None:
        return None  # conntrack undoes a rewrite without any rule
    mine = [k for k in kernel if k.probe == packet.probe and k.direction == packet.direction]
    if not any(v.netns == netns for k in mine for v in k.visits):
        return None  # the kernel traced nothing of it there
    found = [hit for k in mine for hit in _nat_rules(k, netns, ev.kind)]
    record: dict[str, Any] = {
        "probe": packet.probe,
        "about": ev.kind,
        "model": ev.rule,
        "kernel": found[0][1].shown if found else None,
        "where": _where(found[0][0]) if found else netns,
    }
    if not found:
        text = (
            f"{ev.label}: no nat rule in the kernel's trace in {netns}: conntrack applied the "
            "flow's existing entry (nat chains see only a flow's first packet)"
        )
        return {**record, "agree": None, "text": text}
    visit, rule = found[0]
    if _same_rule(ev.rule, rule):
        text = f"the kernel agrees: {ev.label} by `{rule.shown}` in {_where(visit)}"
        return {**record, "agree": True, "text": text}
    text = (
        f"the model and the kernel disagree on {ev.label}: flowtrace names `{ev.rule}`, the "
        f"kernel's trace shows `{rule.shown}` in {_where(visit)}"
    )
    return {**record, "agree": False, "text": text}


def unseen_nat(
    kernel: Sequence[KernelPacket], seen: set[tuple[int | None, str, str, str]]
) -> list[dict[str, Any]]:
    """nat rules the kernel applied to a probe where flowtrace saw no rewrite (`seen`:
    probe, direction, namespace, kind of the rewrites it saw): after the last point, or
    where no two points show it."""
    found = []
    for packet in kernel:
        for kind in ("DNAT", "SNAT"):
            for netns in dict.fromkeys(v.netns for v in packet.visits):
                if (packet.probe, packet.direction, netns, kind) in seen:
                    continue
                for visit, rule in _nat_rules(packet, netns, kind)[:1]:
                    found.append(
                        {
                            "probe": packet.probe,
                            "about": kind,
                            "model": None,
                            "kernel": rule.shown,
                            "where": _where(visit),
                            "agree": False,
                            "text": f"the kernel's trace shows a {kind} flowtrace's capture "
                            f"points did not: `{rule.shown}` in {_where(visit)} (no two points "
                            "on the path saw the packet before and after it)",
                        }
                    )
    return found


def _distinct(found: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One check per probe, subject and finding (a SYN and its RST share a rewrite)."""
    kept: dict[tuple[object, ...], dict[str, Any]] = {}
    for c in found:
        kept.setdefault((c["probe"], c["about"], c["model"], c["kernel"], c["where"]), c)
    return list(kept.values())


def checks(
    verdicts: Sequence[Verdict],
    packets: Sequence[Packet],
    points: Sequence[Point],
    kernel: Sequence[KernelPacket],
) -> list[dict[str, Any]]:
    """Every place flowtrace's reading of the rules and the kernel's trace can be compared."""
    found = [c for v in verdicts if (c := drop_check(v, kernel)) is not None]
    netns_of = {p.id: p.netns.label for p in points}
    seen: set[tuple[int | None, str, str, str]] = set()
    for pkt in packets:
        for ev in pkt.nat:
            netns = netns_of.get(ev.between[1]) or netns_of.get(ev.between[0])
            if netns is None:
                continue
            seen.add((pkt.probe, pkt.direction, netns, ev.kind))
            check = nat_check(ev, pkt, netns, kernel)
            if check is not None:
                found.append(check)
    return _distinct(found + unseen_nat(kernel, seen))


# --- as JSON ----------------------------------------------------------------------------------


def rule_dict(rule: RuleMet) -> dict[str, Any]:
    return {
        "table": f"{rule.family} {rule.table}",
        "chain": rule.chain,
        "handle": rule.handle,
        "rule": rule.shown,
        "nft": rule.text,
        "iptables": rule.iptables,
        "verdict": rule.verdict,
    }


def visit_dict(visit: HookVisit) -> dict[str, Any]:
    dropped = visit.dropped_by
    return {
        "netns": visit.netns,
        "hook": visit.hook,
        "iif": visit.iif,
        "oif": visit.oif,
        "chains": [
            {
                "table": f"{c.family} {c.table}",
                "chain": c.chain,
                "verdict": c.verdict,
                "rules": [rule_dict(r) for r in c.rules],
            }
            for c in visit.chains
        ],
        "dropped_by": dropped.shown if dropped else None,
        "nat_skipped": list(visit.skipped),
    }


def packet_dict(packet: KernelPacket) -> dict[str, Any]:
    return {
        "probe": packet.probe,
        "direction": packet.direction,
        "what": packet.what,
        "hooks": [visit_dict(v) for v in packet.visits],
    }


def drop_dict(drop: ProbeDrop) -> dict[str, Any]:
    ev = drop.event
    return {
        "probe": drop.probe,
        "after_us": round(drop.after_ns / 1000, 1),
        "reason": ev.reason,
        "location": ev.location,
        "meaning": reason_words(ev.reason, ev.location) or None,
        "task": ev.task,
        "cpu": ev.cpu,
    }


def report(
    tables: Sequence[Mapping[str, Any]],
    packets: Sequence[KernelPacket],
    found: Sequence[Mapping[str, Any]],
    drops: Sequence[ProbeDrop] | None,
    tracefs: str | None,
    notes: Sequence[str] = (),
    subject: str = "probe",
) -> dict[str, Any]:
    """The `kernel` section of a trace's JSON and manifest (README: `--rules kernel`).

    `drops` None: tracefs could not be read (`tracefs` says why); else the drops seen.
    `subject`: "probe" (a trace's probes) or "lookup" (a DNS query, its probe 0).
    """
    return {
        "subject": subject,
        "tables": [dict(t) for t in tables],
        "packets": [packet_dict(p) for p in packets],
        "checks": [dict(c) for c in found],
        "drops": None if drops is None else [drop_dict(d) for d in drops],
        "drops_matched_by": MATCHED_BY,
        "tracefs": tracefs,
        "notes": list(notes),
    }

"""`flowtrace rules`' document: a RulePath as plain JSON-ready data (the stable format).

The terminal view (output.rulesview) renders this same document, so what `--json`
prints and what a person reads cannot drift apart.  Fields are only ever added
(README: "`flowtrace rules`").  Each rule is shown as the system prints it, with what
it means in its engine's terms where flowtrace recognises it.  Pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flowtrace.topology.netfilter import ChainVisit, HookVisit, PacketView, Rewrite, Step
from flowtrace.topology.netfilter.engines import accept_words, drop_words, nat_words
from flowtrace.topology.rulepath import Crossing, Direction, RulePath

SCHEMA = 1
_PROTOS = {0: "all", 1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}


def rules_document(
    path: RulePath,
    *,
    src: str,
    dst: str,
    kind: str,
    dst_ip: str,
    dst_port: int | None,
    points: Sequence[str],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The whole document for one `flowtrace rules SRC DST`."""
    return {
        "schema": SCHEMA,
        "src": src,
        "dst": dst,
        "kind": kind,
        "src_ip": path.request.packet.src,
        "dst_ip": dst_ip,
        "dst_port": dst_port,
        "path": list(points),
        "request": direction_doc(path.request),
        "reply": direction_doc(path.reply) if path.reply is not None else None,
        "notes": _unique([*notes, *path.notes]),
    }


def direction_doc(direction: Direction) -> dict[str, Any]:
    outcome = direction.outcome
    drop = outcome.drop
    explanation = None
    if drop is not None:
        explanation = drop_words(drop.source, drop.base, drop.packet or PacketView(0))
    return {
        "packet": packet_doc(direction.packet),
        "outcome": {
            "outcome": outcome.outcome,
            "text": outcome.text,
            "certain": outcome.certain,
            "netns": outcome.netns,
            "hook": drop.hook if drop else None,
            "rule": drop.rule if drop else None,
            "explanation": explanation,
        },
        "namespaces": [namespace_doc(c) for c in direction.crossings],
    }


def namespace_doc(crossing: Crossing) -> dict[str, Any]:
    segment, passed = crossing.segment, crossing.passed
    return {
        "netns": segment.label,
        "way": segment.way,
        "in_iface": segment.in_iface,
        "out_iface": segment.out_iface,
        "backends": segment.firewall.backends(),
        "verdict": passed.verdict,
        "certain": passed.certain,
        "hooks": [hook_doc(h) for h in passed.hooks],
        "notes": list(segment.firewall.notes),
    }


def hook_doc(visit: HookVisit) -> dict[str, Any]:
    return {
        "hook": visit.hook,
        "packet": packet_doc(visit.packet),
        "verdict": visit.verdict,
        "certain": visit.certain,
        "chains": [chain_doc(c) for c in visit.chains],
        "rewrites": [rewrite_doc(r) for r in visit.rewrites],
        "notes": list(visit.notes),
    }


def chain_doc(visit: ChainVisit) -> dict[str, Any]:
    base, walk = visit.base, visit.walk
    doc: dict[str, Any] = {
        "chain": base.label,
        "source": base.source,
        "family": base.table.family,
        "table": base.table.name,
        "name": base.chain.name,
        "priority": base.priority,
        "type": base.kind,
        "policy": (base.chain.policy or "ACCEPT").lower(),
        "skipped": visit.skipped,
        "steps": [],
        "ending": None,
        "verdict": None,
        "certain": True,
        "rule": None,
        "explanation": None,
    }
    if walk is None:
        return doc
    packet = visit.packet or PacketView(0)
    rule = walk.rule
    explanation = None
    if walk.verdict == "drop":
        explanation = drop_words(rule, base, packet)
    elif rule is not None and walk.ending == "accept":
        explanation = accept_words(rule, base, packet)
    elif rule is not None and walk.ending == "nat":
        explanation = nat_words(rule)
    doc.update(
        steps=[step_doc(s) for s in walk.steps],
        ending=walk.ending,
        verdict=walk.verdict,
        certain=walk.certain,
        rule=rule.shown if rule is not None else (
            base.policy_text() if walk.ending == "policy" else None
        ),
        explanation=explanation,
    )  # fmt: skip
    return doc


def step_doc(step: Step) -> dict[str, Any]:
    return {
        "rule": step.rule.shown,
        "text": step.rule.text,
        "handle": step.rule.handle,
        "action": step.action,
        "certain": step.certain,
        "unknown": list(step.unknown),
        "depth": step.depth,
        "comment": step.rule.comment,
    }


def rewrite_doc(rewrite: Rewrite) -> dict[str, Any]:
    return {
        "kind": rewrite.kind,
        "by": "rule" if rewrite.rule is not None else "conntrack",
        "rule": rewrite.rule.shown if rewrite.rule is not None else None,
        "before": {"ip": rewrite.before[0], "port": rewrite.before[1]},
        "after": {"ip": rewrite.after[0], "port": rewrite.after[1]},
        "explanation": nat_words(rewrite.rule) if rewrite.rule is not None else None,
    }


def packet_doc(p: PacketView) -> dict[str, Any]:
    return {
        "proto": _PROTOS.get(p.proto, str(p.proto)),
        "src": p.src,
        "dst": p.dst,
        "sport": p.sport,
        "dport": p.dport,
        "icmp_type": p.icmp_type,
        "in_iface": p.in_iface,
        "out_iface": p.out_iface,
        "ctstate": p.ctstate,
        "mark": p.mark,
        "ctmark": p.ctmark,
    }


def _unique(items: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen

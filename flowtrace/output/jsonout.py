"""The --json document: one stable JSON object per trace or analysis (see README).

Field names are part of the interface: add fields, never rename or remove them.
"""

from __future__ import annotations

import json
from typing import Any

from flowtrace._version import __version__
from flowtrace.correlate.faults import fault_record
from flowtrace.correlate.stats import median
from flowtrace.model import NatEvent, Packet, Point, Sighting, Trace
from flowtrace.model.dns import DnsLookup
from flowtrace.output.hostview import clock_errors, hop_error, outer_dict

SCHEMA_VERSION = 1


def point_dict(point: Point) -> dict[str, Any]:
    return {
        "id": point.id,
        "host": point.netns.host,
        "netns": point.netns.label,
        "ifname": point.ifname,
        "ifindex": point.ifindex,
        "role": point.role,
        "container": point.netns.container,
        "addresses": list(point.addresses),
    }


def sighting_dict(s: Sighting) -> dict[str, Any]:
    h = s.headers
    return {
        "point": s.point,
        "time_ns": s.time_ns,
        "proto": h.proto_name,
        "src": h.src,
        "dst": h.dst,
        "sport": h.sport,
        "dport": h.dport,
        "icmp_id": h.icmp_id,
        "icmp_type": h.icmp_type,
        "ip_id": h.ip_id,
        "ttl": h.ttl,
        "direction": None if s.outbound is None else ("out" if s.outbound else "in"),
        "outer": outer_dict(s),
    }


def nat_dict(ev: NatEvent) -> dict[str, Any]:
    return {
        "kind": ev.kind,
        "between": list(ev.between),
        "before": {"ip": ev.before.ip, "port": ev.before.port},
        "after": {"ip": ev.after.ip, "port": ev.after.port},
        "reverse_of": ev.reverse_of,
        "rule": ev.rule,
        "rule_doubt": ev.rule_doubt,
        "explanation": ev.explanation,
        "conntrack": ev.conntrack,
    }


def packet_dict(pkt: Packet) -> dict[str, Any]:
    deltas = pkt.hop_deltas_ns()
    return {
        "id": pkt.packet_id,
        "probe": pkt.probe,
        "direction": pkt.direction,
        "sightings": [sighting_dict(s) for s in pkt.sightings],
        "hop_deltas_ns": deltas,
        "nat": [nat_dict(ev) for ev in pkt.nat],
    }


def hop_summary(trace: Trace) -> list[dict[str, Any]]:
    """min/median/max of each hop's delta over all packets, per direction and packet kind;
    `error_ns`: the bound the hosts' clocks put on a hop between two hosts (0 on one)."""
    hops = trace.hop_deltas()
    points = {p.id: p for p in trace.points}
    errors = clock_errors(trace.meta)
    return [
        {
            "direction": d,
            "kind": kind,
            "from": a,
            "to": b,
            "count": len(v),
            "min_ns": min(v),
            "median_ns": int(median(v)),
            "max_ns": max(v),
            "error_ns": hop_error(points, errors, a, b),
        }
        for (d, kind, a, b), v in hops.items()
    ]


def trace_dict(trace: Trace) -> dict[str, Any]:
    verdicts = [
        {
            "probe": v.probe,
            "outcome": v.outcome,
            "last_point": v.last_point,
            "detail": v.detail,
            "rtt_ns": v.rtt_ns,
            "rule": v.rule,
            "text": str(v),
            "fault": fault_record(v.fault) if v.fault is not None else None,
        }
        for v in trace.verdicts
    ]
    outcomes = [v.outcome for v in trace.verdicts]
    answered = sum(1 for v in trace.verdicts if v.answered)
    return {
        "schema": SCHEMA_VERSION,
        "flowtrace": __version__,
        "meta": trace.meta,
        "points": [point_dict(p) for p in trace.points],
        "packets": [packet_dict(p) for p in trace.packets],
        "verdict": {
            "sent": len(outcomes),
            "answered": answered,
            "loss_percent": round(100.0 * (len(outcomes) - answered) / len(outcomes), 1)
            if outcomes
            else None,
            "probes": verdicts,
        },
        "hops": hop_summary(trace),
        "stats": [{"point": s.point, "packets": s.packets, "drops": s.drops} for s in trace.stats],
        "notes": list(trace.notes),
        "faults": [fault_record(f) for f in trace.faults],
    }


def dumps(trace: Trace) -> str:
    return json.dumps(trace_dict(trace), indent=2, default=str)


def lookup_dict(result: DnsLookup, with_packets: bool = True) -> dict[str, Any]:
    """The lookup as JSON-ready values (README: `flowtrace dns --json`)."""
    data: dict[str, Any] = {
        "src": result.src.spec,
        "name": result.name,
        "type": result.qtype,
        "resolv_conf": result.config.resolv_conf,
        "nameservers": list(result.config.nameservers),
        "server": result.server or None,
        "hosts_answer": result.hosts_answer,
        "sent_from": str(result.sent_from) if result.sent_from else None,
        "server_socket": str(result.server_socket) if result.server_socket else None,
        "server_process": result.server_process,
        "rcode": result.rcode,
        "records": list(result.records),
        "error": result.error,
        "interrupted": bool(result.meta.get("interrupted")),
        "rtt_us": result.rtt_ns / 1000 if result.rtt_ns is not None else None,
        "nat": [nat_dict(ev) for ev in result.nat],
        "notes": list(result.notes),
        "engine": result.meta.get("engine"),
    }
    if "kernel" in result.meta:  # --rules kernel
        data["kernel"] = result.meta["kernel"]
    if with_packets:
        data["points"] = [point_dict(p) for p in result.points]
        data["packets"] = [packet_dict(p) for p in result.packets]
        data["pcap"] = result.meta.get("pcap")
    return data

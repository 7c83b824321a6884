"""Real `--rules kernel` runs, recorded (tests/data/kernel-word/README.md), replayed
through the pure stages: events -> hook visits -> kernel packets -> checks -> report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowtrace.model import Address, Namespace, NatEvent, Packet, Point, Verdict
from flowtrace.topology.kernel_report import KernelPacket, ProbeKeys, checks, kernel_packets
from flowtrace.topology.kfree import (
    KfreeEvent,
    ProbeDrop,
    drops_in_windows,
    flight_windows,
    parse_trace,
)
from flowtrace.topology.nftrace import HookVisit, TraceMatch, hook_visits, parse_event
from flowtrace.topology.nftrules import RuleBook

KERNEL_DATA = Path(__file__).parents[1] / "data" / "kernel-word"


def _address(text: str) -> Address:
    ip, _, port = text.rpartition(":")
    return Address(ip, int(port)) if ip and port.isdigit() else Address(text)


@dataclass
class Replay:
    record: dict[str, Any]
    match: TraceMatch
    books: dict[str, RuleBook]
    visits: dict[str, list[HookVisit]]
    keys: ProbeKeys
    packets: list[KernelPacket]
    verdicts: list[Verdict]
    model_packets: list[Packet]
    points: list[Point]
    kfree: list[KfreeEvent]

    def checks(self) -> list[dict[str, Any]]:
        return checks(self.verdicts, self.model_packets, self.points, self.packets)

    def drops(self) -> list[ProbeDrop]:
        """The drops in each probe's flight, as the run windows them."""
        last: dict[int, int] = {}
        for packet in self.packets:
            if packet.probe is not None and packet.visits:
                end = max(v.time_ns for v in packet.visits)
                last[packet.probe] = max(end, last.get(packet.probe, end))
        windows = flight_windows(self.record["sent_ns"], last, self.record["closed_ns"])
        return drops_in_windows(self.kfree, windows)


def record(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((KERNEL_DATA / f"{name}.json").read_text())
    return data


def replay(name: str) -> Replay:
    d = record(name)
    m = d["match"]
    match = TraceMatch(m["kind"], m["mark"], tuple(m["isns"]), m["port"])
    books = {
        label: RuleBook.read(book["tables"], book["iptables_save"])
        for label, book in d["books"].items()
    }
    visits = {}
    for label, lines in d["lines"].items():
        events = [ev for t, line in lines if (ev := parse_event(line, t)) is not None]
        book = books.get(label, RuleBook())
        visits[label] = [book.resolve(v) for v in hook_visits(label, events)]
    keys = ProbeKeys(match, {int(k): v for k, v in d["ip_ids"].items()}, d["sent_ns"])
    verdicts = [
        Verdict(v["probe"], v["outcome"], v["last_point"], "", None, v["rule"])
        for v in d["verdicts"]
    ]
    model_packets = [
        Packet(
            i,
            n["direction"],
            (),
            (
                NatEvent(
                    n["kind"],
                    tuple(n["between"]),  # type: ignore[arg-type]
                    _address(n["before"]),
                    _address(n["after"]),
                    n["rule"],
                    None,
                    n["reverse_of"],
                ),
            ),
            n["probe"],
        )
        for i, n in enumerate(d["nat"], 1)
    ]
    points = [
        Point(pid, Namespace(f"/x/{label}", label), pid.split("/")[-1], 0, "")
        for pid, label in d["points"].items()
    ]
    return Replay(
        d,
        match,
        books,
        visits,
        keys,
        kernel_packets(visits, d["path_netns"], keys),
        verdicts,
        model_packets,
        points,
        parse_trace(d["kfree"]),
    )

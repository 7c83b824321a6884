"""`flowtrace analyze --json`'s packets, written fast: jsonout.packet_dict as text.

`analyze --json` writes one per packet of captures of millions of packets, where
building the dicts and encoding them cost as much as correlating; the text that
repeats is encoded once and reused (see packet_json).
"""

from __future__ import annotations

import json
from operator import itemgetter
from typing import Any

from flowtrace.model import Headers, NatEvent, Packet, Sighting
from flowtrace.output.hostview import outer_dict
from flowtrace.output.jsonout import nat_dict

_JSON_TEXT_LIMIT = 1 << 16
_json_texts: dict[str, str] = {}


def _json_text(text: str) -> str:
    """json.dumps of a string, cached: points, protocols and addresses repeat endlessly."""
    encoded = _json_texts.get(text)
    if encoded is None:
        if len(_json_texts) >= _JSON_TEXT_LIMIT:
            _json_texts.clear()
        encoded = _json_texts[text] = json.dumps(text)
    return encoded


def _json_int(value: int | None) -> str:
    return "null" if value is None else str(value)


_DIRECTION_JSON = {None: "null", True: '"out"', False: '"in"'}

# packet_json's pieces of sighting text, each encoded once: a sighting is
#   {"point": P, "time_ns": T, "proto": ..., "icmp_type": X, "ip_id": I, "ttl": L, "direction": D}
# = _json_heads[P] + T + _json_middles[fields] + I + _json_tails[(L, D)].
_json_heads: dict[str, str] = {}
_json_middles: dict[tuple[object, ...], str] = {}
_json_tails: dict[tuple[int, bool | None], str] = {}
#: id(event) -> (event, its JSON); the event is held so its id stays its own.
_json_nat: dict[int, tuple[NatEvent, str]] = {}
#: The fields _json_middles is keyed by: proto, src, dst, sport, dport, icmp_id, icmp_type.
_middle_fields = itemgetter(*(Headers._fields.index(name) for name in (
    "proto", "src", "dst", "sport", "dport", "icmp_id", "icmp_type",
)))  # fmt: skip


def _bounded(cache: dict[Any, str]) -> dict[Any, str]:
    if len(cache) >= _JSON_TEXT_LIMIT:
        cache.clear()
    return cache


def _json_head(point: str) -> str:
    text = _bounded(_json_heads)[point] = f'{{"point": {_json_text(point)}, "time_ns": '
    return text


def _json_middle(h: Headers) -> str:
    text = _bounded(_json_middles)[_middle_fields(h)] = (
        f', "proto": {_json_text(h.proto_name)}, "src": {_json_text(h.src)}, '
        f'"dst": {_json_text(h.dst)}, "sport": {_json_int(h.sport)}, '
        f'"dport": {_json_int(h.dport)}, "icmp_id": {_json_int(h.icmp_id)}, '
        f'"icmp_type": {_json_int(h.icmp_type)}, "ip_id": '
    )
    return text


def _json_tail(ttl: int, outbound: bool | None) -> str:
    text = _bounded(_json_tails)[(ttl, outbound)] = (
        f', "ttl": {ttl}, "direction": {_DIRECTION_JSON[outbound]}, "outer": '
    )
    return text


def _outer_json(s: Sighting) -> str:
    """A tunnel's outer headers (rare: an overlay's underlay), else null."""
    return "null}" if s.headers.outer is None else json.dumps(outer_dict(s)) + "}"


def _nat_json(ev: NatEvent) -> str:
    known = _json_nat.get(id(ev))
    if known is not None and known[0] is ev:
        return known[1]
    if len(_json_nat) >= _JSON_TEXT_LIMIT:
        _json_nat.clear()
    text = json.dumps(nat_dict(ev))
    _json_nat[id(ev)] = (ev, text)
    return text


def packet_json(pkt: Packet) -> str:
    """json.dumps(jsonout.packet_dict(pkt)), character for character, 3x as fast.

    `analyze --json` writes one per packet of captures of millions of packets, where
    building the dicts and encoding them cost as much as correlating.  The text that
    repeats (a point's name; a protocol, address and port set; a TTL and direction;
    a NAT rewrite, which the correlator shares between the packets of a flow) is
    encoded once and reused; only times and IP ids are formatted per sighting.
    """
    heads, middles, tails = _json_heads, _json_middles, _json_tails
    sightings = []
    deltas = []
    before = None
    for s in pkt.sightings:
        point, time_ns, h, outbound, _ = s
        sightings.append(
            f"{heads.get(point) or _json_head(point)}{time_ns}"
            f"{middles.get(_middle_fields(h)) or _json_middle(h)}{h.ip_id}"
            f"{tails.get((h.ttl, outbound)) or _json_tail(h.ttl, outbound)}"
            f"{'null}' if h.outer is None else _outer_json(s)}"
        )
        if before is not None:
            deltas.append(str(time_ns - before))
        before = time_ns
    nat = ", ".join([_nat_json(ev) for ev in pkt.nat]) if pkt.nat else ""
    return (
        f'{{"id": {pkt.packet_id}, "probe": {_json_int(pkt.probe)}, '
        f'"direction": {_json_text(pkt.direction)}, "sightings": [{", ".join(sightings)}], '
        f'"hop_deltas_ns": [{", ".join(deltas)}], "nat": [{nat}]}}'
    )


class JsonDocument:
    """`analyze --json`'s one document, streamed: packets as they come, then the summary.

    Nothing is written before the first packet (or the end), so an error found early
    leaves stdout empty; an error after the first write closes the document with an
    `error` member instead, so stdout always holds whole JSON or nothing.  Packets go
    out `batch` at a time: one write per packet cost a tenth of the pass.
    """

    def __init__(self, out: Any, batch: int = 64) -> None:
        self.out = out
        self.batch = batch
        self.pending: list[str] = []
        self.started = False
        self.closed = False

    def packet(self, pkt: Packet) -> None:
        self.pending.append(packet_json(pkt))
        if len(self.pending) >= self.batch:
            self._write_pending()

    def _write_pending(self) -> None:
        if not self.pending:
            return
        text = ",\n".join(self.pending)
        self.pending.clear()
        if self.started:
            self.out.write(",\n" + text)
        else:
            self.out.write('{"packets": [\n' + text)
            self.started = True

    def finish(self, summary: dict[str, Any]) -> None:
        """The packets' end, then the summary's members (its packet count as packet_count)."""
        if "packets" in summary:
            summary = {**summary, "packet_count": summary["packets"]}
            del summary["packets"]
        self._write_pending()
        opening = "],\n" if self.started else '{"packets": [],\n'
        self.out.write(opening + json.dumps(summary, indent=1)[1:].lstrip() + "\n")
        self.closed = True

    def fail(self, status: int, message: str) -> None:
        """Close a document already begun with the error; nothing when none was begun."""
        if self.closed or not self.started:
            return
        self._write_pending()
        error = json.dumps({"status": status, "message": message})
        self.out.write(f'],\n "error": {error}\n}}\n')
        self.closed = True

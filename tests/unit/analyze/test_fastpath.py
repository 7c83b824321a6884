"""The shortcuts `flowtrace analyze` takes per frame and per packet give the plain results.

Each shortcut (batches into the correlator, remembered decodings, shared summaries,
pre-encoded JSON pieces) is checked against the straightforward way on many inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Ether

from flowtrace.analyze import analyze, summary_dict
from flowtrace.analyze import passes as analyze_module
from flowtrace.correlate.decode import decode_frame
from flowtrace.correlate.match import Correlator
from flowtrace.model import Address, Headers, NatEvent, Packet, Sighting
from flowtrace.output.jsonout import packet_dict
from flowtrace.output.jsonstream import packet_json

EXAMPLES = Path(__file__).resolve().parents[3] / "captures" / "examples"
POINTS = ["c1/eth0", "host/veth1", "host/docker0", "host/eth0", "ext/eth0"]
T0 = 1_700_000_000_000_000_000


def _headers(pkt: object) -> Headers:
    headers = decode_frame(bytes(Ether() / pkt))  # type: ignore[operator]
    assert headers is not None
    return headers


#: A few packets of two flows, decoded once (scapy is slow): requests, replies, a SYN.
TEMPLATES = [
    _headers(IP(src="172.17.0.2", dst="203.0.113.2", id=7) / ICMP(type=8, id=3, seq=1)),
    _headers(IP(src="203.0.113.2", dst="172.17.0.2", id=8) / ICMP(type=0, id=3, seq=1)),
    _headers(IP(src="172.17.0.2", dst="203.0.113.2", id=9) / TCP(sport=4000, dport=80, flags="S")),
    _headers(IP(src="203.0.113.2", dst="172.17.0.2") / TCP(sport=80, dport=4000, flags="SA")),
]

sightings_streams = st.lists(
    st.tuples(
        st.integers(0, len(TEMPLATES) - 1),  # which packet
        st.integers(0, 40),  # IP id offset: several packets alike but for it
        st.integers(0, len(POINTS) - 1),  # where
        st.integers(0, 3_000_000_000),  # when: some beyond the window, some out of order
        st.sampled_from([None, True, False]),
    ),
    max_size=60,
)


def _stream(spec: list[tuple[int, int, int, int, bool | None]]) -> list[Sighting]:
    return [
        Sighting(POINTS[point], T0 + t, TEMPLATES[k]._replace(ip_id=offset), outbound, i)
        for i, (k, offset, point, t, outbound) in enumerate(spec)
    ]


@settings(max_examples=150, deadline=None)
@given(sightings_streams, st.integers(1, 17))
def test_add_many_is_add_one_sighting_at_a_time(
    spec: list[tuple[int, int, int, int, bool | None]], batch: int
) -> None:
    stream = _stream(spec)
    one_by_one = Correlator(POINTS, window_ns=1_000_000_000)
    expected = [pkt for s in stream for pkt in one_by_one.add(s)] + one_by_one.finish()
    batched = Correlator(POINTS, window_ns=1_000_000_000)
    got: list[Packet] = []
    for start in range(0, len(stream), batch):
        got += batched.add_many(stream[start : start + batch])
    got += batched.finish()
    assert got == expected


texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
maybe_port = st.none() | st.integers(0, 65535)
headers = st.builds(
    Headers,
    version=st.sampled_from([4, 6]),
    src=texts,
    dst=texts,
    proto=st.sampled_from([1, 6, 17, 58, 132]),
    ip_id=st.integers(0, 65535),
    ttl=st.integers(0, 255),
    length=st.integers(0, 65535),
    sport=maybe_port,
    dport=maybe_port,
    icmp_type=st.none() | st.integers(0, 255),
    icmp_id=maybe_port,
)
nat_events = st.builds(
    NatEvent,
    kind=st.sampled_from(["SNAT", "DNAT"]),
    between=st.tuples(texts, texts),
    before=st.builds(Address, texts, maybe_port),
    after=st.builds(Address, texts, maybe_port),
    rule=st.none() | texts,
    conntrack=st.none() | texts,
    reverse_of=st.sampled_from([None, "SNAT", "DNAT"]),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(texts, st.integers(0, 2**63), headers, st.sampled_from([None, True, False])),
        min_size=1,
        max_size=6,
    ),
    st.lists(nat_events, max_size=3),
    st.integers(1, 2**40),
    st.none() | st.integers(0, 1000),
    st.sampled_from(["request", "reply"]),
)
def test_packet_json_is_json_dumps_of_any_packet(
    seen: list[tuple[str, int, Headers, bool | None]],
    nat: list[NatEvent],
    packet_id: int,
    probe: int | None,
    direction: str,
) -> None:
    sightings = tuple(Sighting(point, t, h, outbound) for point, t, h, outbound in seen)
    pkt = Packet(packet_id, direction, sightings, tuple(nat), probe)  # type: ignore[arg-type]
    assert packet_json(pkt) == json.dumps(packet_dict(pkt))
    assert packet_json(pkt) == json.dumps(packet_dict(pkt))  # from the pieces remembered


def _everything(path: Path) -> tuple[list[str], dict[str, object]]:
    packets: list[str] = []
    analysis = analyze(path, keep_packets=False, on_packet=lambda p: packets.append(packet_json(p)))
    return packets, summary_dict(analysis)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir()))
def test_remembered_decodings_change_nothing(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    remembered = _everything(EXAMPLES / example)
    monkeypatch.setattr(analyze_module, "_RECENT_FRAMES", 0)  # only the last frame kept
    monkeypatch.setattr(analyze_module, "_BATCH", 1)  # and correlated on its own
    assert _everything(EXAMPLES / example) == remembered


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.iterdir()))
def test_streamed_summaries_are_those_of_the_kept_packets(example: str) -> None:
    analysis = analyze(EXAMPLES / example)
    packets = analysis.trace.packets
    by_kind = analysis.trace.hop_deltas()  # (direction, kind, from, to) -> deltas
    assert list(analysis.hops) == list(by_kind)  # the same rows, in the same order
    for hop, deltas in by_kind.items():
        stats = analysis.hops[hop]
        assert (stats.count, stats.min, stats.max) == (len(deltas), min(deltas), max(deltas))
    assert sum(s.count for s in analysis.hops.values()) == sum(
        len(p.sightings) - 1 for p in packets
    )
    flows = analysis.flows.values()
    assert sum(f.requests for f in flows) == sum(p.direction == "request" for p in packets)
    assert sum(f.replies for f in flows) == sum(p.direction == "reply" for p in packets)
    assert sum(n for _, n in analysis.nat.values()) == sum(len(p.nat) for p in packets)

"""flowtrace.load() on the committed example sets: what a notebook gets back from a real trace.

The sets in captures/examples/ were recorded by scripts/record-examples.sh on the lab; these
tests read them without root or Docker.  They pin what load() must recover from a set: the
path order of the manifest, the packet ids written into the pcapng, probe numbers (which the
pcapng does not store), verdicts, and every NAT rewrite on the hop where it happened.
"""

from __future__ import annotations

import statistics
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pandas as pd
import pytest

import flowtrace
from flowtrace.model import Address, Packet, Trace
from flowtrace.output.frames import SIGHTING_COLUMNS, hops_dataframe, nat_hop_index, to_dataframe
from flowtrace.output.plot import packet_kind
from flowtrace.pcap.reader import open_capture
from flowtrace.topology.netfilter import attribute, parse_iptables_save

EXAMPLES = Path(__file__).resolve().parents[2] / "captures" / "examples"
PING = EXAMPLES / "ping-c1-c2"
SNAT = EXAMPLES / "snat-c1-outside"
DNAT = EXAMPLES / "dnat-outside-web"
ROLES = ["source", "veth-peer", "bridge", "veth-peer", "destination"]


@pytest.fixture(scope="module")
def ping() -> Trace:
    return flowtrace.load(PING)


@pytest.fixture(scope="module")
def snat() -> Trace:
    return flowtrace.load(SNAT)


@pytest.fixture(scope="module")
def dnat() -> Trace:
    return flowtrace.load(DNAT)


def manifest(trace: Trace) -> dict[str, object]:
    found = trace.meta["manifest"]
    assert isinstance(found, dict)
    return found


def by_probe(trace: Trace) -> dict[int, list[Packet]]:
    probes: dict[int, list[Packet]] = {}
    for packet in trace.packets:
        assert packet.probe is not None, f"packet {packet.packet_id} has no probe"
        probes.setdefault(packet.probe, []).append(packet)
    return probes


# --- structure -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [PING, SNAT, DNAT], ids=lambda p: p.name)
def test_points_come_in_the_manifests_path_order(path: Path) -> None:
    trace = flowtrace.load(path)
    listed = manifest(trace)["points"]
    assert isinstance(listed, list)
    assert [p.id for p in trace.points] == [entry["id"] for entry in listed]
    assert [p.role for p in trace.points] == [entry["role"] for entry in listed]
    assert [p.netns.label for p in trace.points] == [entry["netns"] for entry in listed]
    assert trace.points[0].netns.label == manifest(trace)["src"]["netns"]  # type: ignore[index]


def test_ping_path_is_veth_bridge_veth(ping: Trace) -> None:
    assert [p.role for p in ping.points] == ROLES
    assert [p.netns.container for p in ping.points] == ["c1", None, None, None, "c2"]
    assert ping.points[2].id == "host/docker0"


@pytest.mark.parametrize("path", [PING, SNAT, DNAT], ids=lambda p: p.name)
def test_packet_ids_are_the_ones_written_into_the_pcapng(path: Path) -> None:
    """Packet N of a loaded trace is what Wireshark shows for frame.packet_id == N."""
    trace = flowtrace.load(path)
    with open_capture(path) as reader:
        written = [record.packet_id for record in reader]
    assert None not in written
    for packet in trace.packets:
        assert {written[s.frame_index] for s in packet.sightings} == {packet.packet_id}
    ids = [p.packet_id for p in trace.packets]
    assert len(set(ids)) == len(ids) == len(set(written))


def test_packet_ids_follow_the_file_not_the_order_packets_are_found(tmp_path: Path) -> None:
    """A copy of the ping set whose ids start at 501 and skip: load() keeps them."""
    from flowtrace.pcap.pcapng import PcapngWriter

    copy = tmp_path / "renumbered"
    copy.mkdir()
    (copy / "manifest.json").write_text((PING / "manifest.json").read_text())
    with open_capture(PING) as reader, (copy / "trace.pcapng").open("wb") as out:
        writer = PcapngWriter(out)
        for interface in reader.interfaces:
            writer.add_interface(interface.name, interface.description or "")
        for record in reader:
            assert record.packet_id is not None
            writer.write_packet(
                record.interface, record.time_ns, record.data, record.orig_len,
                outbound=record.outbound, packet_id=500 + 2 * record.packet_id,
            )  # fmt: skip
        writer.flush()
    original = flowtrace.load(PING)
    renumbered = flowtrace.load(copy)
    assert [p.packet_id for p in renumbered.packets] == [
        500 + 2 * p.packet_id for p in original.packets
    ]
    assert [p.probe for p in renumbered.packets] == [p.probe for p in original.packets]


def test_every_ping_probe_is_one_request_and_one_reply_through_five_points(ping: Trace) -> None:
    probes = by_probe(ping)
    assert sorted(probes) == list(range(20))
    for probe, packets in probes.items():
        assert [p.direction for p in packets] == ["request", "reply"]
        request, reply = packets
        assert [s.point for s in request.sightings] == [p.id for p in ping.points]
        assert [s.point for s in reply.sightings] == [p.id for p in reversed(ping.points)]
        # The probe number is the echo sequence number; the reply echoes it.
        assert request.first.headers.icmp_seq == reply.first.headers.icmp_seq == probe
        assert not request.nat and not reply.nat


def test_tcp_probes_are_syn_synack_rst_numbered_by_their_initial_sequence(dnat: Trace) -> None:
    probes = by_probe(dnat)
    assert sorted(probes) == list(range(5))
    isns = []
    for packets in probes.values():
        assert [(p.direction, packet_kind(p)) for p in packets] == [
            ("request", "SYN"),
            ("reply", "SYN+ACK"),
            ("request", "RST"),
        ]
        syn, synack, rst = (p.first.headers for p in packets)
        assert synack.tcp_ack == rst.tcp_seq == ((syn.tcp_seq or 0) + 1) % 2**32
        isns.append(syn.tcp_seq)
    # The tracer spaces its probes' ISNs by 0x10000: the numbering follows them.
    steps = [((b or 0) - (a or 0)) % 2**32 for a, b in pairwise(isns)]
    assert steps == [0x10000] * 4


@pytest.mark.parametrize("path", [PING, SNAT, DNAT], ids=lambda p: p.name)
def test_verdicts_come_back_with_measured_round_trips(path: Path) -> None:
    trace = flowtrace.load(path)
    texts = manifest(trace)["verdicts"]
    assert isinstance(texts, list)
    assert [str(v) for v in trace.verdicts] == texts
    assert [v.probe for v in trace.verdicts] == list(range(len(texts)))
    source = trace.points[0].id
    probes = by_probe(trace)
    for verdict in trace.verdicts:
        assert verdict.outcome == "replied"
        request, reply = probes[verdict.probe][:2]
        sent = next(s.time_ns for s in request.sightings if s.point == source)
        back = next(s.time_ns for s in reply.sightings if s.point == source)
        assert verdict.rtt_ns == back - sent > 0


# --- NAT -------------------------------------------------------------------------------------


def test_snat_is_on_the_routed_hop_and_the_reply_is_translated_back(snat: Trace) -> None:
    c1_ip = manifest(snat)["src"]["ip"]  # type: ignore[index]
    outside_ip = manifest(snat)["dst"]["ip"]  # type: ignore[index]
    for packets in by_probe(snat).values():
        request, reply = packets
        (out,) = request.nat
        assert (out.kind, out.between, out.reverse_of) == (
            "SNAT",
            ("host/docker0", "host/ft-uplink"),
            None,
        )
        assert out.before.ip == c1_ip and out.after.ip != c1_ip
        assert out.before.port == out.after.port  # MASQUERADE kept the ICMP id
        (back,) = reply.nat
        assert (back.kind, back.between, back.reverse_of) == (
            "DNAT",
            ("host/ft-uplink", "host/docker0"),
            "SNAT",
        )
        assert (back.before, back.after) == (out.after, out.before)
        # The rewrite shows exactly at its hop: before it the old address, after it the new.
        hop = nat_hop_index(request, out)
        assert hop is not None
        assert [s.src for s in request.sightings] == [c1_ip] * hop + [out.after.ip] * (5 - hop)
        assert {s.dst for s in request.sightings} == {outside_ip}


def test_dnat_is_on_the_hop_into_docker0_for_syn_and_rst_and_reversed_for_synack(
    dnat: Trace,
) -> None:
    published = Address(manifest(dnat)["dst"]["ip"], manifest(dnat)["dst"]["port"])  # type: ignore[index]
    web = dnat.points[-1].id
    for packets in by_probe(dnat).values():
        syn, synack, rst = packets
        web_side = syn.last.headers
        assert syn.last.point == web
        for request in (syn, rst):
            (event,) = request.nat
            assert (event.kind, event.between, event.reverse_of) == (
                "DNAT",
                ("host/ft-uplink", "host/docker0"),
                None,
            )
            assert event.before == published
            assert event.after == Address(web_side.dst, web_side.dport)
        (back,) = synack.nat
        assert (back.kind, back.between, back.reverse_of) == (
            "SNAT",
            ("host/docker0", "host/ft-uplink"),
            "DNAT",
        )
        assert (back.before, back.after) == (Address(web_side.dst, web_side.dport), published)


def test_recorded_rules_explain_the_rewrites(snat: Trace, dnat: Trace) -> None:
    """The NAT sets keep the host's nat table; the matcher finds Docker's rules in it offline."""
    for trace, path, expected in (
        (snat, SNAT, "-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"),
        (dnat, DNAT, "--dport 8080 -j DNAT --to-destination"),
    ):
        ruleset = parse_iptables_save((path / "nat-rules.txt").read_text())
        event = next(ev for ev in trace.nat_events if ev.reverse_of is None)
        in_iface, out_iface = (trace.point(p).ifname for p in event.between)
        rule = attribute(
            ruleset, event, trace.packets[0].first.headers.proto_name, in_iface, out_iface
        )
        assert rule is not None and expected in rule


def test_ttl_stays_on_the_bridge_and_drops_where_the_host_routes(
    ping: Trace, snat: Trace, dnat: Trace
) -> None:
    """What the notebooks tell their readers about these recordings."""
    for packet in ping.packets:
        assert {s.headers.ttl for s in packet.sightings} == {64}
    for trace in (snat, dnat):
        for packet in trace.packets:
            ttls = [s.headers.ttl for s in packet.sightings]
            assert ttls == sorted(ttls, reverse=True) and ttls[0] - ttls[-1] == 1
            routed = next(i for i, ttl in enumerate(ttls) if ttl < ttls[0])
            # The host routes and rewrites in the same step (NAT sits in its routing hooks).
            assert routed == next(nat_hop_index(packet, ev) for ev in packet.nat)


def median_hops(trace: Trace) -> dict[tuple[str, str, str], float]:
    """Median delta in µs per (packet kind, from point, to point)."""
    samples: dict[tuple[str, str, str], list[float]] = {}
    for packet in trace.packets:
        for before, after in pairwise(packet.sightings):
            key = (packet_kind(packet), before.point, after.point)
            samples.setdefault(key, []).append((after.time_ns - before.time_ns) / 1000)
    return {key: statistics.median(values) for key, values in samples.items()}


def test_replies_cross_every_hop_quicker_than_requests(ping: Trace) -> None:
    """What the ping notebook says of its per-hop table: hop n of the reply (n-th from its
    source) against hop n of the request, the bridge sightings' zero-time hops aside."""
    medians = hops_dataframe(ping).groupby(["direction", "hop"]).delta_us.median()
    for hop in range(1, len(ping.points)):
        request, reply = medians[("request", hop)], medians[("reply", hop)]
        assert reply < request or reply == request == 0.0, hop


def test_a_probes_rst_is_quicker_than_its_syn_most_of_all_on_the_nat_hop(dnat: Trace) -> None:
    """What the NAT notebook says of SYN and RST."""
    medians = median_hops(dnat)
    path = [p.id for p in dnat.points]
    gaps = {
        (before, after): medians[("SYN", before, after)] - medians[("RST", before, after)]
        for before, after in pairwise(path)
    }
    assert all(gap > 0 for gap in gaps.values())
    assert max(gaps, key=lambda hop: gaps[hop]) == ("host/ft-uplink", "host/docker0")


def test_packets_a_process_sent_are_the_slow_ones_where_the_host_routes(
    snat: Trace, dnat: Trace
) -> None:
    """What the NAT notebook concludes: who sent a packet weighs more than its NAT rule."""
    for trace, sent_by_process in ((dnat, {"SYN"}), (snat, {"echo request"})):
        routed: dict[str, list[float]] = {}
        for packet in trace.packets:
            ttls = [s.headers.ttl for s in packet.sightings]
            hop = next(i for i, ttl in enumerate(ttls) if ttl < ttls[0])
            delta = packet.sightings[hop].time_ns - packet.sightings[hop - 1].time_ns
            routed.setdefault(packet_kind(packet), []).append(delta / 1000)
        medians = {kind: statistics.median(values) for kind, values in routed.items()}
        slowest_kernel_made = max(v for k, v in medians.items() if k not in sent_by_process)
        assert all(medians[kind] > 3 * slowest_kernel_made for kind in sent_by_process)


# --- DataFrames ------------------------------------------------------------------------------


def test_to_dataframe_gives_one_full_row_per_sighting(ping: Trace, snat: Trace) -> None:
    for trace in (ping, snat):
        frame = to_dataframe(trace)
        assert list(frame.columns) == list(SIGHTING_COLUMNS)
        assert len(frame) == sum(len(p.sightings) for p in trace.packets)
        assert not frame[["probe", "netns", "role", "point", "src", "dst"]].isna().any().any()
        firsts = frame[frame.hop == 0]
        assert (firsts.t_us == 0).all() and firsts.delta_us.isna().all()
        assert (frame[frame.hop > 0].delta_us >= 0).all()
        assert frame.groupby("packet_id").probe.nunique().eq(1).all()
    frame = to_dataframe(snat)
    rewritten = frame[frame.nat != ""]
    assert Counter(zip(rewritten.direction, rewritten.point, strict=True)) == {
        ("request", "host/ft-uplink"): 10,
        ("reply", "host/docker0"): 10,
    }
    assert rewritten.nat.str.startswith(("SNAT", "DNAT")).all()
    assert pd.api.types.is_integer_dtype(frame.probe)


# --- the pieces, on constructed data ------------------------------------------------------------


@pytest.mark.parametrize("path", [PING, SNAT, DNAT], ids=lambda p: p.name)
def test_a_set_of_schema_2_loads_the_verdicts_its_records_hold(path: Path, tmp_path: Path) -> None:
    """The examples keep schema 1's verdict texts; the same set with records loads alike."""
    import json
    import shutil

    from flowtrace.correlate.verdicts import verdict_from_record, verdict_record

    copy = tmp_path / path.name
    shutil.copytree(path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    records = []
    for probe, text in enumerate(manifest["verdicts"]):
        verdict = verdict_from_record(probe, text)
        assert verdict is not None
        records.append(verdict_record(verdict))
    manifest.update(format="flowtrace-pcapset/2", verdicts=records)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert flowtrace.load(copy).verdicts == flowtrace.load(path).verdicts

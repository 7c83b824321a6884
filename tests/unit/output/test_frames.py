"""DataFrame views of a trace: fixed columns and dtypes, hop arithmetic, NAT on the right row."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from sample_traces import (
    DOCKER0,
    UPLINK,
    dnat_walk,
    docker0_ping,
    empty_trace,
    snat_walk,
)

from flowtrace.model import Address, NatEvent, Trace
from flowtrace.output.frames import (
    HOP_COLUMNS,
    SIGHTING_COLUMNS,
    hops_dataframe,
    nat_hop_index,
    nat_label,
    to_dataframe,
)

HERE = Path(__file__).parents[1]  # tests/unit: sample_traces.py


def assert_schema(df: pd.DataFrame, columns: dict[str, str]) -> None:
    assert list(df.columns) == list(columns)
    for name, dtype in columns.items():
        assert df[name].dtype == pd.api.types.pandas_dtype(dtype), name


@pytest.fixture(scope="module")
def ping() -> Trace:
    return docker0_ping()


@pytest.fixture(scope="module")
def snat() -> Trace:
    return snat_walk()


def test_columns_and_dtypes_are_fixed(ping: Trace) -> None:
    assert_schema(to_dataframe(ping), SIGHTING_COLUMNS)
    assert_schema(hops_dataframe(ping), HOP_COLUMNS)


def test_empty_trace_gives_empty_frames_with_the_same_schema() -> None:
    sightings = to_dataframe(empty_trace())
    hops = hops_dataframe(empty_trace())
    assert len(sightings) == 0
    assert len(hops) == 0
    assert_schema(sightings, SIGHTING_COLUMNS)
    assert_schema(hops, HOP_COLUMNS)


def test_one_row_per_sighting_and_per_hop() -> None:
    trace = docker0_ping(probes=30, lost_probes={4, 17})
    # 28 answered probes: 5 sightings each way; 2 lost requests seen at 3 points only.
    assert len(to_dataframe(trace)) == 28 * 10 + 2 * 3
    assert len(hops_dataframe(trace)) == 28 * 8 + 2 * 2


def test_times_and_deltas_follow_the_sightings(ping: Trace) -> None:
    df = to_dataframe(ping)
    trace_start = min(s.time_ns for p in ping.packets for s in p.sightings)
    for packet in (ping.packets[0], ping.packets[1], ping.packets[57]):
        rows = df[df.packet_id == packet.packet_id]
        assert rows.hop.tolist() == list(range(len(packet.sightings)))
        assert rows.point.tolist() == [s.point for s in packet.sightings]
        assert math.isnan(rows.delta_us.iloc[0])
        expected = [d / 1000 for d in packet.hop_deltas_ns()]
        assert rows.delta_us.iloc[1:].tolist() == pytest.approx(expected)
        assert rows.t_us.iloc[0] == 0
        assert rows.t_us.iloc[-1] == pytest.approx(sum(expected))
        assert rows.t_trace_us.iloc[0] == pytest.approx((packet.first.time_ns - trace_start) / 1000)
        assert rows.direction.unique().tolist() == [packet.direction]
        assert rows.probe.unique().tolist() == [packet.probe]
    assert df.t_trace_us.min() == 0


def test_point_facts_and_nullable_fields(ping: Trace) -> None:
    df = to_dataframe(ping)
    first = df.iloc[0]
    assert (first.point, first.netns, first.container, first.role) == (
        "c1/eth0",
        "c1",
        "c1",
        "source",
    )
    host_rows = df[df.netns == "host"]
    assert host_rows.container.isna().all()
    # ICMP has no ports: NA, not 0 or NaN-as-float.
    assert df.sport.isna().all() and df.dport.isna().all()
    assert df.proto.unique().tolist() == ["icmp"]
    assert df.icmp_seq.iloc[0] == 1 and df.icmp_id.iloc[0] == 0x4654
    tcp = to_dataframe(dnat_walk())
    assert tcp.sport.notna().all()
    assert tcp.proto.unique().tolist() == ["tcp"]


def test_snat_text_lands_on_the_first_rewritten_hop(snat: Trace) -> None:
    df = to_dataframe(snat)
    request = df[df.packet_id == 1].set_index("point")
    assert request.loc[UPLINK.id, "nat"] == "SNAT 172.17.0.2 -> 203.0.113.1"
    assert (request.drop(index=UPLINK.id).nat == "").all()
    # The row carrying the text is the first one showing the new source.
    assert request.loc[DOCKER0.id, "src"] == "172.17.0.2"
    assert request.loc[UPLINK.id, "src"] == "203.0.113.1"

    reply = df[df.packet_id == 2].set_index("point")
    assert reply.loc[DOCKER0.id, "nat"] == "DNAT 203.0.113.1 -> 172.17.0.2 (reverses SNAT)"
    assert (reply.drop(index=DOCKER0.id).nat == "").all()
    assert reply.loc[UPLINK.id, "dst"] == "203.0.113.1"
    assert reply.loc[DOCKER0.id, "dst"] == "172.17.0.2"
    assert (df.nat != "").sum() == len(snat.packets)


def test_dnat_text_shows_the_rewritten_port() -> None:
    df = to_dataframe(dnat_walk())
    syn = df[df.packet_id == 1].set_index("point")
    assert syn.loc[DOCKER0.id, "nat"] == "DNAT 203.0.113.1:8080 -> 172.17.0.4:80"
    assert (syn.loc[UPLINK.id, "dport"], syn.loc[DOCKER0.id, "dport"]) == (8080, 80)
    syn_ack = df[df.packet_id == 2].set_index("point")
    assert syn_ack.loc[UPLINK.id, "nat"] == "SNAT 172.17.0.4:80 -> 203.0.113.1:8080 (reverses DNAT)"


def test_hops_frame_joins_the_sighting_frame(snat: Trace) -> None:
    sightings = to_dataframe(snat)
    hops = hops_dataframe(snat)
    assert len(hops) == len(sightings) - len(snat.packets)
    joined = hops.merge(sightings, on=["packet_id", "hop"], suffixes=("", "_s"))
    assert len(joined) == len(hops)
    assert (joined.to_point == joined.point).all()
    assert joined.delta_us.tolist() == pytest.approx(joined.delta_us_s.tolist())
    assert (joined.nat == joined.nat_s).all()
    nat_hop = hops[(hops.packet_id == 1) & (hops.nat != "")]
    assert (nat_hop.from_point.item(), nat_hop.to_point.item()) == (DOCKER0.id, UPLINK.id)
    # Per-hop grouping is what latency analysis needs: 8 hops, 20 probes each.
    sizes = hops.groupby(["direction", "from_point", "to_point"]).size()
    assert len(sizes) == 8 and set(sizes) == {20}


def test_nat_label_shows_ports_only_when_rewritten() -> None:
    kept = NatEvent("SNAT", ("a", "b"), Address("172.17.0.2", 7), Address("203.0.113.1", 7))
    moved = NatEvent("SNAT", ("a", "b"), Address("172.17.0.2", 7), Address("203.0.113.1", 9))
    assert nat_label(kept) == "SNAT 172.17.0.2 -> 203.0.113.1"
    assert nat_label(moved) == "SNAT 172.17.0.2:7 -> 203.0.113.1:9"


def test_nat_on_a_pair_that_is_not_adjacent_lands_on_the_after_point(snat: Trace) -> None:
    # host/docker0 missed the packet: the rewrite is seen between the veth and the uplink.
    request = snat.packets[0]
    gappy = replace(
        request,
        sightings=tuple(s for s in request.sightings if s.point != DOCKER0.id),
    )
    event = request.nat[0]
    assert nat_hop_index(gappy, event) == 2
    assert to_dataframe(replace(snat, packets=(gappy,))).nat.tolist()[2] == nat_label(event)


def test_captured_packets_without_probe_have_na_probe(ping: Trace) -> None:
    captured = tuple(replace(p, probe=None) for p in ping.packets[:4])
    df = to_dataframe(replace(ping, packets=captured))
    assert df.probe.isna().all()
    assert df.probe.dtype == pd.Int64Dtype()


def test_frames_module_does_not_import_matplotlib() -> None:
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(HERE)!r})\n"
        "from sample_traces import snat_walk\n"
        "from flowtrace.output.frames import to_dataframe, hops_dataframe\n"
        "to_dataframe(snat_walk(2)); hops_dataframe(snat_walk(2))\n"
        "assert not any(m.startswith('matplotlib') for m in sys.modules), 'matplotlib imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)

"""`flowtrace analyze` on constructed sets: a pcapng, classic pcaps, a mergecap-style file.

Every set holds the same recorded situation: c1 (172.17.0.2) pings the outside host
(203.0.113.2) through the host's MASQUERADE, seen at three points; the request is
rewritten between host/docker0 and host/ft-uplink and the reply is put back.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console
from sample_frames import C1_IP, OUTSIDE_IP, POINTS, UPLINK_IP, snat_ping
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, IPv6
from scapy.layers.l2 import Ether
from scapy.layers.sctp import SCTP

from flowtrace.analyze import Analysis, analyze, parse_point_names, summary_dict
from flowtrace.analyze import passes as analyze_module
from flowtrace.cli import cli
from flowtrace.correlate import match
from flowtrace.correlate.decode import decode_frame
from flowtrace.correlate.match import INITIAL_HOLD_NS, Correlator, correlate
from flowtrace.errors import ExitStatus, FlowtraceError
from flowtrace.model import Packet, Sighting
from flowtrace.output.terminal import render_analysis
from flowtrace.pcap import reader as reader_module
from flowtrace.pcap.pcapng import PcapngWriter, write_classic_pcap
from flowtrace.pcap.pcapset import write_manifest


def write_pcapng(
    path: Path, frames: Iterable[tuple[int, int, bytes]], names: Sequence[str] = POINTS
) -> Path:
    with path.open("wb") as handle:
        writer = PcapngWriter(handle)
        for name in names:
            writer.add_interface(name)
        for point, time_ns, data in frames:
            writer.write_packet(point, time_ns, data)
    return path


def write_pcaps(folder: Path, frames: list[tuple[int, int, bytes]]) -> list[Path]:
    """One classic pcap per point, named like tcpdump files a user would make."""
    paths = []
    for index, name in enumerate(POINTS):
        path = folder / f"{name.replace('/', '-')}.pcap"
        with path.open("wb") as handle:
            write_classic_pcap(handle, [(t, d) for p, t, d in frames if p == index], 1)
        paths.append(path)
    return paths


def journeys(analysis: Analysis) -> list[tuple[str, tuple[str, ...]]]:
    return [(p.direction, tuple(s.point for s in p.sightings)) for p in analysis.trace.packets]


def nat_seen(analysis: Analysis) -> set[tuple[str, tuple[str, str], str, str, str | None]]:
    return {
        (ev.kind, ev.between, str(ev.before), str(ev.after), ev.reverse_of)
        for ev, _ in analysis.nat.values()
    }


EXPECTED_NAT = {
    ("SNAT", ("host/docker0", "host/ft-uplink"), f"{C1_IP}:77", f"{UPLINK_IP}:77", None),
    ("DNAT", ("host/ft-uplink", "host/docker0"), f"{UPLINK_IP}:77", f"{C1_IP}:77", "SNAT"),
}
REQUEST_PATH = ("request", POINTS)
REPLY_PATH = ("reply", tuple(reversed(POINTS)))


def test_pcapng_set_packets_nat_flows_and_hops(tmp_path: Path) -> None:
    analysis = analyze(write_pcapng(tmp_path / "set.pcapng", snat_ping(3)))
    assert analysis.frames == 18 and analysis.undecoded == 0
    assert journeys(analysis) == [REQUEST_PATH, REPLY_PATH] * 3
    assert nat_seen(analysis) == EXPECTED_NAT
    assert [n for _, n in analysis.nat.values()] == [3, 3]
    (flow,) = analysis.flows.values()
    assert flow.key == ("icmp", C1_IP, 77, OUTSIDE_IP, None)
    assert (flow.requests, flow.replies, flow.nat) == (3, 3, {"SNAT", "DNAT"})
    hop = ("request", "ICMP echo request", "host/docker0", "host/ft-uplink")
    docker0_to_uplink = analysis.hops[hop].summary()
    assert docker0_to_uplink["count"] == 3 and docker0_to_uplink["min_ns"] == 50_000
    assert analysis.notes == []


@pytest.mark.parametrize("native", ["1", "0"])
def test_a_frame_stamped_beyond_64_bit_ns_is_left_out_with_a_note(
    tmp_path: Path, native: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2**64 - 1 ns (the year 2554) fits an EPB but no kernel clock: damage, named, while
    the rest of the set is correlated as before (by the C grouper and by Python)."""
    if native == "0":
        monkeypatch.setattr(match, "_NATIVE", None)
    frames = [*snat_ping(1), (0, 2**64 - 1, snat_ping(1)[0][2])]
    analysis = analyze(write_pcapng(tmp_path / "set.pcapng", frames))
    assert analysis.frames == 7 and analysis.packet_count == 2
    assert journeys(analysis) == [REQUEST_PATH, REPLY_PATH]
    assert analysis.notes == [
        "1 frames carry a time before 1677 or after 2262 (beyond 64-bit ns since 1970): "
        "damaged timestamps, left out of the correlation"
    ]


def test_classic_pcaps_given_together_are_one_point_each(tmp_path: Path) -> None:
    frames = snat_ping(2)
    analysis = analyze(write_pcaps(tmp_path, frames), point_names=POINTS)
    assert journeys(analysis) == [REQUEST_PATH, REPLY_PATH] * 2
    assert nat_seen(analysis) == EXPECTED_NAT
    unnamed = analyze(write_pcaps(tmp_path, frames))
    assert [p.id for p in unnamed.trace.points] == ["c1-eth0", "host-docker0", "host-ft-uplink"]
    assert len(unnamed.trace.packets) == 4


def test_mergecap_file_without_names_takes_point_names(tmp_path: Path) -> None:
    merged = write_pcapng(tmp_path / "merged.pcapng", snat_ping(2), names=("", "", ""))
    plain = analyze(merged)
    assert [p.id for p in plain.trace.points] == ["merged#0", "merged#1", "merged#2"]
    named = analyze(merged, point_names=POINTS)
    assert [p.id for p in named.trace.points] == list(POINTS)
    assert journeys(named) == [REQUEST_PATH, REPLY_PATH] * 2
    assert nat_seen(named) == EXPECTED_NAT
    with pytest.raises(FlowtraceError) as wrong:
        analyze(merged, point_names=POINTS[:2])
    assert wrong.value.status == ExitStatus.USAGE
    assert "2 point names for 3 interfaces" in wrong.value.message


def test_captures_merged_into_one_interface_get_a_note(tmp_path: Path) -> None:
    one = write_pcapng(
        tmp_path / "one.pcapng", [(0, t, d) for _, t, d in snat_ping(3)], names=("",)
    )
    analysis = analyze(one)
    assert len(analysis.trace.points) == 1
    (note,) = analysis.notes
    assert "mergecap -I none" in note and "one#0" in note
    # One capture of one interface, every packet seen once: nothing to say.
    clean = write_pcapng(
        tmp_path / "clean.pcapng", [(0, t, d) for p, t, d in snat_ping(3) if p == 0], ("c1",)
    )
    assert analyze(clean).notes == []


@pytest.mark.parametrize(
    ("text", "problem"),
    [("a,,b", "none empty"), ("a,b,a", "a given twice"), (" ", "none empty")],
)
def test_bad_point_names_are_usage_errors(text: str, problem: str) -> None:
    with pytest.raises(FlowtraceError) as bad:
        parse_point_names(text)
    assert bad.value.status == ExitStatus.USAGE and problem in bad.value.message


def test_point_names_are_trimmed() -> None:
    assert parse_point_names("c1/eth0, host/docker0") == ["c1/eth0", "host/docker0"]


def test_same_interface_name_in_two_files_stays_two_points(tmp_path: Path) -> None:
    frames = snat_ping(1)
    first = write_pcapng(tmp_path / "a.pcapng", [f for f in frames if f[0] == 0], ("eth0",))
    second = write_pcapng(
        tmp_path / "b.pcapng", [(0, t, d) for p, t, d in frames if p == 2], ("eth0",)
    )
    analysis = analyze([first, second])
    assert [p.id for p in analysis.trace.points] == ["eth0", "eth0#2"]
    assert journeys(analysis)[0] == ("request", ("eth0", "eth0#2"))


def test_render_analysis_stays_within_80_columns_for_lab_names(tmp_path: Path) -> None:
    names = ("c1/eth0", "host/veth66060ea", "host/docker0")
    analysis = analyze(write_pcapng(tmp_path / "set.pcapng", snat_ping(2), names))
    console = Console(record=True, width=80, highlight=False, soft_wrap=True)
    render_analysis(analysis, list(analysis.trace.packets[:1]), console)
    text = console.export_text()
    assert "SNAT 172.17.0.2 -> 203.0.113.1 between host/veth66060ea and host/docker0" in text
    assert "icmp id 77  172.17.0.2  203.0.113.2" in text
    latency = text.split("per-hop latency\n", 1)[1].splitlines()
    assert latency[1] == "request, ICMP echo request" and latency[4] == "reply, ICMP echo reply"
    hop_lines = [line for line in latency if line.startswith("  ")]
    assert len(hop_lines) == 4  # two hops each way, one line each
    assert all(len(line) <= 80 for line in latency)
    assert hop_lines[0].split()[0:3] == ["c1/eth0", "->", "host/veth66060ea"]
    assert hop_lines[2].split()[0:3] == ["host/docker0", "->", "host/veth66060ea"]


def _set_folder(tmp_path: Path, pings: int) -> Path:
    folder = tmp_path / "set"
    folder.mkdir()
    write_pcapng(folder / "capture.pcapng", snat_ping(pings))
    write_manifest(
        folder,
        {"kind": "capture", "pcapng": "capture.pcapng", "points": [{"id": p} for p in POINTS]},
    )
    return folder


def test_cli_json_is_one_valid_document_with_documented_keys(tmp_path: Path) -> None:
    folder = _set_folder(tmp_path, 2)
    result = CliRunner().invoke(cli, ["analyze", str(folder), "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert set(document) == {
        "packets", "schema", "flowtrace", "sources", "points", "frames", "undecoded",
        "packet_count", "truncated", "flows", "nat", "hops", "stats", "notes", "hosts", "tunnels",
        "ndp_frames",
    }  # fmt: skip
    assert document["packet_count"] == len(document["packets"]) == 4
    assert [s["point"] for s in document["packets"][0]["sightings"]] == list(POINTS)
    assert {(n["kind"], n["count"]) for n in document["nat"]} == {("SNAT", 2), ("DNAT", 2)}
    bare = CliRunner().invoke(cli, ["analyze", str(folder), "--json", "--no-packets"])
    assert json.loads(bare.output)["packets"] == []


def test_cli_usage_mistakes_are_one_line(tmp_path: Path) -> None:
    folder = _set_folder(tmp_path, 1)
    for args in (
        ["analyze"],
        ["analyze", str(folder), "--point-names", "a,b"],
        ["capture", "c1", "c2", "-d", "0"],
        ["capture", "c1", "c2", "-d", "soon"],
        ["capture"],
        ["capture", "c1"],
        ["capture", "--point", "c1", "-n", "5"],
        ["capture", "c1", "c2", "-n", "0"],
        ["capture", "c1", "c2", "-f", "icmp and"],
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == ExitStatus.USAGE, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("flowtrace: "), (args, result.output)


def _peak_memory(path: Path, keep_packets: bool = False) -> int:
    tracemalloc.start()
    try:
        analyze(path, keep_packets=keep_packets, window_ns=100_000_000)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_as_the_capture_grows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Four times the packets, the same flows and window: the peak must not follow.

    The reader's chunk and the frames the pass remembers decoded are made smaller
    than both files, so that what is measured is the pass itself, not a buffer of
    fixed size that happens to hold a whole small file.
    """
    monkeypatch.setattr(reader_module, "CHUNK_SIZE", 1 << 15)
    monkeypatch.setattr(reader_module, "MIN_CHUNK_SIZE", 1 << 15)
    monkeypatch.setattr(analyze_module, "_RECENT_FRAMES", 64)
    short = write_pcapng(tmp_path / "short.pcapng", snat_ping(150))
    long = write_pcapng(tmp_path / "long.pcapng", snat_ping(600))
    analyze(short, keep_packets=False)  # imports and caches, outside the measure
    short_peak, long_peak = _peak_memory(short), _peak_memory(long)
    assert long_peak < short_peak * 1.3, (short_peak, long_peak)
    # What the measure would show if packets were kept (as notebooks ask for).
    assert _peak_memory(long, keep_packets=True) > short_peak * 2


def test_summary_counts_match_the_streamed_packets(tmp_path: Path) -> None:
    seen: list[int] = []
    analysis = analyze(
        write_pcapng(tmp_path / "set.pcapng", snat_ping(5)),
        keep_packets=False,
        on_packet=lambda pkt: seen.append(pkt.packet_id),
    )
    summary = summary_dict(analysis)
    assert analysis.trace.packets == () and seen == list(range(1, 11))
    assert summary["packets"] == 10 and summary["frames"] == 30
    assert json.loads(json.dumps(summary)) == summary
    assert summary["flows"][0]["src"] == C1_IP


def test_packet_json_is_exactly_what_json_dumps_writes(tmp_path: Path) -> None:
    from flowtrace.output.jsonout import packet_dict
    from flowtrace.output.jsonstream import packet_json

    odd_names = ('c1/"eth0"', "host/dockér0", "host/ft\\uplink")
    packets = list(
        analyze(write_pcapng(tmp_path / "odd.pcapng", snat_ping(2), odd_names)).trace.packets
    )
    examples = Path(__file__).resolve().parents[3] / "captures" / "examples"
    for folder in sorted(examples.iterdir()):
        if (folder / "manifest.json").exists():
            packets += analyze(folder).trace.packets  # traces: probes, TCP, ICMP errors, NAT
    assert any(p.nat for p in packets) and any(p.probe is not None for p in packets)
    for pkt in packets:
        assert packet_json(pkt) == json.dumps(packet_dict(pkt))


# --- the streaming pass: what it holds while it reads a capture's ring blocks ------------


def block_order(
    frames: list[tuple[int, int, bytes]], block: int, delay: dict[int, int] | None = None
) -> list[tuple[int, int, bytes]]:
    """Frames as capture workers append them: each point's in time order, `block` at a time,
    the points' blocks in the order they were handed over (a point's handover can be late)."""
    by_point: dict[int, list[tuple[int, int, bytes]]] = {}
    for frame in sorted(frames, key=lambda f: f[1]):
        by_point.setdefault(frame[0], []).append(frame)
    blocks = []
    for point, own in by_point.items():
        for start in range(0, len(own), block):
            chunk = own[start : start + block]
            blocks.append((chunk[-1][1] + (delay or {}).get(point, 0), point, chunk))
    return [frame for _, _, chunk in sorted(blocks) for frame in chunk]


def sightings_of(frames: list[tuple[int, int, bytes]]) -> list[Sighting]:
    out = []
    for index, (point, time_ns, data) in enumerate(frames):
        headers = decode_frame(data)
        assert headers is not None
        out.append(Sighting(POINTS[point], time_ns, headers, None, index))
    return out


def test_block_order_holds_sightings_for_the_hold_not_the_window() -> None:
    frames = snat_ping(8000, spacing_ns=200_000)  # 30 k sightings a second for 1.6 s
    ordered = list(correlate(sightings_of(frames), POINTS))
    correlator = Correlator(POINTS)
    packets: list[Packet] = []
    most_held = 0
    for s in sightings_of(block_order(frames, 64)):
        packets += correlator.add(s)
        most_held = max(most_held, correlator.held)
    packets += correlator.finish()
    assert [(p.packet_id, p.direction, signature(p)) for p in packets] == [
        (p.packet_id, p.direction, signature(p)) for p in ordered
    ]
    # Complete packets leave at once and the reorder buffer keeps the hold (100 ms, about
    # 3 k sightings here), not half a window: that would be the whole 48 k of the stream.
    assert 0 < most_held < 6_000, most_held
    assert len(packets) == 16_000


def test_a_block_handed_over_later_than_the_hold_still_joins_its_packets() -> None:
    frames = snat_ping(40, spacing_ns=10_000_000)  # 400 ms of pings
    late = block_order(frames, 8, delay={2: INITIAL_HOLD_NS * 3})  # the uplink lags 300 ms
    packets = list(correlate(sightings_of(late), POINTS))
    assert [(p.direction, tuple(s.point for s in p.sightings)) for p in packets] == [
        REQUEST_PATH,
        REPLY_PATH,
    ] * 40
    assert {str(ev.before) for p in packets for ev in p.nat} == {f"{C1_IP}:77", f"{UPLINK_IP}:77"}


def signature(pkt: Packet) -> tuple[tuple[str, int], ...]:
    return tuple((s.point, s.time_ns) for s in pkt.sightings)


def test_rules_and_conntrack_come_back_from_the_manifest() -> None:
    from flowtrace.analyze.manifest import explain_from_manifest, rewrites_in_manifest
    from flowtrace.model import Address, NatEvent

    manifest = {
        "nat": [
            {
                "packet": 1,
                "kind": "SNAT",
                "between": ["host/docker0", "host/ft-uplink"],
                "rule": "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
                "conntrack": "icmp 1 29 src=172.17.0.2 dst=203.0.113.2",
            },
            {"packet": "bad", "kind": "SNAT", "between": []},
        ]
    }
    explained = rewrites_in_manifest(manifest)
    assert list(explained) == [(1, "SNAT", "host/docker0", "host/ft-uplink")]
    event = NatEvent(
        "SNAT", ("host/docker0", "host/ft-uplink"), Address("172.17.0.2"), Address("203.0.113.1")
    )
    restored = explain_from_manifest(event, 1, explained)
    assert restored.rule is not None and "MASQUERADE" in restored.rule
    assert restored.conntrack is not None and "src=172.17.0.2" in restored.conntrack
    assert explain_from_manifest(event, 2, explained) is event  # another packet: untouched
    assert rewrites_in_manifest(None) == {}


# --- per-hop latency by direction and packet kind -----------------------------------------

EXAMPLES = Path(__file__).resolve().parents[3] / "captures" / "examples"
UPLINK_TO_DOCKER0 = ("host/ft-uplink", "host/docker0")


@pytest.mark.parametrize(
    ("packet", "kind"),
    [
        (TCP(flags="S"), "TCP SYN"),
        (TCP(flags="SA"), "TCP SYN-ACK"),
        (TCP(flags="R"), "TCP RST"),
        (TCP(flags="RA"), "TCP RST"),
        (TCP(flags="FA"), "TCP FIN"),
        (TCP(flags="PA") / b"data", "TCP ACK"),
        (TCP(flags="A"), "TCP ACK"),
        (ICMP(type=8), "ICMP echo request"),
        (ICMP(type=0), "ICMP echo reply"),
        (ICMP(type=3, code=3) / IP() / UDP(), "ICMP unreachable"),
        (ICMP(type=11) / IP() / UDP(), "ICMP time exceeded"),
        (ICMP(type=5), "ICMP type 5"),
        (UDP(), "UDP"),
    ],
)
def test_packet_kinds(packet: object, kind: str) -> None:
    headers = decode_frame(bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / packet))  # type: ignore[operator]
    assert headers is not None
    assert headers.kind == kind


def test_packet_kinds_of_ipv6_and_other_protocols() -> None:
    echo = decode_frame(bytes(Ether() / IPv6() / ICMPv6EchoReply()))
    sctp = decode_frame(bytes(Ether() / IP() / SCTP(sport=1, dport=2)))
    assert echo is not None and sctp is not None
    assert echo.kind == "ICMPv6 echo reply"
    assert sctp.kind == "132"


def test_a_syn_and_the_rst_after_it_have_hop_rows_of_their_own() -> None:
    """The published-port example: the SYN is DNATed (conntrack sets up state, tens of µs);
    the source's RST follows an entry that exists (a few µs).  One row would mix them."""
    runner = CliRunner()
    result = runner.invoke(cli, ["analyze", str(EXAMPLES / "dnat-outside-web"), "--json"])
    assert result.exit_code == 0, result.output
    hops = json.loads(result.output)["hops"]
    kinds = [(hop["direction"], hop["kind"]) for hop in hops]
    assert sorted(set(kinds)) == [
        ("reply", "TCP SYN-ACK"),
        ("request", "TCP RST"),
        ("request", "TCP SYN"),
    ]
    into_docker0 = {
        hop["kind"]: hop for hop in hops if (hop["from"], hop["to"]) == UPLINK_TO_DOCKER0
    }
    assert into_docker0["TCP SYN"]["count"] == into_docker0["TCP RST"]["count"] == 5
    assert into_docker0["TCP SYN"]["min_ns"] > 4 * into_docker0["TCP RST"]["max_ns"]
    text = runner.invoke(cli, ["analyze", str(EXAMPLES / "dnat-outside-web")]).output
    latency = text.split("per-hop latency\n", 1)[1].splitlines()
    groups = [line for line in latency if line and not line.startswith(("  ", "hop "))]
    assert groups == ["request, TCP SYN", "request, TCP RST", "reply, TCP SYN-ACK"]


def test_rewrites_off_the_path_come_back_from_the_manifest() -> None:
    from flowtrace.analyze.manifest import rewrites_off_the_path

    def entry(packet: object, kind: str, between: list[str], **extra: object) -> dict[str, object]:
        return {
            "packet": packet,
            "kind": kind,
            "between": between,
            "before": {"ip": "127.0.0.11", "port": 53},
            "after": {"ip": "127.0.0.11", "port": 40975},
            "rule": "-A DOCKER_OUTPUT ... -j DNAT",
            "conntrack": "udp ...",
            **extra,
        }

    manifest = {
        "nat": [
            entry(1, "DNAT", ["c3 socket", "c3/lo"]),  # before the first point
            entry(2, "SNAT", ["c3/lo", "host (local stack)"], reverse_of="DNAT"),  # after the last
            entry(3, "SNAT", ["c3/lo", "c3/eth0"]),  # between two points: the sightings show it
            entry("x", "DNAT", ["c3 socket", "c3/lo"]),  # unreadable: skipped
            {"kind": "DNAT"},
        ]
    }
    found = rewrites_off_the_path(manifest, ["c3/lo", "c3/eth0"])
    assert sorted(found) == [1, 2]
    (dnat,) = found[1]
    assert (dnat.kind, dnat.between, str(dnat.before), str(dnat.after)) == (
        "DNAT",
        ("c3 socket", "c3/lo"),
        "127.0.0.11:53",
        "127.0.0.11:40975",
    )
    assert dnat.rule == "-A DOCKER_OUTPUT ... -j DNAT" and dnat.reverse_of is None
    assert found[2][0].reverse_of == "DNAT"
    assert rewrites_off_the_path(None, ["c3/lo"]) == {}

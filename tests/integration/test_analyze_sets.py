"""`flowtrace analyze` against flowtrace's own trace of the same traffic, on the real lab.

While a trace runs (ping c1 -> ft-outside through Docker's MASQUERADE; a TCP SYN from
ft-outside to the published port 203.0.113.1:8080 through Docker's DNAT), the same
points are recorded three more ways: `tcpdump -w` on every point inside the point's
namespace (then merged with `mergecap -I none`), the same pcap files given together,
and `flowtrace capture` in another process.  analyze of each must find every packet
the trace followed, sighting by sighting, with the same NAT rewrites between the same
points.  Other test sessions share the lab, so the sets may hold more traffic than
the trace's: each comparison looks for the trace's packets, it does not count all.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from flowtrace import api
from flowtrace import lab as lab_module
from flowtrace.analyze import Analysis, analyze
from flowtrace.lab import LabState
from flowtrace.model import Packet, Point, ProbeKind, Trace

pytestmark = pytest.mark.integration

FLOWTRACE = [sys.executable, "-m", "flowtrace"]
OUTSIDE = f"netns:{lab_module.OUTSIDE_NETNS}"
PUBLISHED = f"{lab_module.UPLINK_IP}:{lab_module.WEB_PORT}"
TCPDUMP = [
    "tcpdump",
    "-n",
    "-U",
    "--immediate-mode",
    "--time-stamp-precision",
    "nano",
    "-Z",
    "root",
]

Signature = tuple[str, tuple[tuple[object, ...], ...]]
NatSeen = frozenset[tuple[str, tuple[str, str], str, str, str | None]]


def signature(pkt: Packet) -> Signature:
    """What a packet is, hop by hop, whoever recorded it."""
    return (
        pkt.direction,
        tuple(
            (s.point, s.src, s.sport, s.dst, s.dport, s.headers.ip_id, s.headers.icmp_seq,
             s.headers.tcp_seq, s.headers.tcp_flags)
            for s in pkt.sightings
        ),
    )  # fmt: skip


def nat_seen(pkt: Packet) -> NatSeen:
    return frozenset(
        (ev.kind, ev.between, str(ev.before), str(ev.after), ev.reverse_of) for ev in pkt.nat
    )


@dataclass
class Recording:
    points: list[Point]
    trace: Trace
    trace_set: Path
    pcaps: list[Path]
    merged: Path
    capture_set: Path

    @property
    def point_ids(self) -> list[str]:
        return [p.id for p in self.points]


def _start(command: list[str], ready: str) -> subprocess.Popen[str]:
    """Start a recorder and return once its stderr says it is recording."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    deadline = time.monotonic() + 30
    said = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        said.append(line)
        if not line or line.startswith(ready):
            break
    if not said[-1].startswith(ready):
        process.kill()
        pytest.fail(f"{command[0]} did not start: {''.join(said)} {process.communicate()}")
    return process


def _stop(processes: list[subprocess.Popen[str]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def record(
    tmp: Path, kind: ProbeKind, src: str, dst: str, bpf: str, capture_args: list[str]
) -> Recording:
    points, _ = api.path(src, dst, kind)
    pcaps = [tmp / f"{i}-{p.id.replace('/', '_')}.pcap" for i, p in enumerate(points)]
    recorders: list[subprocess.Popen[str]] = []
    try:
        for point, pcap in zip(points, pcaps, strict=True):
            command = ["nsenter", f"--net={point.netns.path}", *TCPDUMP, "-i", point.ifname]
            recorders.append(_start([*command, "-w", str(pcap), bpf], "tcpdump: listening on"))
        capture_set = tmp / "capture"
        capture_command = [*FLOWTRACE, "capture", *capture_args, "-f", bpf, "-o", str(capture_set)]
        recorders.append(_start(capture_command, "writing "))
        trace = api.trace(
            src, dst, kind=kind, count=3, interval=0.05, timeout=2, output_dir=tmp / "trace"
        )
        time.sleep(0.2)  # the capture's ring blocks retire within 60 ms
    finally:
        _stop(recorders)
    merged = tmp / "merged.pcapng"
    subprocess.run(
        ["mergecap", "-I", "none", "-w", str(merged), *map(str, pcaps)],
        check=True,
        capture_output=True,
    )
    return Recording(points, trace, tmp / "trace", pcaps, merged, capture_set)


@pytest.fixture(scope="module")
def snat(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    yield record(tmp_path_factory.mktemp("snat"), "icmp", "c1", OUTSIDE, "icmp", ["c1", OUTSIDE])


@pytest.fixture(scope="module")
def dnat(lab: LabState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recording]:
    bpf = f"tcp port {lab_module.WEB_PORT} or tcp port {lab_module.WEB_CONTAINER_PORT}"
    yield record(
        tmp_path_factory.mktemp("dnat"), "tcp", OUTSIDE, PUBLISHED, bpf, [OUTSIDE, PUBLISHED]
    )


def analyses(rec: Recording) -> dict[str, Analysis]:
    """The three other recordings of the trace's traffic, by name."""
    return {
        "capture set": analyze(rec.capture_set),
        "tcpdump + mergecap": analyze(rec.merged, point_names=rec.point_ids),
        "tcpdump pcaps": analyze(rec.pcaps, point_names=rec.point_ids),
    }


def traced_packets(rec: Recording) -> list[Packet]:
    """The trace's packets as its pcap set holds them: the frames its probes made.

    Read back from the set rather than taken from the tracer's memory: the tracer
    correlates probe by probe and may cut a packet whose last frames a ring handed
    over after the probe was settled; the set holds every frame, and one pass over it
    puts them together again.
    """
    return list(analyze(rec.trace_set).trace.packets)


def assert_same_packets_and_nat(rec: Recording) -> None:
    traced = traced_packets(rec)
    assert len(traced) >= 6, "the trace set holds too little"
    expected = {signature(p): nat_seen(p) for p in traced}
    for name, analysis in analyses(rec).items():
        assert [p.id for p in analysis.trace.points] == rec.point_ids, name
        found = {signature(p): nat_seen(p) for p in analysis.trace.packets}
        missing = [sig for sig in expected if sig not in found]
        assert not missing, f"{name}: {len(missing)} of the trace's packets missing: {missing}"
        for sig, nat in expected.items():
            assert found[sig] == nat, f"{name}: other NAT on {sig}: {found[sig]} != {nat}"


def requests_and_replies(rec: Recording, analysis: Analysis) -> list[Packet]:
    wanted = {signature(p) for p in traced_packets(rec)}
    return [p for p in analysis.trace.packets if signature(p) in wanted]


def test_snat_ping_found_alike_in_every_recording(snat: Recording) -> None:
    assert [v.outcome for v in snat.trace.verdicts] == ["replied"] * 3
    assert_same_packets_and_nat(snat)


def test_snat_ping_request_and_reply_at_every_point(snat: Recording, lab: LabState) -> None:
    merged = analyze(snat.merged, point_names=snat.point_ids)
    packets = requests_and_replies(snat, merged)
    assert sorted(p.direction for p in packets) == ["reply"] * 3 + ["request"] * 3
    for pkt in packets:
        order = snat.point_ids if pkt.direction == "request" else snat.point_ids[::-1]
        assert [s.point for s in pkt.sightings] == order
    c1_ip = lab.container("c1").ip
    snat_events = {
        (ev.between, ev.before.ip, ev.after.ip)
        for ev, _ in merged.nat.values()
        if ev.kind == "SNAT" and ev.reverse_of is None
    }
    assert (("host/docker0", "host/ft-uplink"), c1_ip, lab_module.UPLINK_IP) in snat_events


def test_dnat_syn_found_alike_in_every_recording(dnat: Recording) -> None:
    assert [v.outcome for v in dnat.trace.verdicts] == ["replied"] * 3
    assert_same_packets_and_nat(dnat)


def test_dnat_to_the_published_port_at_the_right_hop(dnat: Recording, lab: LabState) -> None:
    web_ip = lab.container(lab_module.WEB_CONTAINER).ip
    merged = analyze(dnat.merged, point_names=dnat.point_ids)
    dnat_events = {
        (ev.between, str(ev.before), str(ev.after))
        for ev, _ in merged.nat.values()
        if ev.kind == "DNAT" and ev.reverse_of is None
    }
    assert (
        ("host/ft-uplink", "host/docker0"),
        PUBLISHED,
        f"{web_ip}:{lab_module.WEB_CONTAINER_PORT}",
    ) in dnat_events
    syns = [
        p
        for p in requests_and_replies(dnat, merged)
        if p.first.headers.tcp_flags == 0x02 and p.direction == "request"
    ]
    assert len(syns) == 3
    assert all([s.point for s in p.sightings] == dnat.point_ids for p in syns)

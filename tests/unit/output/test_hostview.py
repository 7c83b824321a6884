"""A trace across hosts as people and programs read it: hops between hosts with their
clocks' bound, the VXLAN headers a packet crossed the underlay in, hosts in bands."""

from __future__ import annotations

from rich.console import Console

from flowtrace.correlate.decode import decode_frame
from flowtrace.model import Namespace, Packet, Point, Sighting, Trace, Tunnel
from flowtrace.output.hostview import clock_errors, delta_text, hop_error, outer_text, tunnel_names
from flowtrace.output.jsonout import trace_dict
from flowtrace.output.terminal import packet_table, render_trace

T0 = 1_796_217_604_303_373_392
OUTER = Tunnel("vxlan", "198.18.20.2", "198.18.20.3", 55437, 4789, 4097, 64, 11)


def _point(host: str, label: str, ifname: str, role: str, inode: int) -> Point:
    return Point(
        f"{label}@{host}/{ifname}",
        Namespace(f"{host}:/proc/{inode}/ns/net", f"{label}@{host}", inode),
        ifname,
        2,
        role,
    )


POINTS = (
    _point("hosta", "o1", "eth0", "source", 11),
    _point("hosta", "host", "eth0", "underlay", 10),
    _point("hostb", "host", "eth0", "underlay", 10),
    _point("hostb", "o2", "eth0", "destination", 12),
)
META = {
    "title": "flowtrace ping o1@hosta -> o2@hostb (10.213.129.4)",
    "hosts": [
        {
            "name": "hosta",
            "url": "unix:///a.sock",
            "engine": {"version": "20.10.24"},
            "clock": {"offset_ns": 3_100, "error_ns": 47_200},
        },
        {
            "name": "hostb",
            "url": "unix:///b.sock",
            "engine": {"version": "20.10.24"},
            "clock": {"offset_ns": 10_000, "error_ns": 44_200},
        },
    ],
    "tunnels": [{"vni": 4097, "network": "ftover"}],
}


def _trace() -> Trace:
    from scapy.layers.inet import ICMP, IP
    from scapy.layers.l2 import Ether

    h = decode_frame(
        bytes(Ether() / IP(src="10.213.129.2", dst="10.213.129.4", id=9) / ICMP(id=5, seq=0))
    )
    assert h is not None
    times = (0, 54_300, 63_200, 103_600)
    sightings = tuple(
        Sighting(p.id, T0 + t, h._replace(outer=OUTER) if p.role == "underlay" else h)
        for p, t in zip(POINTS, times, strict=True)
    )
    return Trace(POINTS, (Packet(1, "request", sightings, (), 0),), meta=META)


def test_bounds_belong_to_hops_between_hosts_only() -> None:
    points = {p.id: p for p in POINTS}
    errors = clock_errors(META)
    assert errors == {"hosta": 47_200, "hostb": 44_200}
    assert hop_error(points, errors, POINTS[0].id, POINTS[1].id) == 0
    assert hop_error(points, errors, POINTS[1].id, POINTS[2].id) == 91_400
    assert delta_text(8_900, 91_400) == "8.9±91.4" and delta_text(8_900, 0) == "8.9"
    assert clock_errors(
        {"hosts": [{"name": "local", "reference": True, "clock": {"error_ns": 0}}]}
    ) == {None: 0}


def test_the_outer_headers_name_the_overlay() -> None:
    assert tunnel_names(META) == {4097: "ftover"}
    assert outer_text(OUTER, {4097: "ftover"}) == (
        "outer: VXLAN vni 4097 (overlay ftover) 198.18.20.2:55437 -> 198.18.20.3:4789"
    )


def test_the_terminal_shows_the_bound_and_the_outer_headers() -> None:
    trace = _trace()
    text = packet_table(
        trace.packets[0], {p.id: p for p in POINTS}, clock_errors(META), tunnel_names(META)
    ).plain
    lines = text.splitlines()
    hop = next(line for line in lines if line.lstrip().startswith("3 "))
    assert "host@hostb/eth0" in hop and "8.9±91.4" in hop
    assert sum("outer: VXLAN vni 4097 (overlay ftover)" in line for line in lines) == 2
    console = Console(record=True, width=200)
    render_trace(trace, console)
    assert (
        "path: o1@hosta/eth0 -> host@hosta/eth0 -> host@hostb/eth0 -> o2@hostb/eth0"
        in console.export_text()
    )


def test_json_says_the_host_the_outer_headers_and_each_hops_bound() -> None:
    data = trace_dict(_trace())
    assert [p["host"] for p in data["points"]] == ["hosta", "hosta", "hostb", "hostb"]
    sightings = data["packets"][0]["sightings"]
    assert sightings[0]["outer"] is None
    assert sightings[1]["outer"] == {
        "kind": "vxlan",
        "vni": 4097,
        "src": "198.18.20.2",
        "dst": "198.18.20.3",
        "sport": 55437,
        "dport": 4789,
        "ttl": 64,
        "ip_id": 11,
    }
    assert [h["error_ns"] for h in data["hops"]] == [0, 91_400, 0]
    assert data["meta"]["hosts"][1]["clock"]["error_ns"] == 44_200


def test_the_timeline_draws_a_band_per_host() -> None:
    from flowtrace.output.plot import hop_timeline

    figure = hop_timeline(_trace())
    texts = [t.get_text() for t in figure.axes[0].texts]
    assert "host hosta · clock ±47.2 µs" in texts and "host hostb · clock ±44.2 µs" in texts
    assert any("±91.4 µs" in t for t in texts)

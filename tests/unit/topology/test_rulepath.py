"""`flowtrace rules`' way through the firewalls on a path, on recorded rules (pure)."""

from __future__ import annotations

from pathlib import Path

from flowtrace.model import Namespace
from flowtrace.topology.netfilter import Firewall, PacketView
from flowtrace.topology.netfilter.read import Outputs, firewall_from
from flowtrace.topology.rulepath import Segment, walk_path
from flowtrace.topology.rulesdoc import rules_document

FIREWALLS = Path(__file__).resolve().parents[2] / "data" / "firewalls"
HOST_NS = Namespace("/run/netns/ftfw-h", "ftfw-h", 2)
HOST_LOCAL = frozenset({"10.247.0.1", "10.247.1.1", "10.247.4.1", "198.51.100.233", "127.0.0.1"})
ADDRESSES = {"ftfw-up": ("198.51.100.233",), "ftfw-d0": ("10.247.0.1",), "ftfw-rt": ("10.247.4.1",)}
BRIDGES = {"ftfw-d0": ("10.247.0.1/24",), "ftfw-rt": ("10.247.4.1/24",)}


def _host(engine: str, in_iface: str, out_iface: str) -> Segment:
    text = (FIREWALLS / engine / "iptables-save.txt").read_text()
    firewall = firewall_from(
        Outputs(iptables=text, iptables_program="iptables-nft-save", nft_json="", nft_text="")
    )
    return Segment(
        HOST_NS, "forward", in_iface, out_iface, firewall, HOST_LOCAL, ADDRESSES, BRIDGES
    )


def _end(label: str, way: str, iface: str) -> Segment:
    ns = Namespace(f"/run/netns/{label}", label, hash(label) % 1000)
    if way == "output":
        return Segment(ns, way, None, iface, Firewall())
    return Segment(ns, way, iface, None, Firewall())


def test_a_published_port_there_and_back() -> None:
    segments = [
        _end("ftfw-out", "output", "eth0"),
        _host("docker-29.7-iptables", "ftfw-up", "ftfw-d0"),
        _end("ftfw-c1", "input", "eth0"),
    ]
    packet = PacketView(6, "198.51.100.234", "198.51.100.233", None, 8080)
    path = walk_path(segments, packet)
    assert path.request.outcome.outcome == "delivered" and path.request.outcome.certain
    host = path.request.crossings[1].passed
    (dnat,) = host.rewrites
    assert dnat.after == ("10.247.0.2", 80)
    assert path.reply is not None and path.reply.outcome.outcome == "delivered"
    back = path.reply.crossings[1].passed
    assert (back.packet.src, back.packet.sport) == ("198.51.100.233", 8080)  # conntrack undid it
    assert path.reply.crossings[-1].label == "ftfw-out"


def test_a_drop_ends_the_request_and_there_is_no_reply() -> None:
    segments = [
        _end("ftfw-c1", "output", "eth0"),
        _host("docker-29.7-iptables", "ftfw-d0", "ftfw-b1"),
        _end("ftfw-c3", "input", "eth0"),
    ]
    path = walk_path(segments, PacketView(1, "10.247.0.2", "10.247.1.2", icmp_type=8))
    outcome = path.request.outcome
    assert outcome.outcome == "dropped" and outcome.netns == "ftfw-h" and outcome.certain
    assert outcome.text == (
        "dropped in ftfw-h at prerouting by `-A PREROUTING -d 10.247.1.2/32 ! -i ftfw-b1 -j DROP`"
    )
    assert path.reply is None
    assert len(path.request.crossings) == 2


def test_routed_mode_leaves_unmasqueraded_and_says_the_reply_needs_a_route() -> None:
    segments = [
        _end("ftfw-c8", "output", "eth0"),
        _host("docker-29.7-iptables", "ftfw-rt", "ftfw-up"),
        _end("ftfw-out", "input", "eth0"),
    ]
    path = walk_path(segments, PacketView(1, "10.247.4.2", "198.51.100.234", icmp_type=8))
    assert path.request.outcome.outcome == "delivered"
    assert [n for n in path.notes if "no MASQUERADE rewrote 10.247.4.2" in n and "route back" in n]
    masqueraded = walk_path(
        [_end("ftfw-c1", "output", "eth0"), _host("docker-29.7-iptables", "ftfw-d0", "ftfw-up"),
         _end("ftfw-out", "input", "eth0")],
        PacketView(1, "10.247.0.2", "198.51.100.234", icmp_type=8),
    )  # fmt: skip
    assert masqueraded.notes == ()


def test_the_document_is_plain_data_with_each_hook_and_chain() -> None:
    segments = [
        _end("ftfw-c1", "output", "eth0"),
        _host("docker-28.5", "ftfw-d0", "ftfw-b1"),
        _end("ftfw-c3", "input", "eth0"),
    ]
    path = walk_path(segments, PacketView(1, "10.247.0.2", "10.247.1.2", icmp_type=8))
    doc = rules_document(path, src="netns:ftfw-c1", dst="netns:ftfw-c3", kind="icmp",
                         dst_ip="10.247.1.2", dst_port=None, points=["ftfw-c1/eth0"])  # fmt: skip
    assert doc["schema"] == 1 and doc["reply"] is None
    host = doc["request"]["namespaces"][1]
    assert (host["netns"], host["way"], host["backends"]) == ("ftfw-h", "forward", ["iptables-nft"])
    (prerouting,) = host["hooks"]
    raw = prerouting["chains"][0]
    assert (raw["table"], raw["name"], raw["priority"], raw["verdict"]) == (
        "raw",
        "PREROUTING",
        -300,
        "drop",
    )
    assert raw["steps"][-1] == {
        "rule": "-A PREROUTING -d 10.247.1.2/32 ! -i ftfw-b1 -j DROP",
        "text": "-A PREROUTING -d 10.247.1.2/32 ! -i ftfw-b1 -j DROP",
        "handle": None,
        "action": "DROP",
        "certain": True,
        "unknown": [],
        "depth": 0,
        "comment": None,
    }
    outcome = doc["request"]["outcome"]
    assert outcome["rule"] == "-A PREROUTING -d 10.247.1.2/32 ! -i ftfw-b1 -j DROP"
    assert outcome["explanation"].startswith("Docker (28.0 and later) drops packets")


def test_what_could_not_be_read_keeps_an_accept_from_being_certain() -> None:
    text = (FIREWALLS / "docker-29.7-iptables" / "iptables-save.txt").read_text()
    no_nft = firewall_from(Outputs(iptables=text, iptables_program="iptables-nft-save",
                                   missing=("nft",)))  # fmt: skip
    assert no_nft.unread == ("nftables",)
    host = Segment(HOST_NS, "forward", "ftfw-d0", "ftfw-up", no_nft, HOST_LOCAL, ADDRESSES, BRIDGES)
    path = walk_path(
        [_end("ftfw-c1", "output", "eth0"), host, _end("ftfw-out", "input", "eth0")],
        PacketView(1, "10.247.0.2", "198.51.100.234", icmp_type=8),
    )
    outcome = path.request.outcome
    assert outcome.outcome == "delivered" and not outcome.certain
    assert outcome.text.endswith("as far as flowtrace could read (ftfw-h's nftables not read)")

"""Every base chain at each hook, in priority order, on recorded firewalls.

mixed-docker-29.7-iptables-netavark-2: Docker 29.7's iptables rules (iptables-nft) and
netavark 2's `inet netavark` table in one host namespace, as Fedora hosts running both
engines have them.
"""

from __future__ import annotations

import json

from flowtrace.topology.netfilter import NEW, PacketView, parse_nft_json, traverse
from flowtrace.topology.netfilter.hooks import run_hook

from .conftest import recorded

MIXED = recorded("mixed-docker-29.7-iptables-netavark-2")
DOCKER29 = recorded("docker-29.7-iptables")
NETAVARK2 = recorded("netavark-2-nftables")
HOST = frozenset({"10.247.0.1", "10.247.1.1", "10.247.2.1", "198.51.100.233", "127.0.0.1"})


def test_base_chains_run_in_priority_order_whoever_registered_them() -> None:
    labels = [b.label for b in MIXED.base_chains("prerouting")]
    assert labels == [
        "raw PREROUTING (iptables-nft)",
        "nat PREROUTING (iptables-nft)",
        "table inet netavark chain PREROUTING",
    ]
    assert [b.priority for b in MIXED.base_chains("forward")] == [0, 0]
    assert MIXED.backends() == ["iptables-nft", "nftables"]


def test_an_accept_in_one_base_chain_does_not_end_the_packets_way() -> None:
    # A table of the administrator's accepts everything at priority -10; Docker's FORWARD
    # (iptables, priority 0) still runs after it and drops (ICC off on ftfw-b2).
    accept_all = {"nftables": [
        {"table": {"family": "inet", "name": "admin", "handle": 9}},
        {"chain": {"family": "inet", "table": "admin", "name": "fwd", "handle": 1,
                   "type": "filter", "hook": "forward", "prio": -10, "policy": "accept"}},
        {"rule": {"family": "inet", "table": "admin", "chain": "fwd", "handle": 2,
                  "expr": [{"accept": None}]}},
    ]}  # fmt: skip
    tables, _ = parse_nft_json(json.dumps(accept_all))
    firewall = DOCKER29.with_tables(tuple(tables))
    packet = PacketView(1, "10.247.2.2", "10.247.2.3", None, None, "ftfw-b2", "ftfw-b2", NEW, HOST)
    forward = traverse(firewall, packet, "forward").hook("forward")
    assert forward is not None and forward.verdict == "drop"
    admin, docker = forward.chains
    assert admin.walk is not None and admin.walk.verdict == "accept"
    assert docker.walk is not None and docker.walk.verdict == "drop"
    assert docker.walk.rule is not None
    assert docker.walk.rule.text == "-A DOCKER-FORWARD -i ftfw-b2 -o ftfw-b2 -j DROP"


def test_chains_of_equal_priority_are_said_to_be_in_an_order_the_rules_do_not_show() -> None:
    packet = PacketView(1, "10.247.2.2", "198.51.100.234", None, None, "ftfw-b2", "ftfw-up", NEW,
                        HOST)  # fmt: skip
    forward = traverse(MIXED, packet, "forward").hook("forward")
    assert forward is not None and forward.verdict == "accept"
    assert forward.notes and "share priority 0" in forward.notes[0]


def test_a_drop_ends_the_packet_at_its_hook() -> None:
    packet = PacketView(1, "10.247.0.2", "10.247.1.2", None, None, "ftfw-d0", "ftfw-b1", NEW, HOST)
    passed = traverse(MIXED, packet, "forward")
    assert [h.hook for h in passed.hooks] == ["prerouting"]
    dropped = passed.dropped_at
    assert dropped is not None and dropped.dropped_by is not None
    assert dropped.dropped_by.base.label == "raw PREROUTING (iptables-nft)"
    assert [c.base.table.name for c in dropped.chains] == ["raw"]  # nat never ran


def test_the_first_nat_binding_at_a_hook_skips_the_later_nat_chains() -> None:
    # Both engines publish 8080: Docker's iptables DNAT registered first makes the binding.
    packet = PacketView(
        6, "198.51.100.234", "198.51.100.233", 5555, 8080, "ftfw-up", None, NEW, HOST
    )
    visit, after = run_hook(MIXED, "prerouting", packet)
    (rewrite,) = visit.rewrites
    assert rewrite.rule is not None and rewrite.rule.chain == "DOCKER"
    assert (after.dst, after.dport) == ("10.247.0.2", 80)
    skipped = [c.skipped for c in visit.chains if c.skipped]
    assert skipped == ["an earlier nat chain made the binding"]


def test_nat_chains_see_only_a_connections_first_packet() -> None:
    packet = PacketView(6, "198.51.100.234", "198.51.100.233", 5555, 8080, "ftfw-up", None,
                        "ESTABLISHED", HOST)  # fmt: skip
    visit, after = run_hook(DOCKER29, "prerouting", packet)
    assert visit.rewrites == () and after.dst == "198.51.100.233"
    assert any(c.skipped == "nat chains see only a connection's first packet" for c in visit.chains)


def test_a_mark_set_in_prerouting_decides_postrouting() -> None:
    # netavark's hairpin: from its own network to the published port, SETMARK, then the
    # mark-matched masquerade in POSTROUTING.
    packet = PacketView(6, "10.247.0.3", "198.51.100.233", 40000, 8080, "ftfw-d0", "ftfw-d0", NEW,
                        HOST)  # fmt: skip
    passed = traverse(NETAVARK2, packet, "forward", lambda iface: ("10.247.0.1",))
    assert passed.packet.mark == 0x2000 and passed.packet.ctmark == 0x3000
    kinds = [(r.kind, r.rule.text if r.rule else None) for r in passed.rewrites]
    assert kinds == [
        ("DNAT", "tcp dport 8080 ct mark set meta mark | 0x00001000 dnat ip to 10.247.0.2:80"),
        ("SNAT", "meta mark & 0x00002000 == 0x00002000 masquerade"),
    ]
    assert passed.rewrites[1].after == ("10.247.0.1", 40000)


def test_without_the_mark_the_networks_own_masquerade_applies() -> None:
    packet = PacketView(1, "10.247.0.2", "198.51.100.234", None, None, "ftfw-d0", "ftfw-up", NEW,
                        HOST)  # fmt: skip
    passed = traverse(NETAVARK2, packet, "forward", lambda iface: ("198.51.100.233",))
    (snat,) = passed.rewrites
    assert snat.rule is not None and snat.rule.chain == "nv_2f259bab_10_247_0_0_nm24"
    assert passed.certain


def test_a_reply_is_unnatted_where_conntrack_does_it() -> None:
    request = PacketView(6, "198.51.100.234", "198.51.100.233", 5555, 8080, "ftfw-up", "ftfw-d0",
                         NEW, HOST)  # fmt: skip
    there = traverse(DOCKER29, request, "forward")
    reply = PacketView(6, "10.247.0.2", "198.51.100.234", 80, 5555, "ftfw-d0", "ftfw-up",
                       "ESTABLISHED", HOST)  # fmt: skip
    back = traverse(DOCKER29, reply, "forward", undo=there.rewrites)
    assert back.verdict == "accept"
    (undone,) = back.rewrites
    assert undone.rule is None and undone.hook == "postrouting"
    assert (back.packet.src, back.packet.sport) == ("198.51.100.233", 8080)
    forward = back.hook("forward")
    assert forward is not None and forward.packet.src == "10.247.0.2"  # filtered before


def test_a_firewall_lists_a_tables_rules_as_an_iptables_save_document_did() -> None:
    """read_ruleset's callers (and notebooks) ask for `.rules("nat")`."""
    from flowtrace.topology.netfilter.firewall import Firewall

    firewall = Firewall.from_iptables_save(
        "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth1 -j MASQUERADE\nCOMMIT\n"
    )
    assert [r.text for r in firewall.rules("nat")] == ["-A POSTROUTING -o eth1 -j MASQUERADE"]
    assert firewall.rules("filter") == [] and firewall.rules("nat", "ip6") == []

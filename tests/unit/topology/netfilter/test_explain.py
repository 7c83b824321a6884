"""NAT and drop attribution, on rulesets recorded from Docker 20.10 here and handwritten ones.

tests/data/iptables-save-docker-default.txt: `iptables-save` with only the default bridge.
tests/data/iptables-save-docker-published.txt: plus a user network (br-ad42cc5d303a,
10.231.7.0/24), a container publishing 8080->80/tcp (172.17.0.2) and one publishing
5353/udp (10.231.7.2).
"""

from __future__ import annotations

from pathlib import Path

from flowtrace.model import Address, NatEvent
from flowtrace.topology.netfilter.explain import (
    attribute,
    attribute_detail,
    explains,
    find_drop_rule,
)
from flowtrace.topology.netfilter.iptables_save import parse_iptables_save

DATA = Path(__file__).resolve().parents[3] / "data"
DEFAULT = parse_iptables_save((DATA / "iptables-save-docker-default.txt").read_text())
PUBLISHED = parse_iptables_save((DATA / "iptables-save-docker-published.txt").read_text())
USER_BRIDGE = "br-ad42cc5d303a"
HOST = {"198.51.100.1", "172.17.0.1", "10.231.7.1", "127.0.0.1"}  # the host's addresses

MASQUERADE_DEFAULT = "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
PUBLISH_8080 = (
    "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80"
)


def snat(before: Address, after: Address) -> NatEvent:
    return NatEvent("SNAT", ("host/docker0", "host/eth0"), before, after)


def dnat(before: Address, after: Address) -> NatEvent:
    return NatEvent("DNAT", ("host/eth0", "host/docker0"), before, after)


# --- NAT attribution ----------------------------------------------------------------------


def test_masquerade_of_a_container_going_out() -> None:
    event = snat(Address("172.17.0.2", 7), Address("198.51.100.1", 7))
    assert attribute(DEFAULT, event, "icmp", None, "eth0", HOST) == MASQUERADE_DEFAULT
    assert attribute(PUBLISHED, event, "icmp", None, "eth0", HOST) == MASQUERADE_DEFAULT


def test_masquerade_of_the_user_network() -> None:
    event = snat(Address("10.231.7.2", 40000), Address("198.51.100.1", 40000))
    assert attribute(PUBLISHED, event, "tcp", None, "eth0", HOST) == (
        f"-A POSTROUTING -s 10.231.7.0/24 ! -o {USER_BRIDGE} -j MASQUERADE"
    )


def test_masquerade_must_use_an_address_of_the_namespace() -> None:
    event = snat(Address("172.17.0.2", 7), Address("203.0.113.50", 7))
    assert attribute(DEFAULT, event, "icmp", None, "eth0", HOST) is None
    # Without the namespace's addresses the rule cannot be checked, and is taken.
    assert attribute(DEFAULT, event, "icmp", None, "eth0") == MASQUERADE_DEFAULT


def test_no_masquerade_between_containers_on_the_bridge() -> None:
    event = snat(Address("172.17.0.2", 7), Address("172.17.0.1", 7))
    assert attribute(DEFAULT, event, "icmp", None, "docker0", HOST) is None


def test_published_port_dnat_from_outside() -> None:
    event = dnat(Address("198.51.100.1", 8080), Address("172.17.0.2", 80))
    peer = Address("203.0.113.2", 5555)
    assert attribute(PUBLISHED, event, "tcp", "eth0", None, HOST, peer=peer) == PUBLISH_8080
    # The udp rule of the user network explains nothing here; the wrong port neither.
    assert attribute(PUBLISHED, event, "udp", "eth0", None, HOST, peer=peer) is None
    wrong_port = dnat(Address("198.51.100.1", 8081), Address("172.17.0.2", 80))
    assert attribute(PUBLISHED, wrong_port, "tcp", "eth0", None, HOST, peer=peer) is None


def test_published_port_dnat_for_a_locally_generated_packet_uses_output() -> None:
    event = dnat(Address("198.51.100.1", 8080), Address("172.17.0.2", 80))
    assert attribute(PUBLISHED, event, "tcp", None, "docker0", HOST) == PUBLISH_8080
    loopback = dnat(Address("127.0.0.1", 8080), Address("172.17.0.2", 80))
    assert attribute(PUBLISHED, loopback, "tcp", None, "lo", HOST) is None  # ! -d 127.0.0.0/8


def test_return_from_docker0_hides_the_publishing_rule() -> None:
    event = dnat(Address("172.17.0.1", 8080), Address("172.17.0.2", 80))
    assert attribute(PUBLISHED, event, "tcp", "docker0", None, HOST) is None


def test_dst_type_local_needs_a_local_destination() -> None:
    event = dnat(Address("203.0.113.77", 8080), Address("172.17.0.2", 80))
    assert attribute(PUBLISHED, event, "tcp", "eth0", None, HOST) is None
    # With the addresses unknown it may be local: the rule is still the best answer.
    assert attribute(PUBLISHED, event, "tcp", "eth0", None) == PUBLISH_8080


def test_hairpin_masquerade_rule_of_a_published_port() -> None:
    event = NatEvent(
        "SNAT",
        ("host/docker0", "host/veth"),
        Address("172.17.0.2", 41000),
        Address("172.17.0.1", 41000),
    )
    rule = attribute(PUBLISHED, event, "tcp", None, "docker0", HOST, peer=Address("172.17.0.2", 80))
    assert rule == (
        "-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE"
    )


HANDWRITTEN = parse_iptables_save("""
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:LB - [0:0]
:SKIP - [0:0]
-A PREROUTING -p tcp -m mark --mark 0x9 -j RETURN
-A PREROUTING -p tcp --dport 80 -g LB
-A PREROUTING -p tcp --dport 80 -j DNAT --to-destination 10.0.0.80
-A PREROUTING -p tcp --dport 81 -j ACCEPT
-A PREROUTING -p tcp --dport 81 -j DNAT --to-destination 10.0.0.81
-A PREROUTING -p tcp --dport 82 -j REDIRECT --to-ports 3128
-A PREROUTING -d 203.0.113.0/24 -j NETMAP --to 10.9.0.0/24
-A LB -s 203.0.113.0/24 -j SKIP
-A LB -p tcp -j DNAT --to-destination 10.0.0.5-10.0.0.7:8000-8010
-A SKIP -j RETURN
-A POSTROUTING -o eth1 -p udp -j SNAT --to-source 198.51.100.20-198.51.100.29:1024-2047
-A POSTROUTING -o eth1 -j SNAT --to-source 198.51.100.9
-A POSTROUTING -o eth2 -j MASQUERADE --to-ports 30000-31000
COMMIT
""")


def test_a_maybe_match_does_not_hide_later_rules_but_can_be_the_answer() -> None:
    # `-m mark` cannot be evaluated: its RETURN must not stop the walk.
    event = dnat(Address("198.51.100.1", 80), Address("10.0.0.6", 8005))
    rule = attribute(HANDWRITTEN, event, "tcp", "eth0", None, peer=Address("192.168.1.9", 999))
    assert rule == "-A LB -p tcp -j DNAT --to-destination 10.0.0.5-10.0.0.7:8000-8010"


def test_ranges_in_dnat_and_snat_targets() -> None:
    outside = dnat(Address("198.51.100.1", 80), Address("10.0.0.8", 8005))
    assert attribute(HANDWRITTEN, outside, "tcp", "eth0", None) is None  # 10.0.0.8 not in range
    udp = snat(Address("10.0.0.3", 5000), Address("198.51.100.25", 1500))
    assert attribute(HANDWRITTEN, udp, "udp", None, "eth1") == (
        "-A POSTROUTING -o eth1 -p udp -j SNAT --to-source 198.51.100.20-198.51.100.29:1024-2047"
    )
    tcp = snat(Address("10.0.0.3", 5000), Address("198.51.100.9", 5000))
    assert attribute(HANDWRITTEN, tcp, "tcp", None, "eth1") == (
        "-A POSTROUTING -o eth1 -j SNAT --to-source 198.51.100.9"
    )


def test_accept_in_the_nat_table_ends_the_walk() -> None:
    event = dnat(Address("198.51.100.1", 81), Address("10.0.0.81", 81))
    assert attribute(HANDWRITTEN, event, "tcp", "eth0", None) is None


def test_goto_chain_returns_to_the_callers_caller() -> None:
    # From 203.0.113.0/24, LB jumps to SKIP, which returns; LB carries on to its DNAT.
    event = dnat(Address("198.51.100.1", 80), Address("10.0.0.5", 8000))
    peer = Address("203.0.113.4", 1234)
    assert attribute(HANDWRITTEN, event, "tcp", "eth0", None, peer=peer) == (
        "-A LB -p tcp -j DNAT --to-destination 10.0.0.5-10.0.0.7:8000-8010"
    )
    # When LB (reached by -g) ends, PREROUTING does not go on: its next DNAT never runs.
    unreachable = dnat(Address("198.51.100.1", 80), Address("10.0.0.80", 80))
    assert attribute(HANDWRITTEN, unreachable, "tcp", "eth0", None, peer=peer) is None


def test_redirect_netmap_and_masquerade_port_ranges() -> None:
    redirect = dnat(Address("203.0.113.9", 82), Address("198.51.100.1", 3128))
    assert attribute(HANDWRITTEN, redirect, "tcp", "eth0", None, HOST) == (
        "-A PREROUTING -p tcp --dport 82 -j REDIRECT --to-ports 3128"
    )
    netmap = dnat(Address("203.0.113.17", None), Address("10.9.0.17", None))
    assert attribute(HANDWRITTEN, netmap, "icmp", "eth0", None) == (
        "-A PREROUTING -d 203.0.113.0/24 -j NETMAP --to 10.9.0.0/24"
    )
    masquerade = snat(Address("10.0.0.3", 5000), Address("198.51.100.1", 30500))
    assert attribute(HANDWRITTEN, masquerade, "tcp", None, "eth2", HOST) is not None
    off_range = snat(Address("10.0.0.3", 5000), Address("198.51.100.1", 5000))
    assert attribute(HANDWRITTEN, off_range, "tcp", None, "eth2", HOST) is None


def test_explains_compares_kinds_and_values() -> None:
    (rule,) = [r for r in PUBLISHED.rules("nat") if r.text == PUBLISH_8080]
    good = dnat(Address("198.51.100.1", 8080), Address("172.17.0.2", 80))
    assert explains(rule, good)
    assert not explains(rule, snat(good.before, good.after))
    assert not explains(rule, dnat(good.before, Address("172.17.0.2", 81)))


# --- drop attribution ---------------------------------------------------------------------


def test_isolation_between_two_docker_networks_drops() -> None:
    rule = find_drop_rule(
        PUBLISHED, "tcp", "10.231.7.2", "172.17.0.2", 40000, 80, USER_BRIDGE, "docker0"
    )
    assert rule == "-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP"


def test_unpublished_port_from_outside_falls_to_the_forward_policy() -> None:
    rule = find_drop_rule(
        PUBLISHED, "tcp", "203.0.113.2", "172.17.0.2", 5555, 81, "eth0", "docker0"
    )
    assert rule == "-P FORWARD DROP"
    published = find_drop_rule(
        PUBLISHED, "tcp", "203.0.113.2", "172.17.0.2", 5555, 80, "eth0", "docker0"
    )
    assert published is None
    answer = find_drop_rule(
        PUBLISHED,
        "tcp",
        "203.0.113.2",
        "172.17.0.2",
        5555,
        81,
        "eth0",
        "docker0",
        ctstate="ESTABLISHED",
    )
    assert answer is None


def test_input_and_output_chains_and_reject() -> None:
    ruleset = parse_iptables_save(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A INPUT -p tcp --dport 22 -j REJECT --reject-with tcp-reset\n"
        "-A OUTPUT -d 203.0.113.0/24 -j DROP\nCOMMIT\n"
    )
    assert find_drop_rule(ruleset, "tcp", "203.0.113.2", "198.51.100.1", 1, 22, "eth0", None) == (
        "-A INPUT -p tcp --dport 22 -j REJECT --reject-with tcp-reset"
    )
    assert find_drop_rule(ruleset, "udp", "198.51.100.1", "203.0.113.2", 1, 53, None, "eth0") == (
        "-A OUTPUT -d 203.0.113.0/24 -j DROP"
    )
    assert (
        find_drop_rule(ruleset, "tcp", "203.0.113.2", "198.51.100.1", 1, 23, "eth0", None) is None
    )


# --- NAT66 and IPv6 drops (ip6tables) -------------------------------------------------------

#: Recorded with Docker 20.10's "ip6tables": see test_iptables_save.py.
IPV6 = parse_iptables_save((DATA / "ip6tables-save-docker-ipv6.txt").read_text(), family="ip6")
BRIDGE6 = "br-b251832aced5"
HOST6 = {"2001:db8:f6::1", "fd6c:6162:3600::1", "::1"}
MASQUERADE6 = f"-A POSTROUTING -s fd6c:6162:3600::/64 ! -o {BRIDGE6} -j MASQUERADE"
DNAT6 = (
    f"-A DOCKER ! -i {BRIDGE6} -p tcp -m tcp --dport 8086 -j DNAT "
    "--to-destination [fd6c:6162:3600::2]:80"
)


def test_nat66_masquerade_of_a_container_going_out() -> None:
    event = snat(Address("fd6c:6162:3600::2", 7), Address("2001:db8:f6::1", 7))
    out = Address("2001:db8:f6::2")
    assert attribute(IPV6, event, "icmp6", None, "ft6-uplink", HOST6, peer=out) == MASQUERADE6
    # to an address of another network, the masquerade must take one of the host's
    elsewhere = snat(Address("fd6c:6162:3600::2", 7), Address("2001:db8:99::1", 7))
    assert attribute(IPV6, elsewhere, "icmp6", None, "ft6-uplink", HOST6, peer=out) is None


def test_ipv6_dnat_of_a_port_published_on_all_ipv6_addresses() -> None:
    event = dnat(Address("2001:db8:f6::1", 8086), Address("fd6c:6162:3600::2", 80))
    peer = Address("2001:db8:f6::2", 40000)
    assert attribute(IPV6, event, "tcp", "ft6-uplink", None, HOST6, peer=peer) == DNAT6
    wrong_port = dnat(Address("2001:db8:f6::1", 8086), Address("fd6c:6162:3600::2", 81))
    assert attribute(IPV6, wrong_port, "tcp", "ft6-uplink", None, HOST6, peer=peer) is None
    # from the host itself, nat OUTPUT leaves ::1 out (docker-proxy takes it)
    loopback = dnat(Address("::1", 8086), Address("fd6c:6162:3600::2", 80))
    assert attribute(IPV6, loopback, "tcp", None, None, HOST6, peer=Address("::1")) is None
    assert explains(IPV6.nat.chains["DOCKER"].rules[1], event)


def test_ipv6_isolation_and_forward_policy_drop() -> None:
    isolated = find_drop_rule(
        IPV6, "icmp6", "fd00:17::2", "fd6c:6162:3600::2", None, None, "docker0", BRIDGE6, HOST6
    )
    assert isolated == f"-A DOCKER-ISOLATION-STAGE-2 -o {BRIDGE6} -j DROP"
    unpublished = find_drop_rule(
        IPV6, "tcp", "2001:db8:f6::2", "fd6c:6162:3600::2", 40000, 81, "ft6-uplink", BRIDGE6, HOST6
    )
    assert unpublished == "-P FORWARD DROP"


def test_a_firewall_dropping_neighbour_solicitations_is_found_on_input() -> None:
    container = parse_iptables_save(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j DROP\nCOMMIT\n",
        family="ip6",
    )
    rule = find_drop_rule(
        container, 58, "fd6c:6162:3600::2", "ff02::1:ff00:3", None, None, "eth0", None,
        ["fd6c:6162:3600::3"],
    )  # fmt: skip
    assert rule == "-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j DROP"
    tcp_only = parse_iptables_save(
        "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -j DROP\nCOMMIT\n", family="ip6"
    )
    assert (
        find_drop_rule(tcp_only, 58, "fd6c:6162:3600::2", "ff02::1:ff00:3", in_iface="eth0") is None
    )


# --- Docker and Podman on one host (recorded here with Podman 4.3 / netavark 1.4) --------

PODMAN_AND_DOCKER = parse_iptables_save(
    (
        DATA / "firewalls" / "podman-4.3-netavark-1.4" / "host-with-docker-20.10.iptables-save"
    ).read_text()
)


def test_a_mark_match_nothing_set_is_decided_not_guessed() -> None:
    # POSTROUTING jumps to NETAVARK-HOSTPORT-MASQ before Docker's MASQUERADE; its
    # `-m mark --mark 0x2000/0x2000` cannot match a probe no rule marked.
    event = snat(Address("172.17.0.2", 7), Address("203.0.113.1", 7))
    found = attribute_detail(
        PODMAN_AND_DOCKER, event, "icmp", "docker0", "ft-uplink", HOST | {"203.0.113.1"}
    )
    assert found is not None
    assert found.rule == "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    assert found.doubt is None


def test_netavarks_mark_set_on_the_way_in_decides_its_masquerade() -> None:
    # From Podman's own network to its published port on the host: prerouting's
    # NETAVARK-DN chain jumps to SETMARK, and POSTROUTING's mark rule masquerades it.
    event = snat(Address("10.88.0.7", 41000), Address("10.88.0.1", 41000))
    found = attribute_detail(
        PODMAN_AND_DOCKER, event, "tcp", "podman0", "podman0", {"10.88.0.1", "127.0.0.1"},
        peer=Address("10.88.0.4", 80), before_dnat=Address("10.88.0.1", 8089),
    )  # fmt: skip
    assert found is not None and found.doubt is None
    assert found.rule == (
        '-A NETAVARK-HOSTPORT-MASQ -m comment --comment "netavark portfw masq mark" '
        "-m mark --mark 0x2000/0x2000 -j MASQUERADE"
    )


def test_a_match_that_truly_cannot_be_evaluated_is_said_to_be_a_maybe() -> None:
    ruleset = parse_iptables_save(
        "*nat\n:POSTROUTING ACCEPT [0:0]\n"
        "-A POSTROUTING -m set --match-set vips src -j SNAT --to-source 198.51.100.9\n"
        "-A POSTROUTING -o eth1 -j SNAT --to-source 198.51.100.9\nCOMMIT\n"
    )
    event = snat(Address("10.0.0.3", 5000), Address("198.51.100.9", 5000))
    found = attribute_detail(ruleset, event, "tcp", None, "eth1")
    assert found is not None
    assert (
        found.rule == "-A POSTROUTING -m set --match-set vips src -j SNAT --to-source 198.51.100.9"
    )
    assert found.doubt == "maybe: flowtrace cannot evaluate `-m set --match-set vips src`"


# --- netavark (Podman 4.3.1) next to Docker 20.10 ---------------------------------------------

NETAVARK = parse_iptables_save((DATA / "iptables-save-netavark-with-docker.txt").read_text())
PODMAN_HOST = {"10.88.0.1", "10.89.0.1", "172.17.0.1", "203.0.113.1", "127.0.0.1"}


def test_netavark_masquerade_of_a_container_going_out_is_its_networks_chain() -> None:
    """Not the portfw MASQUERADE on mark 0x2000 before it: the packet carries no mark."""
    ev = NatEvent(
        "SNAT", ("host/podman0", "host/ft-uplink"), Address("10.88.0.2"), Address("203.0.113.1")
    )
    rule = attribute(
        NETAVARK, ev, "icmp", "podman0", "ft-uplink", PODMAN_HOST, peer=Address("203.0.113.2")
    )
    assert rule == "-A NETAVARK-1D8721804F16F ! -d 224.0.0.0/4 -j MASQUERADE"


def test_netavark_published_port_dnat_and_its_hairpin_masquerade() -> None:
    dn = NatEvent(
        "DNAT",
        ("host/podman0", "host/podman0"),
        Address("10.88.0.1", 8089),
        Address("10.88.0.4", 80),
    )
    peer = Address("10.88.0.2", 40000)
    assert (
        attribute(NETAVARK, dn, "tcp", "podman0", None, PODMAN_HOST, peer=peer)
        == "-A NETAVARK-DN-1D8721804F16F -p tcp -m tcp --dport 8089 -j DNAT "
        "--to-destination 10.88.0.4:80"
    )
    masq = NatEvent(
        "SNAT", ("host/podman0", "host/podman0"), Address("10.88.0.2", 40000), Address("10.88.0.1")
    )
    rule = attribute(
        NETAVARK, masq, "tcp", "podman0", "podman0", PODMAN_HOST, peer=Address("10.88.0.1", 8089)
    )
    assert rule == (
        '-A NETAVARK-HOSTPORT-MASQ -m comment --comment "netavark portfw masq mark" '
        "-m mark --mark 0x2000/0x2000 -j MASQUERADE"
    )


def test_docker_forward_policy_drops_the_outside_to_a_podman_published_port() -> None:
    """Docker's FORWARD policy DROP; NETAVARK_FORWARD accepts only from its subnets or
    established connections: a new connection from outside falls to the policy."""
    rule = find_drop_rule(
        NETAVARK, "tcp", "203.0.113.2", "10.88.0.4", 40000, 80, "ft-uplink", "podman0", PODMAN_HOST
    )
    assert rule == "-P FORWARD DROP"


def test_the_hosts_own_connection_to_its_published_port_is_dnatted_in_output() -> None:
    """No interface known either way (the host's socket to its own address): the DNAT
    is output's, which a packet of the namespace's own meets."""
    dn = NatEvent(
        "DNAT", ("host/lo", "host/podman0"), Address("203.0.113.1", 8089), Address("10.88.0.4", 80)
    )
    peer = Address("203.0.113.1", 40000)
    assert attribute(NETAVARK, dn, "tcp", None, None, PODMAN_HOST, peer=peer) == (
        "-A NETAVARK-DN-1D8721804F16F -p tcp -m tcp --dport 8089 -j DNAT "
        "--to-destination 10.88.0.4:80"
    )

"""The outside host's pure parts: the host's use of an address range, and the addresses
it talks to (hosts entries, name servers, open connections) that a lab range must spare."""

from __future__ import annotations

from flowtrace.endpoints.files import hosts_entries, resolv_nameservers
from flowtrace.endpoints.sockets import parse_proc_net, remote_peers
from flowtrace.lab.outside import destinations_inside, known_destinations, overlapping_use


def test_address_clash_ignores_default_route_and_own_link() -> None:
    addresses = [("192.0.2.2", 24, "eth0"), ("203.0.113.1", 24, "ft-uplink")]
    routes = [
        ("0.0.0.0", 0, "eth0"),
        ("192.0.2.0", 24, "eth0"),
        ("203.0.113.0", 24, "ft-uplink"),
        ("198.51.100.0", 24, "veth9"),
    ]
    assert overlapping_use("203.0.113.0/24", addresses, routes, "ft-uplink") == []


def test_address_clash_reports_other_links() -> None:
    addresses = [("203.0.113.9", 32, "tun0")]
    routes = [("203.0.113.128", 25, "wg0"), ("203.0.0.0", 16, "eth1")]
    assert overlapping_use("203.0.113.0/24", addresses, routes, "ft-uplink") == [
        "address 203.0.113.9/32 on tun0",
        "route 203.0.113.128/25 via wg0",
        "route 203.0.0.0/16 via eth1",
    ]


HOSTS = """\
127.0.0.1 localhost
# 203.0.113.5 commented-out
203.0.113.80    deb.debian.org
203.0.113.80    pypi.org  # the mirror
::1 ip6-localhost
"""

RESOLV = "search example\nnameserver 10.255.255.53\noptions ndots:1\nnameserver 203.0.113.9\n"

# /proc/net/tcp: a listener (remote 0.0.0.0) and a connection to 203.0.113.80:443.
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1
   1: 0200000A:D3C2 507100CB:01BB 01 00000000:00000000 02:000A7B1C 00000000     0        0 31338 2
"""
#: A socket to the lab's own uplink in TIME_WAIT, left from an earlier lab.
PROC_NET_TCP_LAB_LEFTOVER = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 027100CB:A1B2 017100CB:1F90 06 00000000:00000000 03:00000F9E 00000000     0        0 0 3
"""


def test_hosts_resolv_and_sockets_are_read() -> None:
    assert [(ip, names[0]) for ip, names in hosts_entries(HOSTS)] == [
        ("127.0.0.1", "localhost"),
        ("203.0.113.80", "deb.debian.org"),
        ("203.0.113.80", "pypi.org"),
        ("::1", "ip6-localhost"),
    ]
    assert list(resolv_nameservers(RESOLV)) == ["10.255.255.53", "203.0.113.9"]
    assert remote_peers(parse_proc_net(PROC_NET_TCP)) == ["203.0.113.80"]


def test_a_mirror_inside_the_outside_network_is_a_clash() -> None:
    destinations = [(ip, f"{names[0]} in /etc/hosts") for ip, names in hosts_entries(HOSTS)]
    destinations += [(ip, "a name server") for ip in resolv_nameservers(RESOLV)]
    assert destinations_inside("203.0.113.0/24", destinations) == [
        "203.0.113.80 (deb.debian.org in /etc/hosts)",
        "203.0.113.80 (pypi.org in /etc/hosts)",
        "203.0.113.9 (a name server)",
    ]
    assert destinations_inside("203.0.113.0/28", destinations) == ["203.0.113.9 (a name server)"]
    assert destinations_inside("198.51.100.0/24", [("fe80::1%eth0", "x"), ("bad", "y")]) == []


def test_the_hosts_destinations_leave_out_the_labs_own_sockets() -> None:
    """A TIME_WAIT socket to the uplink, left by an earlier lab, is no reason to refuse."""
    assert known_destinations(
        HOSTS, RESOLV, {"tcp": PROC_NET_TCP, "udp": PROC_NET_TCP_LAB_LEFTOVER}
    ) == [
        ("127.0.0.1", "localhost in /etc/hosts"),
        ("203.0.113.80", "deb.debian.org in /etc/hosts"),
        ("203.0.113.80", "pypi.org in /etc/hosts"),
        ("::1", "ip6-localhost in /etc/hosts"),
        ("10.255.255.53", "a name server in /etc/resolv.conf"),
        ("203.0.113.9", "a name server in /etc/resolv.conf"),
        ("203.0.113.80", "an open TCP connection"),
    ]
    assert remote_peers(parse_proc_net(PROC_NET_TCP_LAB_LEFTOVER)) == ["203.0.113.1"]

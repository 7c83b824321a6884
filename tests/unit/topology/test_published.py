"""Published ports: which binding takes an address, /proc/net/tcp, docker-proxy command lines."""
# ruff: noqa: E501 - /proc/net/tcp lines and docker-proxy command lines are recorded as they are

from __future__ import annotations

from pathlib import Path

import pytest

from flowtrace.endpoints.sockets import SocketEntry, parse_proc_net
from flowtrace.topology.netfilter import parse_iptables_save
from flowtrace.topology.published import (
    ProxyCommand,
    binding_serves,
    listener_for,
    output_dnat_applies,
    parse_proxy_cmdline,
    predict_dnat,
)

# Recorded on the lab machine (`-p 8080:80`, `-p 127.0.0.1::80`, one connection through
# the proxy to 172.17.0.4:80, and the IPv6 twin of the 8080 listener).
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 61234 1 0000000000000000 100 0 0 10 0
   1: 0100007F:8001 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 61301 1 0000000000000000 100 0 0 10 0
   2: 017100CB:270F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 61377 1 0000000000000000 100 0 0 10 0
   3: 010011AC:B5A2 040011AC:0050 01 00000000:00000000 00:00000000 00000000     0        0 70001 1 0000000000000000 20 4 30 10 -1
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 61240 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F91 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 61241 1 0000000000000000 100 0 0 10 0
"""


def test_docker_proxies_sockets_as_proc_net_tcp_lists_them() -> None:
    sockets = parse_proc_net(PROC_NET_TCP)
    assert sockets[0] == SocketEntry("0.0.0.0", 8080, "0.0.0.0", 0, 0x0A, 61234)
    assert (sockets[1].local_ip, sockets[1].local_port) == ("127.0.0.1", 32769)
    assert (sockets[2].local_ip, sockets[2].local_port) == ("203.0.113.1", 9999)
    connection = sockets[3]  # the proxy's own connection to the container
    assert (connection.local_ip, connection.local_port) == ("172.17.0.1", 46498)
    assert (connection.remote_ip, connection.remote_port) == ("172.17.0.4", 80)
    six = parse_proc_net(PROC_NET_TCP6)
    assert [(s.local_ip, s.local_port) for s in six] == [("::", 8080), ("::1", 8081)]


def test_the_listener_for_an_address_exact_before_wildcard() -> None:
    sockets = parse_proc_net(PROC_NET_TCP)
    assert listener_for(sockets, "127.0.0.1", 8080) == sockets[0]  # 0.0.0.0 takes it
    assert listener_for(sockets, "127.0.0.1", 32769) == sockets[1]
    assert listener_for(sockets, "203.0.113.1", 32769) is None  # bound to 127.0.0.1 only
    assert listener_for(sockets, "203.0.113.1", 9999) == sockets[2]
    assert listener_for(sockets, "127.0.0.1", 9999) is None
    assert listener_for(sockets, "172.17.0.1", 46498) is None  # a connection, not a listener
    both = [
        SocketEntry("0.0.0.0", 80, "0.0.0.0", 0, 0x0A, 1),
        SocketEntry("127.0.0.1", 80, "", 0, 10, 2),
    ]
    assert listener_for(both, "127.0.0.1", 80) == both[1]
    v6_only = parse_proc_net(PROC_NET_TCP6)  # docker-proxy's [::] listeners are IPv6-only
    assert listener_for(v6_only, "127.0.0.1", 8080) is None


@pytest.mark.parametrize(
    ("host_ip", "dst", "serves"),
    [
        ("0.0.0.0", "203.0.113.1", True),
        ("", "127.0.0.1", True),
        ("::", "203.0.113.1", False),  # the IPv6 twin: Docker 20.10 may give it another port
        ("127.0.0.1", "203.0.113.1", False),
        ("127.0.0.1", "127.0.0.1", True),
        ("203.0.113.1", "203.0.113.1", True),
        ("203.0.113.1", "172.17.0.1", False),
        ("::", "::1", True),
        ("not-an-ip", "127.0.0.1", False),
    ],
)
def test_which_binding_takes_an_address(host_ip: str, dst: str, serves: bool) -> None:
    assert binding_serves(host_ip, dst) is serves


def test_the_output_dnat_leaves_loopback_out() -> None:
    assert not output_dnat_applies("127.0.0.1") and not output_dnat_applies("127.0.0.53")
    assert output_dnat_applies("203.0.113.1") and output_dnat_applies("172.17.0.1")


def test_docker_proxy_command_lines() -> None:
    argv = "/usr/sbin/docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080 -container-ip 172.17.0.4 -container-port 80"
    assert parse_proxy_cmdline(argv.split()) == ProxyCommand(
        "tcp", "0.0.0.0", 8080, "172.17.0.4", 80
    )
    equals = [
        "docker-proxy",
        "-proto=tcp",
        "-host-ip=::",
        "-host-port=1",
        "-container-ip=fd00::2",
        "-container-port=2",
    ]
    assert parse_proxy_cmdline(equals) == ProxyCommand("tcp", "::", 1, "fd00::2", 2)
    assert parse_proxy_cmdline(["/usr/sbin/sshd", "-D"]) is None
    assert parse_proxy_cmdline([]) is None
    assert parse_proxy_cmdline(argv.split()[:-2]) is None  # no container port
    assert parse_proxy_cmdline(["docker-proxy", "-host-port", "x", "-proto", "tcp"]) is None


# The nat table with the base lab and the ports scenario up (recorded on the lab machine).
PORTS_RULES = parse_iptables_save(
    (Path(__file__).parents[2] / "data" / "iptables-save-docker-ports.txt").read_text()
)
HOST = frozenset({"127.0.0.1", "172.17.0.1", "172.18.0.1", "203.0.113.1"})
WEB = (
    "172.17.0.4",
    80,
    "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.4:80",
)


@pytest.mark.parametrize(
    ("dst", "port", "in_iface", "expected"),
    [
        ("203.0.113.1", 8080, "ft-uplink", WEB),  # from the outside host: PREROUTING
        ("203.0.113.1", 8080, None, WEB),  # from the host itself: OUTPUT
        ("172.17.0.1", 8080, None, WEB),
        ("127.0.0.1", 8080, None, None),  # OUTPUT jumps to DOCKER only for ! -d 127.0.0.0/8
        ("172.17.0.1", 8080, "docker0", None),  # -A DOCKER -i docker0 -j RETURN
        ("203.0.113.1", 32769, "ft-uplink", None),  # -p 127.0.0.1::80: -d 127.0.0.1/32
        ("172.17.0.1", 9999, None, None),  # -p 203.0.113.1:9999:80: -d 203.0.113.1/32
        (
            "203.0.113.1",
            9999,
            "ft-uplink",
            (
                "172.17.0.7",
                80,
                "-A DOCKER -d 203.0.113.1/32 ! -i docker0 -p tcp -m tcp --dport 9999 -j DNAT --to-destination 172.17.0.7:80",
            ),
        ),
        ("203.0.113.1", 1234, "ft-uplink", None),  # published by nobody
    ],
)
def test_the_dnat_the_kernel_gives_a_published_port(
    dst: str, port: int, in_iface: str | None, expected: tuple[str, int, str] | None
) -> None:
    assert predict_dnat(PORTS_RULES, "tcp", dst, port, in_iface, HOST) == expected


def test_a_dnat_without_a_port_keeps_the_packets() -> None:
    rules = parse_iptables_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
        "-A PREROUTING -i eth0 -p tcp -m tcp --dport 81 -j DNAT --to-destination 10.0.0.9\n"
        "-A PREROUTING -i eth0 -p tcp -m tcp --dport 82 -j DNAT --to-destination 10.0.0.8:90-99\n"
        "COMMIT\n"
    )
    assert predict_dnat(rules, "tcp", "10.0.0.1", 81, "eth0", frozenset())[:2] == ("10.0.0.9", 81)  # type: ignore[index]
    assert predict_dnat(rules, "tcp", "10.0.0.1", 82, "eth0", frozenset())[:2] == ("10.0.0.8", 90)  # type: ignore[index]
    assert predict_dnat(rules, "tcp", "10.0.0.1", 81, "eth1", frozenset()) is None


# --- IPv6: ports published on [::] and their ip6tables DNAT --------------------------------------

IPV6_RULES = parse_iptables_save(
    (Path(__file__).resolve().parents[2] / "data" / "ip6tables-save-docker-ipv6.txt").read_text(),
    family="ip6",
)
HOST6 = frozenset({"2001:db8:f6::1", "fd6c:6162:3600::1", "::1"})


def test_an_ipv6_dnat_is_predicted_from_ip6tables_as_the_kernel_walks_it() -> None:
    outside = predict_dnat(IPV6_RULES, "tcp", "2001:db8:f6::1", 8086, "ft6-uplink", HOST6)
    assert outside is not None and outside[:2] == ("fd6c:6162:3600::2", 80)
    # the host's own connection to a global address: OUTPUT jumps to DOCKER
    host = predict_dnat(IPV6_RULES, "tcp", "2001:db8:f6::1", 8086, None, HOST6)
    assert host is not None and host[0] == "fd6c:6162:3600::2"
    # ... but not to ::1 (docker-proxy listens on [::]), nor from the network's own bridge
    assert predict_dnat(IPV6_RULES, "tcp", "::1", 8086, None, HOST6) is None
    assert (
        predict_dnat(IPV6_RULES, "tcp", "fd6c:6162:3600::1", 8086, "br-b251832aced5", HOST6) is None
    )
    assert outside[2] == (
        "-A DOCKER ! -i br-b251832aced5 -p tcp -m tcp --dport 8086 -j DNAT "
        "--to-destination [fd6c:6162:3600::2]:80"
    )


def test_a_binding_serves_its_own_family_only() -> None:
    assert binding_serves("::", "2001:db8:f6::1") and binding_serves("::", "::1")
    assert not binding_serves("0.0.0.0", "2001:db8:f6::1")
    assert not binding_serves("::", "203.0.113.1")
    sockets = parse_proc_net(PROC_NET_TCP6)
    found = listener_for(sockets, "2001:db8:f6::1", 8080)
    assert found is not None and found.local_ip == "::"
    assert listener_for(sockets, "::1", 8081) is not None  # bound to ::1 itself

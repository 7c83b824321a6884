"""endpoints.sockets: /proc/net tables, as a container's namespace prints them.

The tables are as a c3 container on a user-defined network printed them (Docker's
embedded DNS listening on 127.0.0.11:39391/udp and :33371/tcp inside the container).
"""

from __future__ import annotations

from flowtrace.endpoints.sockets import TCP_LISTEN, bound_socket, parse_proc_net, remote_peers

PROC_NET_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1833: 0B00007F:99DF 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 324022 2 00000000086d5619 0
"""  # noqa: E501
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0B00007F:825B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 324023 1 00000000c47ef81f 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 20 4 30 10 -1
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 556 1 0000000000000000 100 0 0 10 0
"""  # noqa: E501
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 100 0 0 10 0
"""  # noqa: E501


def test_proc_net_rows_decode_addresses_ports_and_inodes() -> None:
    (udp,) = parse_proc_net(PROC_NET_UDP)
    assert (udp.local_ip, udp.local_port, udp.inode) == ("127.0.0.11", 39391, 324022)
    assert (udp.remote_ip, udp.remote_port) == ("0.0.0.0", 0)
    listen, established, wildcard = parse_proc_net(PROC_NET_TCP)
    assert (listen.local_ip, listen.local_port, listen.state) == ("127.0.0.11", 33371, TCP_LISTEN)
    assert (established.remote_ip, established.remote_port) == ("127.0.0.1", 54000)
    assert wildcard.local_ip == "0.0.0.0" and wildcard.local_port == 8080


def test_proc_net_ipv6_rows() -> None:
    any6, loop6 = parse_proc_net(PROC_NET_TCP6)
    assert (any6.local_ip, any6.local_port) == ("::", 8080)
    assert (loop6.local_ip, loop6.local_port, loop6.inode) == ("::1", 53, 778)


def test_header_only_or_short_rows_give_nothing() -> None:
    assert parse_proc_net(PROC_NET_UDP.splitlines()[0]) == []
    assert parse_proc_net("header\n 0: 0100007F:0035\n") == []


def test_bound_socket_prefers_the_exact_address_and_a_listener() -> None:
    tcp = parse_proc_net(PROC_NET_TCP)
    exact = bound_socket(tcp, "127.0.0.11", 33371, listening_only=True)
    assert exact is not None and exact.inode == 324023
    # 127.0.0.1:8080 has an established connection (not the listener) and a wildcard listener
    wildcard = bound_socket(tcp, "127.0.0.1", 8080, listening_only=True)
    assert wildcard is not None and wildcard.inode == 556
    assert bound_socket(tcp, "127.0.0.1", 9999, listening_only=True) is None
    udp = parse_proc_net(PROC_NET_UDP)
    found = bound_socket(udp, "127.0.0.11", 39391)
    assert found is not None and found.inode == 324022
    assert bound_socket(udp, "127.0.0.12", 39391) is None


def test_remote_peers_leave_listeners_out() -> None:
    assert remote_peers(parse_proc_net(PROC_NET_TCP)) == ["127.0.0.1"]
    assert remote_peers(parse_proc_net(PROC_NET_TCP6)) == []

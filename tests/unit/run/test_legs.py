"""run.legs: which frames are a docker-proxy's legs, and which new connection is leg 2."""

from __future__ import annotations

from typing import Any

from flowtrace.model import Headers, Packet, Sighting
from flowtrace.run.legs import Legs, pick_leg2
from flowtrace.topology.proxy import Listener, ProxyLeg


def test_leg2_is_the_proxys_only_new_connection() -> None:
    assert pick_leg2({}, 7) == (None, None)
    assert pick_leg2({("172.17.0.1", 40000): 9}, 7) == (("172.17.0.1", 40000), None)


def test_among_several_new_connections_leg2_follows_the_accepted_one() -> None:
    new = {("172.17.0.1", 40000): 9, ("172.17.0.1", 40002): 13, ("172.17.0.1", 40004): 15}
    end, caveat = pick_leg2(new, 12)
    assert end == ("172.17.0.1", 40002)
    assert caveat is not None and "3 connections" in caveat and "fd 13" in caveat
    assert pick_leg2(new, None)[0] == ("172.17.0.1", 40000)  # accepted fd unknown: the oldest


def _follower() -> Any:
    """The legs of a trace host -> 127.0.0.1:8080 whose probe mark is 1000."""
    argv = tuple(
        [
            "/usr/sbin/docker-proxy",
            "-proto",
            "tcp",
            "-host-ip",
            "0.0.0.0",
            "-host-port",
            "8080",
            "-container-ip",
            "172.17.0.4",
            "-container-port",
            "80",
        ]
    )
    listener = Listener("0.0.0.0", 8080, 61234, 4242, argv)
    assert listener.proxy is not None
    leg = ProxyLeg(listener, listener.proxy, ())
    return Legs(leg, "/proc/self/ns/net", ("127.0.0.1", 8080), [1000], 2.0, ["host/lo"])


def _tcp(src: str, sport: int, dst: str, dport: int, flags: int, seq: int = 7, ack: int = 0) -> Any:
    return Headers(
        4, src, dst, 6, 1, 64, 40, sport, dport, tcp_seq=seq, tcp_ack=ack, tcp_flags=flags
    )


def test_a_follower_keeps_the_probes_and_its_own_legs_only() -> None:
    follower = _follower()
    assert follower.capture_filter("PROBES") == (
        "(PROBES) or (tcp and host 127.0.0.1 and port 8080) or "
        "(tcp and host 172.17.0.4 and port 80)"
    )
    probe_syn = _tcp("127.0.0.1", 40000, "127.0.0.1", 8080, 0x02, seq=1000)
    synack = _tcp("127.0.0.1", 8080, "127.0.0.1", 40000, 0x12, seq=5, ack=1001)
    rst = _tcp("127.0.0.1", 40000, "127.0.0.1", 8080, 0x04, seq=1001)
    theirs = _tcp("127.0.0.1", 50000, "127.0.0.1", 8080, 0x02, seq=99)
    assert all(follower.keeps(h) for h in (probe_syn, synack, rst))
    assert not follower.keeps(theirs) and not follower.keeps(None)
    follower.ends.update({("127.0.0.1", 41000), ("172.17.0.1", 42000)})
    leg1 = _tcp("127.0.0.1", 41000, "127.0.0.1", 8080, 0x02)
    leg2 = _tcp("172.17.0.4", 80, "172.17.0.1", 42000, 0x12)
    other_leg2 = _tcp("172.17.0.1", 42002, "172.17.0.4", 80, 0x02)
    assert follower.keeps(leg1) and follower.keeps(leg2) and not follower.keeps(other_leg2)


def test_a_follower_names_the_legs_and_sees_them_closed() -> None:
    follower = _follower()
    follower.ends.update({("127.0.0.1", 41000), ("172.17.0.1", 42000)})

    def packet(h: Any) -> Packet:
        return Packet(1, "request", (Sighting("host/lo", 1, h),))

    leg1 = packet(_tcp("127.0.0.1", 41000, "127.0.0.1", 8080, 0x02))
    leg2 = packet(_tcp("172.17.0.1", 42000, "172.17.0.4", 80, 0x02))
    assert follower.label(leg1) == "docker-proxy leg 1, client -> proxy pid 4242"
    assert follower.label(leg2) == "docker-proxy leg 2, proxy pid 4242 -> container"
    assert follower.label(packet(_tcp("10.0.0.1", 1, "10.0.0.2", 2, 0x02))) is None
    fins = [
        _tcp("127.0.0.1", 41000, "127.0.0.1", 8080, 0x11),
        _tcp("127.0.0.1", 8080, "127.0.0.1", 41000, 0x11),
        _tcp("172.17.0.1", 42000, "172.17.0.4", 80, 0x11),
    ]
    seen = [Sighting("host/lo", 1, h) for h in fins]
    assert not follower.answered(seen)  # the container has not closed yet
    seen.append(Sighting("host/docker0", 2, _tcp("172.17.0.4", 80, "172.17.0.1", 42000, 0x11)))
    assert follower.answered(seen)

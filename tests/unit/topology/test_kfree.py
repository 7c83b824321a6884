"""skb:kfree_skb lines of a tracefs instance, recorded on real runs, and their windows."""

from __future__ import annotations

from sample_kernel import record

from flowtrace.topology.kfree import (
    ETH_P_IP,
    FLIGHT_SLACK_NS,
    KfreeEvent,
    drops_in_windows,
    flight_windows,
    parse_kfree,
    parse_trace,
    reason_words,
)


def test_a_kfree_skb_line() -> None:
    line = next(line for line in record("isolated")["kfree"].splitlines() if "kfree_skb:" in line)
    ev = parse_kfree(line)
    assert ev is not None
    assert (ev.reason, ev.protocol, ev.location) == (
        "NETFILTER_DROP",
        ETH_P_IP,
        "nft_do_chain+0x46f/0x690",
    )
    assert ev.task.startswith("python-") and ev.time_ns % 1000 == 0  # µs resolution
    assert parse_kfree("#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION") is None
    odd = parse_kfree(
        " kworker/0:1-events-12   [001] d.s2.  5.000001: kfree_skb: skbaddr=0 protocol=2048 "
        "location=ip_error+0x94/0x220 reason: IP_INADDRERRORS"
    )
    assert odd is not None and odd.task == "kworker/0:1-events-12" and odd.time_ns == 5_000_001_000


def test_drops_fall_to_the_probe_that_was_out() -> None:
    def ev(t: int, protocol: int = ETH_P_IP) -> KfreeEvent:
        return KfreeEvent(t, "NETFILTER_DROP", "x", protocol, "t-1", 0)

    drops = drops_in_windows([ev(5), ev(15), ev(25), ev(12, 0x86DD), ev(1)], [(10, 20), (20, 30)])
    assert [(d.probe, d.after_ns) for d in drops] == [(0, 5), (1, 5)]


def test_a_flight_ends_soon_after_the_kernel_last_traced_the_probe() -> None:
    ms = 1_000_000
    windows = flight_windows([0, 100 * ms, 200 * ms], {0: 3 * ms, 2: 250 * ms}, 10_000 * ms)
    assert windows == [
        (0, 3 * ms + FLIGHT_SLACK_NS),
        (100 * ms, 100 * ms + FLIGHT_SLACK_NS),  # nothing traced: from its sending
        (200 * ms, 250 * ms + FLIGHT_SLACK_NS),
    ]
    assert flight_windows([0, 5 * ms], {0: 50 * ms}, 99 * ms)[0] == (0, 5 * ms)  # next probe


def test_every_recorded_run_parses_and_reasons_read_as_words() -> None:
    for name in ("isolated", "masquerade", "dnat", "rpfilter", "udp-dnat", "dns"):
        assert parse_trace(record(name)["kfree"]), name
    assert "reverse-path" in reason_words("IP_RPFILTER")
    assert "raw socket" in reason_words("NO_SOCKET", "ping_rcv+0xb3/0xe0")
    assert reason_words("NO_SOCKET") == "no socket wanted it (nothing listens)"
    assert reason_words("SOMETHING_NEW") == ""
    assert "blackhole route" in reason_words("NOT_SPECIFIED", "ip_error+0x94/0x220")

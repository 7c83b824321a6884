"""What a run across hosts records of them: which traces cross hosts, the tunnels, the
pcapng descriptions with the clock offset applied."""

from __future__ import annotations

from flowtrace.endpoints.host_spec import parse_host_option
from flowtrace.run.hosts import names_hosts, tunnels_record
from flowtrace.topology.crossing import TunnelHop


def test_a_trace_crosses_hosts_when_an_endpoint_or_an_option_names_one() -> None:
    assert names_hosts(("o1@hosta", "o2@hostb"), [])
    assert names_hosts(("c1", "web@hostb:80"), [])
    assert names_hosts(("c1", "198.18.20.3:8080"), [parse_host_option("hostb=/run/b.sock")])
    assert not names_hosts(("c1", "c2"), [])
    assert not names_hosts(("netns:ft-outside", "203.0.113.1:8080"), [])


def test_tunnels_are_recorded_with_their_network_and_both_hosts() -> None:
    tunnel = TunnelHop(
        4097,
        4789,
        "ftover",
        False,
        "198.18.20.2",
        "198.18.20.3",
        "hosta",
        None,
        ("a/vxlan0", "a/eth0", "b/eth0", "b/vxlan0"),
    )
    assert tunnels_record([tunnel]) == [
        {
            "kind": "vxlan",
            "vni": 4097,
            "port": 4789,
            "network": "ftover",
            "encrypted": False,
            "local": "198.18.20.2",
            "remote": "198.18.20.3",
            "from_host": "hosta",
            "to_host": "local",
            "points": ["a/vxlan0", "a/eth0", "b/eth0", "b/vxlan0"],
        },
    ]


def test_rules_kernel_is_refused_across_hosts_before_any_host_is_reached() -> None:
    import pytest

    from flowtrace.errors import ExitStatus, FlowtraceError
    from flowtrace.model import TraceOptions
    from flowtrace.run.trace import run_trace

    with pytest.raises(FlowtraceError) as caught:
        run_trace("o1@nosuchhost", "o2@nosuchhost", TraceOptions(rules="kernel"))
    assert caught.value.status == ExitStatus.USAGE
    assert "only on this host" in caught.value.message


def test_ipv6_across_hosts_is_refused_in_one_line() -> None:
    import pytest

    from flowtrace.errors import ExitStatus, FlowtraceError
    from flowtrace.topology.hostroute import refuse_ipv6_across

    refuse_ipv6_across(None)
    refuse_ipv6_across(4)
    with pytest.raises(FlowtraceError, match="IPv6 across hosts is not traced") as raised:
        refuse_ipv6_across(6)
    assert raised.value.status == ExitStatus.USAGE and "\n" not in str(raised.value)

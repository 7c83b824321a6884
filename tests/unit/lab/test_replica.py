"""The replicas' layout and rule files (building them is tests/integration/test_firewalls.py)."""

from __future__ import annotations

import ipaddress

import pytest

from flowtrace.errors import ExitStatus, FlowtraceError
from flowtrace.lab import replica
from flowtrace.topology.netfilter import parse_iptables_save


@pytest.mark.parametrize("engine", list(replica.ENGINES.values()), ids=list(replica.ENGINES))
def test_every_engine_has_its_rules_and_a_source_note(engine: replica.Engine) -> None:
    for variant in (None, *engine.variants):
        text = engine.rules_file(variant).read_text()
        if engine.backend == "iptables":
            assert parse_iptables_save(text).rule_count() > 0
        else:
            assert text.count("chain ") >= 5 and "table " in text
    source = (replica.RULES_DIR / "SOURCE.md").read_text()
    assert f"`{engine.name}`" in source


def test_the_layouts_addresses_are_inside_its_ranges_and_distinct() -> None:
    containers = ipaddress.ip_network(replica.CONTAINER_RANGE)
    seen = set()
    for network in replica.NETWORKS:
        assert ipaddress.ip_address(network.gateway) in containers
        assert len(network.bridge) <= 15  # IFNAMSIZ
        for name, ip in network.members:
            assert name.startswith(replica.PREFIX) and ipaddress.ip_address(ip) in containers
            assert ip not in seen
            seen.add(ip)
    uplink = ipaddress.ip_network(replica.UPLINK_RANGE)
    assert ipaddress.ip_address(replica.UPLINK_IP) in uplink
    assert ipaddress.ip_address(replica.OUTSIDE_IP) in uplink
    assert uplink.subnet_of(ipaddress.ip_network("198.51.100.0/24"))  # a documentation range
    assert all(n.startswith(replica.PREFIX) for n in replica.namespaces())


def test_an_unknown_engine_is_a_usage_error() -> None:
    with pytest.raises(FlowtraceError, match="no replica of 'docker-99'") as caught:
        replica.engine_named("docker-99")
    assert caught.value.status == ExitStatus.USAGE


def test_what_was_built_is_described() -> None:
    built = replica.Replica(replica.ENGINES["docker-29.7-nftables"], None, replica.namespaces())
    lines = replica.describe(built)
    assert lines[0] == "replica of Docker 29.7, nftables backend"
    assert any("netns:ftfw-c1 10.247.0.2" in line for line in lines)
    assert built.address("ftfw-c8") == "10.247.4.2"

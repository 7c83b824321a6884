"""Scenario ipv6's pure parts: its address ranges and what it says when NAT66 is off."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from flowtrace.lab import catalog
from flowtrace.lab import ipv6 as lab_ipv6


def test_its_ranges_are_a_unique_local_subnet_and_a_documentation_64() -> None:
    subnet = ipaddress.ip_network(lab_ipv6.SUBNET6)
    outside = ipaddress.ip_network(lab_ipv6.OUTSIDE6_NET)
    assert subnet.is_private and subnet.subnet_of(ipaddress.ip_network("fc00::/7"))
    assert outside.subnet_of(ipaddress.ip_network("2001:db8::/32"))  # documentation
    assert outside.prefixlen == 64 == lab_ipv6.OUTSIDE6_PREFIXLEN
    # this machine's own uplink is fd00::/64: the lab's subnet is elsewhere
    assert not subnet.overlaps(ipaddress.ip_network("fd00::/64"))
    for ip in (lab_ipv6.OUTSIDE6_IP, lab_ipv6.UPLINK6_IP):
        assert ipaddress.ip_address(ip) in outside
    assert ipaddress.ip_address(lab_ipv6.GATEWAY6) in subnet


def test_the_scenario_traces_every_ipv6_situation() -> None:
    scenario = catalog.get(lab_ipv6.SCENARIO)
    assert scenario.parts is lab_ipv6
    assert [m.name for m in scenario.members] == [lab_ipv6.A, lab_ipv6.B, lab_ipv6.WEB]
    assert all(m.network == lab_ipv6.NETWORK for m in scenario.members)
    assert scenario.members[2].publish == (f"{lab_ipv6.WEB_PORT6}:80",)
    assert f"flowtrace tcp netns:ft6-outside [2001:db8:f6::1]:{lab_ipv6.WEB_PORT6}" in (
        scenario.commands
    )


def test_what_is_missing_for_nat66_is_named(tmp_path: Path) -> None:
    absent = str(tmp_path / "daemon.json")
    both = lab_ipv6.daemon_options({"ExperimentalBuild": False}, absent)
    assert both.startswith('the engine runs without "ip6tables": true and "experimental": true')
    assert absent in both
    config = tmp_path / "set.json"
    config.write_text(json.dumps({"ip6tables": True}))
    one = lab_ipv6.daemon_options({"ExperimentalBuild": False}, str(config))
    assert one.startswith('the engine runs without "experimental": true (Docker 20.10 needs both')
    config.write_text(json.dumps({"ip6tables": True, "experimental": True}))
    on = lab_ipv6.daemon_options({"ExperimentalBuild": True}, str(config))
    assert on.endswith("restart dockerd")
    config.write_text("[not an object")
    assert '"ip6tables": true' in lab_ipv6.daemon_options({"ExperimentalBuild": True}, str(config))

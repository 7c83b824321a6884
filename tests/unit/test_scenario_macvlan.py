"""Scenario macvlan's plan: its parts module, names and addresses agree with each other
and stay clear of the base lab's."""

from __future__ import annotations

import ipaddress

import pytest

from flowtrace import lab, lab_macvlan, scenarios
from flowtrace.errors import FlowtraceError


def test_the_scenario_names_its_parts_and_m1_is_on_their_network() -> None:
    scenario = scenarios.get("macvlan")
    assert scenario.parts_module() is lab_macvlan
    assert scenarios.get("none").parts_module() is None
    m1, m2 = scenario.members
    assert (m1.name, m1.mode, m1.network) == (lab_macvlan.M1, "bridge", lab_macvlan.NETWORK)
    assert (m2.name, m2.mode) == (lab_macvlan.M2, "none")


def test_addresses_sit_in_the_segment_apart_from_the_lab_and_the_capture_tests() -> None:
    segment = ipaddress.ip_network(lab_macvlan.SUBNET)
    assert segment.prefixlen == lab_macvlan.PREFIXLEN
    own = [lab_macvlan.HOST_A_IP, lab_macvlan.HOST_B_IP, lab_macvlan.M2_IP]
    assert len(set(own)) == 3 and all(ipaddress.ip_address(ip) in segment for ip in own)
    assert not segment.overlaps(ipaddress.ip_network(lab.OUTSIDE_NET))
    for taken in ("198.51.100.1", "198.51.100.2"):  # the capture tests' private namespaces
        assert ipaddress.ip_address(taken) not in segment


def test_m2_gets_dockers_ip_derived_mac() -> None:
    assert lab_macvlan.M2_MAC == "02:42:c6:33:64:44"


def test_a_netlink_refusal_becomes_one_line_for_the_user() -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    with pytest.raises(FlowtraceError) as caught, lab_macvlan._kernel_refusal("delete ft-l2a"):
        raise NetlinkError(17)
    assert caught.value.message == "the kernel refused to delete ft-l2a: File exists"

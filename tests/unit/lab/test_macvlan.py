"""Scenario macvlan's plan: its names and addresses agree with each other and stay clear
of the base lab's; the kernel's refusals read as one line."""

from __future__ import annotations

import ipaddress

import pytest

import flowtrace.lab.macvlan as macvlan
from flowtrace.errors import FlowtraceError
from flowtrace.lab.base import OUTSIDE_NET


def test_addresses_sit_in_the_segment_apart_from_the_lab_and_the_capture_tests() -> None:
    segment = ipaddress.ip_network(macvlan.SUBNET)
    assert segment.prefixlen == macvlan.PREFIXLEN
    own = [macvlan.HOST_A_IP, macvlan.HOST_B_IP, macvlan.M2_IP]
    assert len(set(own)) == 3 and all(ipaddress.ip_address(ip) in segment for ip in own)
    assert not segment.overlaps(ipaddress.ip_network(OUTSIDE_NET))
    for taken in ("198.51.100.1", "198.51.100.2"):  # the capture tests' private namespaces
        assert ipaddress.ip_address(taken) not in segment


def test_m2_gets_dockers_ip_derived_mac() -> None:
    assert macvlan.M2_MAC == "02:42:c6:33:64:44"


def test_a_netlink_refusal_becomes_one_line_for_the_user() -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    with pytest.raises(FlowtraceError) as caught, macvlan._kernel_refusal("delete ft-l2a"):
        raise NetlinkError(17)
    assert caught.value.message == "the kernel refused to delete ft-l2a: File exists"

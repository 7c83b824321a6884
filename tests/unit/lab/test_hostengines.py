"""Scenario hosts' plan: its hosts, addresses and ranges agree with each other and stay
clear of the base lab's and the macvlan scenario's; an engine is known by its own pid."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from flowtrace.endpoints.contexts import write_context
from flowtrace.lab import hostengines as he
from flowtrace.lab import macvlan
from flowtrace.lab.base import OUTSIDE_NET


def test_the_hosts_and_their_addresses_fit_the_lan_and_their_own_ranges() -> None:
    lan = ipaddress.ip_network(he.SUBNET)
    own = ipaddress.ip_network(he.HOSTS_RANGE)
    seen: set[str] = set()
    for host in he.HOSTS:
        assert ipaddress.ip_address(host.lan_ip) in lan
        assert ipaddress.ip_network(host.macvlan_range).subnet_of(lan)  # type: ignore[arg-type]
        assert ipaddress.ip_interface(host.bip).network.subnet_of(own)  # type: ignore[arg-type]
        assert ipaddress.ip_network(host.pool).subnet_of(own)  # type: ignore[arg-type]
        for name in (host.name, host.netns, host.root, host.data_root, host.socket):
            assert name not in seen
            seen.add(name)
    assert ipaddress.ip_network(he.SWARM_POOL).subnet_of(own)
    for other in (OUTSIDE_NET, macvlan.SUBNET):
        assert not lan.overlaps(ipaddress.ip_network(other))
    assert he.HOSTS[0].netns != macvlan.HOSTB_NETNS and he.HOSTS[1].netns != macvlan.HOSTB_NETNS
    ranges = [ipaddress.ip_network(h.macvlan_range) for h in he.HOSTS]
    assert not ranges[0].overlaps(ranges[1])
    assert all(ipaddress.ip_address(h.lan_ip) not in r for h in he.HOSTS for r in ranges)


def test_each_engine_gets_its_own_bridge_address_and_pools() -> None:
    config = he._daemon_config(he.HOSTS[1])
    assert config["bip"] == "10.213.2.1/24"
    assert config["default-address-pools"] == [{"base": "10.213.32.0/20", "size": 24}]


def test_an_engine_is_the_labs_only_when_its_own_command_line_says_so() -> None:
    argv = b"dockerd\0--data-root\0/var/lib/flowtrace-lab/hosta\0--exec-root\0/run/x\0".split(b"\0")
    assert he.is_engine_of(argv, "S", "/var/lib/flowtrace-lab/hosta")
    assert not he.is_engine_of(argv, "Z", "/var/lib/flowtrace-lab/hosta")  # exited, not reaped
    assert not he.is_engine_of(argv, "S", "/var/lib/flowtrace-lab/hostb")
    assert not he.is_engine_of([b"dockerd", b"--data-root"], "S", "/var/lib/flowtrace-lab/hosta")
    assert not he.is_engine_of([b"sleep", b"infinity"], "S", "/var/lib/flowtrace-lab/hosta")
    assert he.engine_pid(he.LabHost("hostz", "ft-host-z", "198.18.20.9", "", "", "", ())) is None


def test_a_context_of_the_same_name_that_is_not_the_labs_is_a_conflict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    host = he.HOSTS[0]
    assert not he.context_is_foreign(host)
    assert he.register(host) == [f"Docker context {host.name} ({host.url})"]
    assert he.register(host) == []  # already there
    assert not he.context_is_foreign(host)
    assert he.unregister(host) == [f"Docker context {host.name}"]
    write_context(host.name, "tcp://198.51.100.7:2376", "someone's own")
    assert he.context_is_foreign(host)
    assert he.unregister(host) == []  # never someone else's
    he.remove_empty_context_folders()
    assert (tmp_path / "contexts").is_dir()  # it still holds theirs

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


def test_a_process_is_the_hosts_by_its_own_paths_or_its_cgroup_and_nothing_else() -> None:
    host = he.HOSTS[0]
    exec_root = f"{host.root}/exec"

    def kind(argv: str, cgroups: str = "0::/user.slice\n") -> str | None:
        return he.process_kind(argv.encode().split(b" "), cgroups, host)

    assert kind(f"dockerd --data-root {host.data_root} --exec-root {exec_root}") == "dockerd"
    assert kind(f"containerd --config {exec_root}/containerd/containerd.toml") == "containerd"
    shim = f"/usr/bin/containerd-shim-runc-v2 -namespace moby -id 1f -address {exec_root}/c.sock"
    assert kind(shim) == "other"
    assert (
        kind("sleep infinity", "4:pids:/ft-hosta/0123abcd\n1:name=systemd:/ft-hosta/0123\n")
        == "other"
    )
    assert kind("sleep infinity", "0::/ft-hosta\n") == "other"
    # the machine's own engine, a look-alike cgroup, another lab host's paths: not this host's
    assert kind("dockerd") is None
    assert kind("containerd --config /var/run/docker/containerd/containerd.toml") is None
    assert kind("sleep infinity", "4:pids:/ft-hostab/01\n0::/docker/ft-hosta\n") is None
    assert kind(f"containerd --config {he.HOSTS[1].root}/exec/containerd.toml") is None


def test_a_hosts_cgroups_are_found_in_every_hierarchy_deepest_first(tmp_path: Path) -> None:
    host = he.HOSTS[1]
    for path in ("pids/ft-hostb/c1", "memory/ft-hostb", "unified/ft-hostb/c1/x", "pids/other"):
        (tmp_path / path).mkdir(parents=True)
    found = [str(Path(f).relative_to(tmp_path)) for f in he.cgroup_dirs(host, str(tmp_path))]
    assert sorted(found) == sorted(
        [
            "memory/ft-hostb",
            "pids/ft-hostb",
            "pids/ft-hostb/c1",
            "unified/ft-hostb",
            "unified/ft-hostb/c1",
            "unified/ft-hostb/c1/x",
        ]
    )
    assert found.index("pids/ft-hostb/c1") < found.index("pids/ft-hostb")
    assert found.index("unified/ft-hostb/c1/x") < found.index("unified/ft-hostb/c1")

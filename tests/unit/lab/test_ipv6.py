"""Scenario ipv6's pure parts: its address ranges, what it says when NAT66 is off, and
the lab's own engine it runs on (its options, launch line and engine choice)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from flowtrace.endpoints import engines
from flowtrace.lab import catalog, own_engine
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
    assert scenario.own_engine
    assert (
        f"flowtrace lab exec -- flowtrace tcp netns:ft6-outside [2001:db8:f6::1]:"
        f"{lab_ipv6.WEB_PORT6}" in scenario.commands
    )
    assert all(c.startswith("flowtrace lab exec -- flowtrace ") for c in scenario.commands)


def test_what_is_missing_for_nat66_is_named(tmp_path: Path) -> None:
    absent = str(tmp_path / "daemon.json")
    both = lab_ipv6.daemon_options({"ExperimentalBuild": False}, absent)
    assert both.startswith(
        'the lab\'s engine runs without "ip6tables": true and "experimental": true'
    )
    assert absent in both
    config = tmp_path / "set.json"
    config.write_text(json.dumps({"ip6tables": True}))
    one = lab_ipv6.daemon_options({"ExperimentalBuild": False}, str(config))
    assert one.startswith(
        'the lab\'s engine runs without "experimental": true (Docker 20.10 needs both'
    )
    assert one.endswith("`flowtrace lab down --scenario ipv6`, then up again)")
    config.write_text(json.dumps({"ip6tables": True, "experimental": True}))
    on = lab_ipv6.daemon_options({"ExperimentalBuild": True}, str(config))
    assert on.endswith(
        "not in the running engine: `flowtrace lab down --scenario ipv6`, then up again"
    )
    config.write_text("[not an object")
    assert '"ip6tables": true' in lab_ipv6.daemon_options({"ExperimentalBuild": True}, str(config))


def test_the_labs_engine_has_the_ipv6_nat_options_and_nothing_of_the_machines() -> None:
    assert own_engine.OPTIONS["ip6tables"] is True and own_engine.OPTIONS["experimental"]
    assert own_engine.OPTIONS["bridge"] == "none"  # the lab makes its networks
    # its trust key of its own: else dockerd writes the machine's /etc/docker/key.json
    assert str(own_engine.OPTIONS["deprecated-key-path"]).startswith(own_engine.RUN_DIR)
    assert lab_ipv6.DAEMON_JSON == own_engine.CONFIG != "/etc/docker/daemon.json"
    for path in (own_engine.SOCKET, own_engine.PIDFILE, own_engine.EXEC_ROOT):
        assert path.startswith(own_engine.RUN_DIR + "/")
    assert own_engine.DATA_ROOT != "/var/lib/docker"


def test_the_launch_line_keeps_every_path_of_the_machines_engine_away() -> None:
    line = own_engine._LAUNCH.format(
        hostname="h", stash="S", config="C", data="D", exec_root="E", pidfile="P",
        host="unix:///x.sock", cgroup="G",
    )  # fmt: skip
    words = line.split("exec dockerd ", 1)[1].split()
    assert words == [
        "--config-file", "C", "--data-root", "D", "--exec-root", "E", "--pidfile", "P",
        "-H", "unix:///x.sock", "--cgroup-parent", "/G",
    ]  # fmt: skip
    # sysfs of its namespace, with the cgroup tree bound back over it
    before = line.split("exec dockerd ", 1)[0]
    assert before.index("mount -t sysfs sysfs /sys") < before.index("--rbind S /sys/fs/cgroup")


def test_the_labs_engine_is_chosen_by_its_address_alone() -> None:
    plan = engines.candidates(own_engine.CHOICE, {"DOCKER_HOST": "tcp://elsewhere:2375"},
                              "ctx", lambda name: None, True)  # fmt: skip
    assert [(c.host, c.selected_by, c.expect, c.explicit) for c in plan] == [
        (own_engine.HOST, "the IPv6 lab's own engine", "docker", True)
    ]

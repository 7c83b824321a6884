"""Situation 8: macvlan across two hosts, on the real engine and kernel (`lab up --scenario
macvlan`).

Host A is this host, host B the namespace ft-hostb; the veth ft-l2a <-> ft-hostb/ft-l2b
is the segment both plug into.  m1 is on Docker's macvlan network ftmacvlan (parent
ft-l2a), m2 is a container given a macvlan child of ft-l2b.  The containers reach each
other and the other host, never their own host: the macvlan driver keeps a child and
its parent's namespace apart, so the ARP request for the host's address goes out onto
the segment and is never answered.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from test_situations import BuildScenario, assert_one_line_error
from test_situations import scenario as scenario  # the fixture, for this module
from test_trace import assert_in_path_order, one, run_cli, tshark_fields

from flowtrace import api
from flowtrace import lab as lab_module
from flowtrace.errors import ExitStatus
from flowtrace.lab import catalog, scenarios
from flowtrace.lab import macvlan as lab_macvlan
from flowtrace.lab.guard import exclusive
from flowtrace.lab.scenarios import ScenarioState

pytestmark = pytest.mark.integration

ACROSS = ["m1/eth0", "host/ft-l2a", "ft-hostb/ft-l2b", "m2/eth0"]
#: Longer than the kernel's ARP resolution (3 requests a second apart), so each blocked
#: trace sees a whole resolution of its own and leaves the entry failed for the next.
ARP_GIVES_UP_S = 3.5


@pytest.fixture(scope="module")
def client() -> Any:
    return docker.from_env()


@pytest.fixture
def macvlan(scenario: BuildScenario) -> ScenarioState:
    state = scenario("macvlan")
    assert state.complete, state.missing
    return state


def _m1_ip(state: ScenarioState) -> str:
    return state.member("m1").container.addresses[lab_macvlan.NETWORK]


def _links(ns_path: str | None = None) -> dict[str, dict[str, Any]]:
    command = ["ip", "-j", "-d", "addr", "show"]
    if ns_path is not None:
        command = ["nsenter", f"--net={ns_path}", *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return {link["ifname"]: link for link in json.loads(out)}


def _cidrs(link: dict[str, Any]) -> list[str]:
    return [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"] if a["family"] == "inet"]


def test_the_scenario_is_two_hosts_on_one_segment(macvlan: ScenarioState) -> None:
    host = _links()
    assert host["ft-l2a"]["linkinfo"]["info_kind"] == "veth"
    assert host["ft-l2a"]["ifalias"] == lab_macvlan.SEGMENT_ALIAS
    assert _cidrs(host["ft-l2a"]) == ["198.51.100.65/26"]
    hostb = _links(lab_macvlan.HOSTB_NETNS_PATH)
    assert _cidrs(hostb["ft-l2b"]) == ["198.51.100.66/26"]
    m1, m2 = macvlan.member("m1").container, macvlan.member("m2").container
    assert _m1_ip(macvlan).startswith("198.51.100.")
    for item, lower_ns, lower in ((m1, "host", "ft-l2a"), (m2, "ft-hostb", "ft-l2b")):
        assert item.netns is not None
        eth0 = _links(item.netns)["eth0"]
        assert eth0["linkinfo"]["info_kind"] == "macvlan"
        assert eth0["linkinfo"]["info_data"]["mode"] == "bridge"
        parent = (host if lower_ns == "host" else hostb)[lower]
        assert eth0["link_index"] == parent["ifindex"], (item.name, eth0, parent)
    assert _cidrs(_links(m2.netns)["eth0"]) == ["198.51.100.68/26"]
    assert macvlan.member("m2").docker_mode == "none"
    shown = "\n".join(macvlan.parts)
    assert "ft-l2a     198.51.100.65/26" in shown and "macvlan on ft-hostb/ft-l2b" in shown


def test_containers_on_the_two_hosts_reach_each_other(macvlan: ScenarioState) -> None:
    m1_ip = _m1_ip(macvlan)
    for src, dst, order in (("m1", "m2", ACROSS), ("m2", "m1", ACROSS[::-1])):
        trace = api.trace(src, dst, count=2, interval=0.05, timeout=2, record=False)
        assert [p.id for p in trace.points] == order
        assert [p.role for p in trace.points] == ["source", "parent", "parent", "destination"]
        assert [v.outcome for v in trace.verdicts] == ["replied", "replied"]
        for probe in (0, 1):
            packets = [p for p in trace.packets if p.probe == probe]
            request = one(packets, "request")
            assert_in_path_order(request, order)
            assert_in_path_order(one(packets, "reply"), order[::-1])
            ends = (m1_ip, "198.51.100.68") if src == "m1" else ("198.51.100.68", m1_ip)
            assert (request.first.src, request.first.dst) == ends
            assert all(not p.nat for p in packets)
    assert any("m2 has network mode none" in note for note in trace.notes), trace.notes


def test_a_container_reaches_the_other_host(macvlan: ScenarioState) -> None:
    trace = api.trace("m1", "netns:ft-hostb", count=1, timeout=2, record=False)
    order = ["m1/eth0", "host/ft-l2a", "ft-hostb/ft-l2b"]
    assert [p.id for p in trace.points] == order
    assert trace.verdicts[0].outcome == "replied"
    assert_in_path_order(one(list(trace.packets), "request"), order)
    assert_in_path_order(one(list(trace.packets), "reply"), order[::-1])


def test_a_container_cannot_reach_its_own_host(macvlan: ScenarioState, tmp_path: Path) -> None:
    m1_ip = _m1_ip(macvlan)
    out = tmp_path / "set"
    trace = api.trace("m1", "host", count=1, timeout=ARP_GIVES_UP_S, output_dir=out)
    assert trace.meta["dst_ip"] == "198.51.100.65"
    assert [(p.id, p.role) for p in trace.points] == [
        ("m1/eth0", "source"),
        ("host/ft-l2a", "parent"),
    ]
    verdict = trace.verdicts[0]
    assert (verdict.outcome, verdict.last_point) == ("lost", "host/ft-l2a")
    assert verdict.detail.startswith("never left m1: its ARP request for 198.51.100.65 (")
    assert "sent, seen at m1/eth0 and host/ft-l2a) was never answered; " in verdict.detail
    for words in (
        "m1/eth0 is a macvlan child of host/ft-l2a, and 198.51.100.65 belongs to host itself",
        "the macvlan driver never passes frames between a child and its own parent device",
        'the usual fix is a macvlan "shim" interface in host on ft-l2a',
        "ip link add NAME link ft-l2a type macvlan mode bridge",
    ):
        assert words in verdict.detail, verdict.detail
    assert not trace.packets  # the echo request waited in m1 for an answer to its ARP
    assert any("predicted from the kernel's state" in n for n in trace.notes), trace.notes

    rows = tshark_fields(
        out / "trace.pcapng",
        "frame.interface_name",
        "arp.opcode",
        "arp.src.proto_ipv4",
        "arp.dst.proto_ipv4",
        display_filter="arp",
    )
    assert rows and all(r[1:] == ["1", m1_ip, "198.51.100.65"] for r in rows), rows
    assert {r[0] for r in rows} == {"m1/eth0", "host/ft-l2a"}
    sent = int(verdict.detail.split("198.51.100.65 (", 1)[1].split(" ", 1)[0])
    assert sent == sum(1 for r in rows if r[0] == "m1/eth0")


def test_the_same_on_host_b_from_the_cli(macvlan: ScenarioState) -> None:
    args = ("ping", "m2", "netns:ft-hostb", "--timeout", str(ARP_GIVES_UP_S), "--no-record")
    shown = run_cli(*args)
    assert shown.returncode == ExitStatus.NO_REPLY, shown.stderr
    assert "path: m2/eth0 -> ft-hostb/ft-l2b" in shown.stdout
    verdict = next(line for line in shown.stdout.splitlines() if line.startswith("probe 1:"))
    assert verdict.startswith(
        "probe 1: lost after ft-hostb/ft-l2b (never left m2: its ARP request for 198.51.100.66 ("
    ), verdict
    assert "m2/eth0 is a macvlan child of ft-hostb/ft-l2b" in verdict
    assert 'macvlan "shim" interface in ft-hostb on ft-l2b' in verdict
    path = run_cli("path", "m2", "netns:ft-hostb", "--json")
    assert path.returncode == 0, path.stderr
    document = json.loads(path.stdout)
    assert [p["id"] for p in document["points"]] == ["m2/eth0", "ft-hostb/ft-l2b"]
    assert any("never passes frames between a child" in n for n in document["notes"])


def test_the_host_cannot_reach_its_own_container_either(macvlan: ScenarioState) -> None:
    m1_ip = _m1_ip(macvlan)
    shown = run_cli("ping", "host", "m1", "--timeout", str(ARP_GIVES_UP_S), "--json", "--no-record")
    assert shown.returncode == ExitStatus.NO_REPLY, shown.stderr
    document = json.loads(shown.stdout)
    assert [p["id"] for p in document["points"]] == ["host/ft-l2a"]
    probe = document["verdict"]["probes"][0]
    assert (probe["outcome"], probe["last_point"]) == ("lost", "host/ft-l2a")
    assert probe["detail"].startswith(f"never left host: its ARP request for {m1_ip} (")
    assert f"{m1_ip} belongs to m1/eth0, a macvlan child of host/ft-l2a" in probe["detail"]


def test_status_notices_a_restarted_m2_and_up_gives_it_eth0_again(
    macvlan: ScenarioState, client: Any
) -> None:
    client.containers.get("m2").restart(timeout=0)
    lost = "m2/eth0 (macvlan on ft-hostb/ft-l2b, 198.51.100.68/26)"
    assert lost in scenarios.status("macvlan").missing
    status = run_cli("lab", "status", "--scenario", "macvlan")
    assert status.returncode == ExitStatus.NOT_FOUND
    assert status.stdout.splitlines()[-1] == f"missing: {lost}"
    built = run_cli("lab", "up", "--scenario", "macvlan")
    assert built.returncode == 0, built.stderr
    assert built.stdout.splitlines()[0] == (
        "+ moved a macvlan of ft-hostb/ft-l2b into m2 as eth0 (198.51.100.68/26)"
    )
    assert built.stdout.splitlines()[-1] == "scenario macvlan is up"
    trace = api.trace("m1", "m2", count=1, timeout=2, record=False)
    assert trace.verdicts[0].outcome == "replied"


def _scenario_made() -> dict[str, bool]:
    """Which of the scenario's non-container parts exist now."""
    names = {n.name for n in docker.from_env().networks.list()}
    return {
        "netns": os.path.exists(lab_macvlan.HOSTB_NETNS_PATH),
        "veth": "ft-l2a" in _links(),
        "network": lab_macvlan.NETWORK in names,
    }


def test_down_removes_the_scenario_and_nothing_else(macvlan: ScenarioState) -> None:
    removed = run_cli("lab", "down", "--scenario", "macvlan")
    assert removed.returncode == 0, removed.stderr
    lines = removed.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines[:2]] == [
        "- removed container m2",
        "- removed container m1",
    ]
    assert lines[2:] == [
        "- removed network ftmacvlan",
        "- removed veth ft-l2a <-> ft-hostb/ft-l2b",
        "- removed namespace ft-hostb",
    ]
    assert _scenario_made() == {"netns": False, "veth": False, "network": False}
    assert lab_module.status().complete  # the base lab is untouched
    again = run_cli("lab", "down", "--scenario", "macvlan")
    assert again.stdout.strip() == "nothing to remove: scenario macvlan was not up"
    built = run_cli("lab", "up", "--scenario", "macvlan")
    assert built.returncode == 0, built.stderr
    assert built.stdout.splitlines()[0] == "+ created namespace ft-hostb (/run/netns/ft-hostb)"
    assert built.stdout.splitlines()[-1] == "scenario macvlan is up"


def test_a_plain_lab_down_takes_the_parts_after_the_containers(
    macvlan: ScenarioState, client: Any
) -> None:
    """`lab down` removes every lab container, then calls remove_parts (the base lab is
    shared, so this runs that second step on its own rather than taking the lab down)."""
    for name in ("m2", "m1"):
        client.containers.get(name).remove(force=True)
    with exclusive():
        removed, kept = catalog.remove_parts(client)
    assert (removed, kept) == (
        [
            "network ftmacvlan",
            "veth ft-l2a <-> ft-hostb/ft-l2b",
            "namespace ft-hostb",
        ],
        [],
    )
    assert _scenario_made() == {"netns": False, "veth": False, "network": False}
    assert scenarios.up("macvlan").complete


@pytest.fixture
def stranger_link(macvlan: ScenarioState) -> Iterator[None]:
    """A veth named ft-l2a that is not the lab's, with the scenario down."""
    scenarios.down("macvlan")
    subprocess.run(
        ["ip", "link", "add", "ft-l2a", "type", "veth", "peer", "name", "ft-l2a-x"], check=True
    )
    try:
        yield
    finally:
        subprocess.run(["ip", "link", "del", "ft-l2a"], check=False)
        scenarios.up("macvlan")


def test_a_stranger_holding_the_segment_name_stops_lab_up(stranger_link: None) -> None:
    assert_one_line_error(
        run_cli("lab", "up", "--scenario", "macvlan"),
        1,
        "a link named ft-l2a exists and is not the lab's: delete it",
    )
    assert _scenario_made() == {"netns": False, "veth": True, "network": False}
    assert "ft-l2a-x" in _links()  # untouched

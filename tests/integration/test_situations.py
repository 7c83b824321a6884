"""Docker networking situations traced on the real engine: network modes none, host and
container, two isolated bridges, a container on two networks (`lab up --scenario`).

Container -> outside host (MASQUERADE and the reply's reverse translation) is
test_trace.py's test_container_to_outside_is_masqueraded_at_the_uplink.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
from test_trace import assert_in_path_order, host_veth_of, one, run_cli

from flowtrace import api
from flowtrace import lab as lab_module
from flowtrace.errors import ExitStatus
from flowtrace.lab import LabState, scenarios
from flowtrace.lab.scenarios import ScenarioState

pytestmark = pytest.mark.integration

BuildScenario = Callable[[str], ScenarioState]


@pytest.fixture(scope="module")
def client() -> Any:
    return docker.from_env()


@pytest.fixture(scope="module")
def scenario(lab: LabState) -> Iterator[BuildScenario]:
    """Builds scenarios on demand; removes at the end those that were not up before."""
    found_up: dict[str, bool] = {}

    def build(name: str) -> ScenarioState:
        if name not in found_up:
            found_up[name] = scenarios.status(name).complete
        return scenarios.up(name)

    yield build
    for name, was_up in found_up.items():
        if not was_up:
            scenarios.down(name)


def assert_one_line_error(result: Any, status: int, *words: str) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# --- network mode none --------------------------------------------------------------------


def test_none_mode_has_no_path_either_way(scenario: BuildScenario) -> None:
    scenario("none")
    for args in (("ping", "nonec", "c1"), ("ping", "c1", "nonec"), ("path", "c1", "nonec")):
        assert_one_line_error(
            run_cli(*args),
            ExitStatus.NO_PATH,
            "container nonec has network mode none",
            "Docker gave its namespace no interface but lo",
            "no packet can leave it or reach it",
        )


# --- network mode host --------------------------------------------------------------------


def test_host_mode_container_traces_as_the_host(scenario: BuildScenario, lab: LabState) -> None:
    scenario("host")
    c1 = lab.container("c1")
    from_hostc = api.trace("hostc", "c1", count=1, record=False)
    from_host = api.trace("host", "c1", count=1, record=False)
    expected = ["host/docker0", f"host/{host_veth_of(c1.pid)}", "c1/eth0"]
    assert [p.id for p in from_hostc.points] == expected
    assert [p.id for p in from_host.points] == expected
    host_inode = os.stat("/proc/self/ns/net").st_ino
    assert all(p.netns.inode == host_inode for p in from_hostc.points[:-1])
    assert from_hostc.verdicts[0].outcome == "replied"
    request = one(list(from_hostc.packets), "request")
    assert_in_path_order(request, expected)
    assert request.first.src == lab.network(lab_module.DEFAULT_NETWORK).gateway
    assert any(
        "hostc uses network mode host" in note and "no veth of its own" in note
        for note in from_hostc.notes
    ), from_hostc.notes


# --- network mode container ---------------------------------------------------------------


def test_container_mode_pair_talks_over_lo(scenario: BuildScenario) -> None:
    state = scenario("shared")
    owner_ip = state.member("ownerc").container.addresses[lab_module.DEFAULT_NETWORK]
    trace = api.trace("sharerc", "ownerc", count=1, record=False)
    assert [(p.id, p.role) for p in trace.points] == [("sharerc/lo", "loopback")]
    assert trace.meta["dst_ip"] == owner_ip
    assert trace.verdicts[0].outcome == "replied"
    for direction in ("request", "reply"):
        pkt = one(list(trace.packets), direction)
        assert [(s.point, s.outbound) for s in pkt.sightings] == [
            ("sharerc/lo", True),
            ("sharerc/lo", False),
        ]
        assert (pkt.first.src, pkt.first.dst) == (owner_ip, owner_ip)
    assert any("it shares ownerc's network namespace" in n for n in trace.notes), trace.notes
    assert any("share one network namespace" in n for n in trace.notes), trace.notes


@pytest.fixture
def private_pair(lab: LabState, client: Any) -> Iterator[tuple[Any, Any]]:
    """An owner on docker0 and a container sharing its namespace, this test's own."""
    tag = secrets.token_hex(3)
    labels = {"flowtrace.test": "1"}
    owner = client.containers.run(
        lab_module.IMAGE, ["sleep", "600"], name=f"fttest-owner-{tag}", labels=labels, detach=True
    )
    made = [owner]
    try:
        sharer = client.containers.run(
            lab_module.IMAGE,
            ["sleep", "600"],
            name=f"fttest-sharer-{tag}",
            labels=labels,
            network_mode=f"container:{owner.name}",
            detach=True,
        )
        made.append(sharer)
        yield owner, sharer
    finally:
        for container in reversed(made):
            with contextlib.suppress(docker.errors.NotFound):  # the test may have removed it
                container.remove(force=True)


def test_container_mode_when_the_owner_stops_restarts_or_goes(
    private_pair: tuple[Any, Any],
) -> None:
    owner, sharer = private_pair
    belonged = f"{sharer.name}'s network belonged to container"
    assert run_cli("path", sharer.name, "c1").returncode == 0
    owner.stop(timeout=0)
    assert_one_line_error(
        run_cli("ping", sharer.name, "c1"),
        ExitStatus.NO_PATH,
        f"{belonged} {owner.name}, which is not running",
        f"{sharer.name} is left with only lo",
    )
    owner.start()
    assert_one_line_error(
        run_cli("ping", sharer.name, "c1"),
        ExitStatus.NO_PATH,
        f"{belonged} {owner.name}, which has restarted with a new namespace",
        f"restart {sharer.name}",
    )
    owner.remove(force=True)
    assert_one_line_error(
        run_cli("ping", sharer.name, "c1"),
        ExitStatus.NO_PATH,
        f"{belonged} {owner.id[:12]}, which no longer exists",
    )


# --- two bridges, isolated ----------------------------------------------------------------


def test_isolated_bridges_name_the_dropping_rule(lab: LabState) -> None:
    c1 = lab.container("c1")
    ftlab = lab.network(lab_module.LAB_NETWORK).bridge
    rule = f"-A DOCKER-ISOLATION-STAGE-2 -o {ftlab} -j DROP"
    trace = api.trace("c1", "c3", count=1, timeout=0.5, record=False)
    assert [p.id for p in trace.points][:4] == [
        "c1/eth0",
        f"host/{host_veth_of(c1.pid)}",
        "host/docker0",
        f"host/{ftlab}",
    ]
    verdict = trace.verdicts[0]
    assert (verdict.outcome, verdict.last_point) == ("lost", "host/docker0")
    assert verdict.detail.startswith(
        f"dropped in host by `{rule}`, filter chain FORWARD from docker0 to {ftlab}: "
        "Docker isolates its bridge networks from each other (DOCKER-ISOLATION-STAGE-2, "
        "Docker before 29.0)"
    )
    request = one(list(trace.packets), "request")
    assert_in_path_order(request, [p.id for p in trace.points][:3])
    assert not [p for p in trace.packets if p.direction == "reply"]

    shown = run_cli("ping", "c1", "c3", "--timeout", "0.5", "--no-record")
    assert shown.returncode == ExitStatus.NO_REPLY, shown.stderr
    assert f"probe 1: lost after host/docker0 (dropped in host by `{rule}`" in shown.stdout
    as_json = run_cli("ping", "c1", "c3", "--timeout", "0.5", "--no-record", "--json")
    assert as_json.returncode == ExitStatus.NO_REPLY, as_json.stderr
    probe = json.loads(as_json.stdout)["verdict"]["probes"][0]
    assert (probe["outcome"], probe["last_point"]) == ("lost", "host/docker0")
    assert rule in probe["detail"] and rule in probe["text"]


# --- docker network connect ---------------------------------------------------------------


def test_a_container_on_two_networks_uses_the_shared_one(scenario: BuildScenario) -> None:
    state = scenario("multi")
    addresses = state.member("multi").container.addresses
    on_docker0 = addresses[lab_module.DEFAULT_NETWORK]
    on_ftlab = addresses[lab_module.LAB_NETWORK]
    ftlab = state.lab.network(lab_module.LAB_NETWORK).bridge
    cases = [
        ("multi", "c1", "multi/eth0", "c1/eth0", "docker0", on_docker0),
        ("multi", "c3", "multi/eth1", "c3/eth0", ftlab, on_ftlab),
        ("c1", "multi", "c1/eth0", "multi/eth0", "docker0", on_docker0),
        ("c3", "multi", "c3/eth0", "multi/eth1", ftlab, on_ftlab),
    ]
    for src, dst, first, last, bridge, multi_ip in cases:
        trace = api.trace(src, dst, count=1, timeout=1, record=False)
        ids = [p.id for p in trace.points]
        assert (ids[0], ids[-1]) == (first, last), (src, dst, ids)
        assert [i for i in ids if i in ("host/docker0", f"host/{ftlab}")] == [f"host/{bridge}"]
        assert trace.verdicts[0].outcome == "replied", (src, dst, trace.verdicts)
        request = one(list(trace.packets), "request")
        assert multi_ip == (request.first.src if src == "multi" else request.first.dst)


# --- the scenarios themselves -------------------------------------------------------------


def test_scenario_containers_are_lab_members(scenario: BuildScenario, client: Any) -> None:
    """Labelled so that a plain `lab down` (which removes every lab member) takes them too."""
    state = scenario("shared")
    members = {
        c.name: c
        for c in client.containers.list(all=True, filters={"label": lab_module.MEMBER_LABEL})
    }
    for view in state.members:
        container = members[view.member.name]
        labels = container.labels
        assert labels[lab_module.MEMBER_LABEL] == view.member.name
        assert labels[lab_module.LAB_LABEL] == lab_module.LAB_LABEL_VALUE
        assert labels[scenarios.SCENARIO_LABEL] == "shared"
    assert state.member("sharerc").docker_mode == f"container:{state.member('ownerc').container.id}"


def test_scenario_cli_builds_shows_and_removes_only_its_part(
    scenario: BuildScenario, lab: LabState
) -> None:
    scenario("none")
    removed = run_cli("lab", "down", "--scenario", "none")
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith("- removed container nonec (")
    assert len(removed.stdout.splitlines()) == 1
    assert lab_module.status().complete  # the base lab is untouched
    status = run_cli("lab", "status", "--scenario", "none")
    assert status.returncode == ExitStatus.NOT_FOUND
    assert status.stdout.splitlines()[-1] == "missing: container nonec"
    built = run_cli("lab", "up", "--scenario", "none")
    assert built.returncode == 0, built.stderr
    assert built.stdout.splitlines()[0] == "+ created container nonec"
    assert "scenario none: network mode none" in built.stdout
    assert "  flowtrace ping nonec c1" in built.stdout
    assert built.stdout.splitlines()[-1] == "scenario none is up"
    again = run_cli("lab", "up", "--scenario", "none")
    assert again.stdout.splitlines()[0] == "everything was already up"
    status = run_cli("lab", "status", "--scenario", "none")
    assert status.returncode == 0, status.stdout

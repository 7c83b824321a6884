"""Podman as a first-class engine, on the real rootful Podman from Debian's packages
(netavark, aardvark-dns) and its Docker-compatible API, next to the Docker engine.

The Podman lab (`flowtrace lab up --engine podman`) is up for this module and taken
down at its end when this session made it and no other session uses it (its own lock,
like the Docker lab's).  Every trace runs the real command line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import LabUsers
from rootless_user import CONTAINER as ROOTLESS_CONTAINER
from rootless_user import RootlessUser
from test_trace import run_cli

from flowtrace.errors import ExitStatus
from flowtrace.lab import podman as podman_lab_api
from flowtrace.lab.base import LabState
from flowtrace.lab.podman_conf import podman_env
from flowtrace.topology.netfilter.owners import netavark_hash

pytestmark = pytest.mark.integration

OUTSIDE = "netns:ft-outside"


def podman_json(*args: str) -> Any:
    out = subprocess.run(["podman", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


def trace_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = cli(env, *args, "--json", "--no-record")
    assert result.returncode == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def podman_version() -> str:
    return str(podman_json("version", "--format", "json")["Client"]["Version"])


class PodmanSockets:
    @staticmethod
    def own_answers() -> bool:
        """Podman's own rootful socket (or flowtrace's) answers: nothing gets started."""
        from flowtrace.endpoints.podman_service import answers

        return answers("/run/podman/podman.sock") or answers("/run/flowtrace/podman.sock")


# --- the lab -------------------------------------------------------------------------------


def test_lab_up_builds_the_base_situations_and_a_pod_on_podman(podman_lab: LabState) -> None:
    running = {c.name: c for c in podman_lab.containers}
    assert set(running) == {"c1", "c2", "c3", "c4", "web", "pa", "pb"}
    assert all(c.running for c in running.values()), podman_lab.missing
    assert running["c1"].addresses.keys() == {"podman"}
    assert running["c3"].addresses.keys() == {"ftlab"}
    assert running["web"].ports == ("0.0.0.0:8081->80/tcp",)
    assert podman_lab.network("podman").bridge == "podman0"
    assert podman_lab.network("ftlab").bridge.startswith("podman")
    pod = podman_json("pod", "inspect", "ftpod")
    members = {c["Name"] for c in pod["Containers"]}
    assert members == {"ftpod-infra", "pa", "pb"}
    image = podman_json("image", "inspect", podman_lab_api.PODMAN_IMAGE)[0]
    assert image["Labels"]["flowtrace.lab"] == "1"
    again = podman_lab_api.up()
    assert again.changes == ()


# --- traces between containers by name ------------------------------------------------------


def test_ping_between_two_podman_containers_by_name(
    podman_lab: LabState, podman_api: dict[str, str]
) -> None:
    result = cli(podman_api, "ping", "--engine", "podman", "c1", "c2", "--no-record")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    c2 = podman_lab.container("c2").ip
    assert lines[0] == f"flowtrace ping c1 -> c2 ({c2})"
    assert lines[1].startswith(f"engine: podman {podman_version()} (rootful, netavark) at unix://")
    assert "note: podman0 is netavark's bridge for Podman network podman (10.88.0.0/16)" in lines
    path = next(line for line in lines if line.startswith("path: "))
    assert re.fullmatch(r"path: c1/eth0 -> host/\S+ -> host/podman0 -> host/\S+ -> c2/eth0", path)
    assert "probe 1: replied (echo reply)" in result.stdout

    doc = trace_json(podman_api, "ping", "--engine", "podman", "c1", "c2")
    engine = doc["meta"]["engine"]
    assert (engine["name"], engine["version"]) == ("podman", podman_version())
    assert engine["network_backend"] == "netavark" and engine["rootless"] is False
    assert [p["role"] for p in doc["points"]] == [
        "source",
        "veth-peer",
        "bridge",
        "veth-peer",
        "destination",
    ]
    assert doc["verdict"]["answered"] == 1


def test_tcp_and_udp_on_the_user_network_and_the_default_one(
    podman_lab: LabState, podman_api: dict[str, str]
) -> None:
    ftlab = podman_lab.network("ftlab").bridge
    udp = trace_json(podman_api, "udp", "--engine", "podman", "c3", "c4:9999")
    assert [p["id"] for p in udp["points"]][2] == f"host/{ftlab}"
    probe = udp["verdict"]["probes"][0]
    assert probe["outcome"] == "refused" and "nothing listens on 9999/udp" in probe["text"]
    tcp = trace_json(podman_api, "tcp", "--engine", "podman", "c1", "web:80")
    assert tcp["points"][-1]["id"] == "web/eth0"
    assert tcp["verdict"]["probes"][0]["outcome"] == "replied"
    closed = trace_json(podman_api, "tcp", "--engine", "podman", "c3", "c4:80")
    assert closed["verdict"]["probes"][0]["outcome"] == "refused"


def test_ping_to_the_outside_host_names_netavarks_masquerade(
    podman_lab: LabState, podman_api: dict[str, str]
) -> None:
    doc = trace_json(podman_api, "ping", "--engine", "podman", "c1", OUTSIDE)
    assert [p["id"] for p in doc["points"]][2:] == [
        "host/podman0",
        "host/ft-uplink",
        "ft-outside/eth0",
    ]
    snat = doc["packets"][0]["nat"][0]
    assert snat["kind"] == "SNAT" and snat["after"]["ip"] == "203.0.113.1"
    chain = f"NETAVARK-{netavark_hash('podman')}"
    assert snat["rule"] == f"-A {chain} ! -d 224.0.0.0/4 -j MASQUERADE"
    assert f"src={podman_lab.container('c1').ip} dst=203.0.113.2" in snat["conntrack"]
    assert (
        f"{chain} is netavark's chain for Podman network podman: it masquerades what leaves "
        "the network"
    ) in doc["notes"]
    assert doc["verdict"]["answered"] == 1


def test_outside_to_a_published_port_names_its_dnat(
    podman_lab: LabState, podman_api: dict[str, str]
) -> None:
    """Docker's FORWARD policy DROP meets netavark's rules on this host: the verdict says
    so, after the DNAT netavark made; without Docker the SYN reaches web."""
    web = podman_lab.container("web").ip
    dnat = (
        f"-A NETAVARK-DN-{netavark_hash('podman')} -p tcp -m tcp --dport 8081 -j DNAT "
        f"--to-destination {web}:80"
    )
    result = cli(
        podman_api,
        "tcp",
        "--engine",
        "podman",
        OUTSIDE,
        "203.0.113.1:8081",
        "--json",
        "--no-record",
    )
    doc = json.loads(result.stdout)
    probe = doc["verdict"]["probes"][0]
    forward = subprocess.run(["iptables", "-S", "FORWARD"], capture_output=True, text=True).stdout
    if "-P FORWARD DROP" in forward and "DOCKER" in forward:
        assert result.returncode == int(ExitStatus.NO_REPLY)
        assert probe["outcome"] == "lost" and probe["last_point"] == "host/ft-uplink"
        assert probe["rule"] == "-P FORWARD DROP"
        assert f"rewritten to {web}:80 by `{dnat}`, then dropped in host" in probe["text"]
        assert "the two engines' rules conflict on this host" in probe["text"]
    else:
        assert result.returncode == 0, result.stderr
        nat = doc["packets"][0]["nat"][0]
        assert (nat["kind"], nat["rule"]) == ("DNAT", dnat)
        assert nat["between"] == ["host/ft-uplink", "host/podman0"]


def test_the_host_to_a_published_port_names_netavarks_dnat(
    podman_lab: LabState, podman_api: dict[str, str]
) -> None:
    web = podman_lab.container("web").ip
    doc = trace_json(podman_api, "tcp", "--engine", "podman", "host", "203.0.113.1:8081")
    nat = doc["packets"][0]["nat"][0]
    assert nat["kind"] == "DNAT" and nat["after"] == {"ip": web, "port": 80}
    assert nat["rule"].startswith(f"-A NETAVARK-DN-{netavark_hash('podman')} -p tcp")
    assert doc["verdict"]["probes"][0]["outcome"] == "replied"


def test_dns_through_aardvark_dns(podman_lab: LabState, podman_api: dict[str, str]) -> None:
    ftlab = podman_lab.network("ftlab")
    c4 = podman_lab.container("c4").ip
    result = cli(podman_api, "dns", "--engine", "podman", "c3", "c4", "--no-record")
    assert result.returncode == 0, result.stderr
    pid = Path("/run/containers/networks/aardvark-dns/aardvark.pid").read_text().strip()
    lines = result.stdout.splitlines()
    assert lines[0] == "flowtrace dns c3 c4 (A)"
    assert lines[1].startswith("engine: podman ")
    assert f"resolver: {ftlab.gateway}:53 (c3's /etc/resolv.conf: {ftlab.gateway}" in lines[2]
    assert re.fullmatch(rf"path: c3/eth0 -> host/\S+ -> host/{ftlab.bridge}", lines[3])
    assert f"delivered to {ftlab.gateway}:53, a socket of aardvark-dns (pid {pid})" in lines
    assert re.search(rf"^  c4\. \d+ IN A {re.escape(str(c4))}$", result.stdout, re.M)
    assert any(
        line.startswith(f"note: {ftlab.gateway} is the gateway of Podman network ftlab")
        and f"its record for c4 (/run/containers/networks/aardvark-dns/ftlab): {c4}" in line
        for line in lines
    )
    doc = json.loads(
        cli(podman_api, "dns", "--engine", "podman", "c3", "c4", "--json", "--no-record").stdout
    )
    query, answer = doc["packets"]
    assert query["sightings"][0]["point"] == "c3/eth0"
    assert (query["sightings"][0]["dst"], query["sightings"][0]["dport"]) == (ftlab.gateway, 53)
    assert answer["direction"] == "reply" and answer["sightings"][-1]["point"] == "c3/eth0"
    assert doc["engine"]["name"] == "podman"
    # Podman's default network has no DNS: c1's resolver is the host's, outside: not asked
    default = cli(podman_api, "dns", "--engine", "podman", "c1", "c2", "--no-record")
    assert default.returncode == int(ExitStatus.NO_PATH)
    line = default.stderr.strip()
    assert "\n" not in line and "flowtrace sends nothing outside its namespaces" in line
    assert "c1 is on Podman's default network podman, which has no DNS (no aardvark-dns)" in line
    assert f"(c2 is at {podman_lab.container('c2').ip} on podman)" in line


def test_two_containers_of_one_pod_over_lo_with_the_infra_named(
    podman_lab: LabState, podman_api: dict[str, str]
) -> None:
    doc = trace_json(podman_api, "ping", "--engine", "podman", "pa", "pb")
    assert [p["id"] for p in doc["points"]] == ["pa/lo"]
    owner = (
        "pa is in Podman pod ftpod: the pod's infra container ftpod-infra owns the network "
        "namespace its containers share"
    )
    assert any(note.startswith(owner) for note in doc["notes"]), doc["notes"]
    assert all(len(p["sightings"]) == 2 for p in doc["packets"])  # out and in on lo
    assert doc["verdict"]["answered"] == 1


# --- choosing the engine ----------------------------------------------------------------------


def first_bridge(doc: dict[str, Any]) -> str:
    return next(p["id"] for p in doc["points"] if p["role"] == "bridge")


@pytest.fixture
def docker_config(tmp_path: Path, podman_api: dict[str, str]) -> Iterator[dict[str, str]]:
    """A docker CLI configuration of the test's own with a context `ftengines-podman`
    whose endpoint is the session's Podman socket (made with the Docker SDK's ContextAPI)."""
    from docker.context import ContextAPI

    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text("{}")
    before = os.environ.get("DOCKER_CONFIG")
    os.environ["DOCKER_CONFIG"] = str(config)
    try:
        ContextAPI.create_context("ftengines-podman", host=podman_api["CONTAINER_HOST"])
    finally:
        if before is None:
            del os.environ["DOCKER_CONFIG"]
        else:
            os.environ["DOCKER_CONFIG"] = before
    env = {k: v for k, v in podman_api.items() if k != "CONTAINER_HOST"}
    env["DOCKER_CONFIG"] = str(config)
    yield env


def test_the_default_engine_is_docker_and_engine_podman_asks_podman(
    lab: LabState, podman_lab: LabState, podman_api: dict[str, str]
) -> None:
    both = dict(podman_api)
    docker = json.loads(run_cli("path", "c1", "c2", "--json", env=both).stdout)
    assert first_bridge(docker) == "host/docker0"
    podman = json.loads(
        run_cli("path", "--engine", "podman", "c1", "c2", "--json", env=both).stdout
    )
    assert first_bridge(podman) == "host/podman0"
    meta = trace_json(both, "ping", "c1", "c2")["meta"]["engine"]
    assert (meta["name"], meta["selected_by"]) == ("docker", "Docker's default socket")


def test_docker_host_and_contexts_are_read_as_the_docker_cli_reads_them(
    lab: LabState, podman_lab: LabState, docker_config: dict[str, str], podman_api: dict[str, str]
) -> None:
    socket = podman_api["CONTAINER_HOST"]
    via_host = trace_json({**docker_config, "DOCKER_HOST": socket}, "ping", "c1", "c2")
    assert via_host["meta"]["engine"]["selected_by"] == "DOCKER_HOST"
    assert first_bridge(via_host) == "host/podman0"

    flag = trace_json(docker_config, "ping", "--context", "ftengines-podman", "c1", "c2")
    assert flag["meta"]["engine"]["name"] == "podman"
    assert flag["meta"]["engine"]["selected_by"] == "--context ftengines-podman"

    env_context = {**docker_config, "DOCKER_CONTEXT": "ftengines-podman"}
    named = trace_json(env_context, "ping", "c1", "c2")
    assert named["meta"]["engine"]["selected_by"] == "DOCKER_CONTEXT=ftengines-podman"
    # DOCKER_HOST wins over DOCKER_CONTEXT, --context over both (as with the docker CLI)
    docker_socket = {**env_context, "DOCKER_HOST": "unix:///var/run/docker.sock"}
    assert first_bridge(trace_json(docker_socket, "ping", "c1", "c2")) == "host/docker0"
    over = trace_json(docker_socket, "ping", "--context", "ftengines-podman", "c1", "c2")
    assert first_bridge(over) == "host/podman0"

    config = Path(docker_config["DOCKER_CONFIG"]) / "config.json"
    config.write_text(json.dumps({"currentContext": "ftengines-podman"}))
    current = trace_json(docker_config, "ping", "c1", "c2")
    assert current["meta"]["engine"]["selected_by"] == "docker context ftengines-podman (current)"


def test_engine_mistakes_are_one_line_errors(
    lab: LabState, podman_lab: LabState, docker_config: dict[str, str], podman_api: dict[str, str]
) -> None:
    wrong = run_cli(
        "ping", "--engine", "docker", "c1", "c2",
        env={**docker_config, "DOCKER_HOST": podman_api["CONTAINER_HOST"]},
    )  # fmt: skip
    assert wrong.returncode == int(ExitStatus.NO_DOCKER)
    assert wrong.stderr.strip().splitlines() == [
        f"flowtrace: DOCKER_HOST leads to podman {podman_version()} at "
        f"{podman_api['CONTAINER_HOST']}, not docker"
    ]
    missing = run_cli("ping", "--context", "ftengines-nosuch", "c1", "c2", env=docker_config)
    assert missing.returncode == int(ExitStatus.NOT_FOUND)
    assert missing.stderr.strip() == (
        "flowtrace: no Docker context named 'ftengines-nosuch' (see `docker context ls`)"
    )
    bad = run_cli("ping", "--engine", "lxc", "c1", "c2")
    assert bad.returncode == int(ExitStatus.USAGE) and len(bad.stderr.strip().splitlines()) == 1
    pod = run_cli("ping", "pa", "pb", env=podman_api)  # Docker, the default, has no pa
    assert pod.returncode == int(ExitStatus.NOT_FOUND)
    assert pod.stderr.strip().endswith("; Podman has a container named pa: add --engine podman")
    only_podman = run_cli("ping", "--engine", "podman", "ftengines-nosuch", "c2", env=podman_api)
    assert only_podman.returncode == int(ExitStatus.NOT_FOUND)
    assert "no container named 'ftengines-nosuch' on podman" in only_podman.stderr


def test_a_podman_api_flowtrace_starts_is_stopped_when_it_ends(
    podman_lab: LabState, podman_api: dict[str, str]
) -> None:
    if PodmanSockets.own_answers():
        pytest.skip("Podman's own socket answers here: flowtrace starts nothing")
    env = {k: v for k, v in podman_api.items() if k != "CONTAINER_HOST"}
    result = run_cli("ping", "--engine", "podman", "c1", "c2", "--no-record", env=env)
    assert result.returncode == 0, result.stderr
    assert "(--engine podman; flowtrace started its API for this run, pid " in result.stdout
    engine = trace_json(env, "ping", "--engine", "podman", "c1", "c2")["meta"]["engine"]
    assert engine["service_started_by_flowtrace"] is True
    assert not os.path.exists(f"/proc/{engine['service_pid']}")  # stopped with flowtrace
    assert not os.path.exists(engine["host"].removeprefix("unix://"))  # and its socket gone


# --- rootless Podman (rootless_user.py) ------------------------------------------------------


def test_a_rootless_container_is_traced_up_to_its_userspace_carrier(
    podman_lab: LabState, rootless_user: RootlessUser
) -> None:
    env = {"CONTAINER_HOST": rootless_user.socket}
    result = run_cli("ping", "--engine", "podman", ROOTLESS_CONTAINER, "netns:ft-outside", "--json",
                     "--no-record", env=env)  # fmt: skip
    doc = json.loads(result.stdout)
    engine = doc["meta"]["engine"]
    assert engine["name"] == "podman" and engine["rootless"] is True
    assert [p["id"] for p in doc["points"]] == [
        f"{ROOTLESS_CONTAINER}/tap0"
    ]  # no veth path invented
    rootless = next(n for n in doc["notes"] if "runs on rootless Podman" in n)
    assert "not past slirp4netns or pasta" in rootless
    slirp = [
        pid for pid in rootless_user.pids()
        if Path(f"/proc/{pid}/comm").read_text().strip() == "slirp4netns"
    ]  # fmt: skip
    carrier = next(n for n in doc["notes"] if "the tap device of" in n)
    assert carrier.startswith(
        f"the packet leaves {ROOTLESS_CONTAINER} through tap0, the tap device of slirp4netns (pid "
        f"{slirp[0]}, user {rootless_user.name}), a TCP/IP stack in userspace"
    )
    # the echo went out of tap0 and what came back was slirp4netns's answer
    assert doc["packets"][0]["sightings"][0]["point"] == f"{ROOTLESS_CONTAINER}/tap0"
    assert doc["verdict"]["answered"] == 1


def test_the_rootless_header_and_path(podman_lab: LabState, rootless_user: RootlessUser) -> None:
    env = {"CONTAINER_HOST": rootless_user.socket}
    path = run_cli("path", "--engine", "podman", ROOTLESS_CONTAINER, "netns:ft-outside", env=env)
    assert path.returncode == 0, path.stderr
    assert "note: the packet leaves ftrl-c1 through tap0, the tap device of slirp4netns" in (
        path.stdout
    )
    ping = run_cli(
        "ping", "--engine", "podman", ROOTLESS_CONTAINER, "netns:ft-outside", "--no-record",
        env=env,
    )  # fmt: skip
    header = ping.stdout.splitlines()[1]
    assert header == (
        f"engine: podman {engine_version(rootless_user)} (rootless) at {rootless_user.socket} "
        "(CONTAINER_HOST (--engine podman))"
    )


def engine_version(user: RootlessUser) -> str:
    """Podman's version (the rootless engine is the same program)."""
    out = subprocess.run(["podman", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


# --- taking the Podman lab down (last in this module) -----------------------------------------


def test_lab_down_engine_podman_removes_exactly_the_podman_lab(
    lab: LabState, podman_lab: LabState, podman_lab_users: LabUsers, podman_api: dict[str, str]
) -> None:
    podman_lab_users.exclusive(float(os.environ.get("FLOWTRACE_LAB_WAIT", "300")))
    stranger = f"ftpodtest-stranger-{os.getpid()}"
    with podman_env() as env:  # the lab's environment: a sandbox's rlimits
        subprocess.run(
            ["podman", "run", "-d", "--name", stranger, "--network", "podman",
             "--label", "flowtrace.lab=1", podman_lab_api.PODMAN_IMAGE, "sleep", "600"],
            capture_output=True, check=True, env=env,
        )  # fmt: skip
    try:
        result = run_cli("lab", "down", "--engine", "podman", env=podman_api)
        # the stranger runs on the lab's image (and carries its label, not the member's)
        assert result.returncode == int(ExitStatus.ERROR), result.stderr
        assert f"kept image {podman_lab_api.PODMAN_IMAGE}" in result.stderr
        removed = result.stdout.splitlines()
        for name in ("c1", "c2", "c3", "c4", "web", "pa", "pb"):
            assert any(line.startswith(f"- removed container {name} (") for line in removed)
        assert "- removed pod ftpod (and its infra container ftpod-infra)" in removed
        assert "- removed Podman network ftlab" in removed
        assert not any("ft-outside" in line for line in removed)  # the Docker lab uses it
        left = {c["Names"][0] for c in podman_json("ps", "-a", "--format", "json")}
        assert stranger in left and not left & set(podman_lab_api.ALL_NAMES)
        assert os.path.exists("/run/netns/ft-outside")
        docker_c1 = run_cli("path", "c1", "c2", env=podman_api)
        assert docker_c1.returncode == 0 and "host/docker0" in docker_c1.stdout
    finally:
        subprocess.run(
            ["podman", "rm", "-f", "-t", "0", stranger], capture_output=True, check=False
        )
        try:
            again = run_cli("lab", "up", "--engine", "podman", env=podman_api)
            assert again.returncode == 0, again.stderr
        finally:
            podman_lab_users.shared()

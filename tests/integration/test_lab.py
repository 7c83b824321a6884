"""The Docker lab on the real engine and kernel: what `lab up` makes, what `lab down`
removes (and spares), and that the lab's paths carry traffic through Docker's NAT."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import docker
import pytest
from pyroute2 import IPRoute, netns

from flowtrace import lab as lab_api
from flowtrace.endpoints.files import hosts_entries, resolv_nameservers
from flowtrace.endpoints.netns import netns_inode, run_in_netns
from flowtrace.errors import ExitStatus
from flowtrace.lab import LabState
from flowtrace.lab.outside import refuse_host_namespace
from flowtrace.lab.podman import members_present

pytestmark = pytest.mark.integration


def flowtrace_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a child process, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "flowtrace", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flowtrace: ")
    return lines[0]


def link_cidrs(ifname: str) -> tuple[bool, list[str]]:
    """(up, IPv4 CIDRs) of a link in the calling thread's namespace."""
    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=ifname)
        assert index, f"no link {ifname}"
        up = bool(ipr.get_links(index[0])[0]["flags"] & 1)
        cidrs = [
            f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=index[0], family=socket.AF_INET)
        ]
    return up, cidrs


def outside_shared() -> bool:
    """The Podman lab is up too: `lab down` keeps the outside host both labs use."""
    return members_present()


def host_has_link(ifname: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=ifname))


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    docker_client = docker.from_env()
    yield docker_client
    docker_client.close()


@dataclass
class Foreign:
    """Things that are not the lab's, made to check that the lab leaves them alone."""

    image: str
    names: list[str]
    namespaces: list[str]


@pytest.fixture
def foreign(client: Any) -> Iterator[Foreign]:
    """A throwaway image of its own (not the lab's); removes whatever the test made from it."""
    tag = f"ftforeign/busybox:{secrets.token_hex(4)}"
    with open(lab_api.BUSYBOX, "rb") as binary:
        data = lab_api.build_image_tar(binary.read(), ["bin/sh", "bin/sleep"], page="foreign")
    repository, version = tag.split(":")
    client.api.import_image_from_data(data, repository=repository, tag=version)
    made = Foreign(image=tag, names=[], namespaces=[])
    try:
        yield made
    finally:
        for name in made.names:
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(name).remove(force=True)
        for name in made.namespaces:
            if os.path.exists(f"/run/netns/{name}"):
                netns.remove(name)
        client.images.remove(tag, force=True)


def run_foreign(client: Any, foreign: Foreign, name: str) -> Any:
    foreign.names.append(name)
    return client.containers.run(foreign.image, ["sleep", "600"], name=name, detach=True)


# --- the lab as `up` makes it ----------------------------------------------------------


def test_up_makes_the_containers_it_reports(lab: LabState, client: Any) -> None:
    assert lab.complete, lab.missing
    expected_network = {
        "c1": "bridge",
        "c2": "bridge",
        "c3": "ftlab",
        "c4": "ftlab",
        "web": "bridge",
    }
    assert [c.name for c in lab.containers] == list(expected_network)
    for item in lab.containers:
        attrs = client.api.inspect_container(item.name)
        assert attrs["Id"] == item.id
        assert attrs["State"]["Running"]
        assert attrs["Config"]["Labels"][lab_api.LAB_LABEL] == "1"
        assert attrs["Config"]["Image"] == lab_api.IMAGE
        assert attrs["HostConfig"]["RestartPolicy"]["Name"] in ("", "no")
        assert list(attrs["NetworkSettings"]["Networks"]) == [expected_network[item.name]]
        assert item.netns == f"/proc/{attrs['State']['Pid']}/ns/net"
        assert netns_inode(item.netns) != netns_inode("/proc/self/ns/net")
        assert (
            item.ip
            == attrs["NetworkSettings"]["Networks"][expected_network[item.name]]["IPAddress"]
        )
    web = client.api.inspect_container("web")
    assert web["Config"]["Cmd"][0] == "httpd"
    assert web["HostConfig"]["PortBindings"]["80/tcp"][0]["HostPort"] == str(lab_api.WEB_PORT)
    assert "0.0.0.0:8080->80/tcp" in lab.container("web").ports
    pid1 = client.containers.get("c1").top()["Processes"][0]
    assert "sleep" in pid1[-1]


def test_up_makes_the_image_and_networks(lab: LabState, client: Any) -> None:
    image = client.images.get(lab_api.IMAGE)
    assert image.id == lab.image_id
    assert image.labels[lab_api.LAB_LABEL] == "1"
    network = client.networks.get(lab_api.LAB_NETWORK)
    assert network.attrs["Labels"][lab_api.LAB_LABEL] == "1"
    assert lab.network(lab_api.LAB_NETWORK).bridge == f"br-{network.id[:12]}"
    assert lab.network("bridge").bridge == "docker0"
    _, docker0 = link_cidrs("docker0")
    assert lab.network("bridge").gateway == docker0[0].split("/")[0]


def test_up_makes_the_outside_host(lab: LabState) -> None:
    outside = lab.outside
    assert outside.netns_path == "/run/netns/ft-outside"
    assert os.path.exists(outside.netns_path)
    up, cidrs = link_cidrs(lab_api.UPLINK)
    assert up and cidrs == [f"{lab_api.UPLINK_IP}/{lab_api.OUTSIDE_PREFIXLEN}"]
    inside_up, inside_cidrs = run_in_netns(outside.netns_path, link_cidrs, "eth0")
    assert inside_up and inside_cidrs == [f"{lab_api.OUTSIDE_IP}/{lab_api.OUTSIDE_PREFIXLEN}"]
    with IPRoute() as ipr:
        alias = ipr.get_links(ipr.link_lookup(ifname=lab_api.UPLINK)[0])[0].get("IFLA_IFALIAS")
    assert alias == lab_api.UPLINK_ALIAS
    assert outside.paired and not outside.problems


def test_outside_route_leaves_the_hosts_destinations_alone(lab: LabState) -> None:
    """The lab's route must not swallow the package mirrors or name servers."""
    with open("/etc/hosts") as hosts:
        destinations = [ip for ip, _ in hosts_entries(hosts.read()) if "." in ip]
    with open("/etc/resolv.conf") as resolv:
        destinations += resolv_nameservers(resolv.read())
    with IPRoute() as ipr:
        uplink = ipr.link_lookup(ifname=lab_api.UPLINK)[0]
        for ip in destinations:
            route = ipr.route("get", dst=ip)[0]
            assert route.get("RTA_OIF") != uplink, f"{ip} is routed into the lab"
        assert ipr.route("get", dst=lab_api.OUTSIDE_IP)[0].get("RTA_OIF") == uplink


def test_changes_meant_for_the_outside_host_never_hit_the_host(lab: LabState) -> None:
    """The last guard before ft-outside's eth0 is changed or deleted: not in our namespace."""
    host = netns_inode("/proc/self/ns/net")
    with pytest.raises(lab_api.LabConflictError, match="names this host's own namespace"):
        refuse_host_namespace(host)
    run_in_netns(lab.outside.netns_path, refuse_host_namespace, host)


def test_up_twice_changes_nothing(lab: LabState) -> None:
    again = lab_api.up()
    assert again.changes == ()
    assert [c.id for c in again.containers] == [c.id for c in lab.containers]
    assert again.image_id == lab.image_id


# --- traffic through the lab -------------------------------------------------------------


def test_outside_host_reaches_published_port(lab_now: LabState) -> None:
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            lab_api.OUTSIDE_NETNS,
            lab_api.BUSYBOX,
            "wget",  # no -T: busybox 1.35's `wget -T` crashes (SIGSEGV); timeout= below
            "-q",
            "-O",
            "-",
            lab_api.WEB_URL,
        ],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert lab_api.WEB_MARKER in result.stdout


def test_container_reaches_outside_host(lab_now: LabState, client: Any) -> None:
    code, output = client.containers.get("c1").exec_run(
        ["ping", "-c", "1", "-W", "2", lab_api.OUTSIDE_IP]
    )
    assert code == 0, output.decode()
    assert b"1 packets received" in output


def test_c3_reaches_c4_by_name(lab_now: LabState, client: Any) -> None:
    code, output = client.containers.get("c3").exec_run(["ping", "-c", "1", "-W", "2", "c4"])
    assert code == 0, output.decode()
    assert f"({lab_now.container('c4').ip})".encode() in output


# --- the command line ----------------------------------------------------------------------


def test_status_cli_shows_the_lab(lab_now: LabState) -> None:
    result = flowtrace_cli("lab", "status")
    assert result.returncode == 0, result.stderr
    for item in lab_now.containers:
        assert f"{item.name} " in result.stdout
        assert item.id[:12] in result.stdout
        assert f"{item.netns}" in result.stdout
    inside = f"{lab_api.OUTSIDE_IP}/{lab_api.OUTSIDE_PREFIXLEN}"
    host_side = f"ft-uplink {lab_api.UPLINK_IP}/{lab_api.OUTSIDE_PREFIXLEN}"
    for word in ("ftlab", "docker0", "ft-outside", inside, host_side):
        assert word in result.stdout
    assert "0.0.0.0:8080->80/tcp" in result.stdout
    assert "the lab is up" in result.stdout


def test_up_cli_says_everything_was_up(lab_now: LabState) -> None:
    result = flowtrace_cli("lab", "up")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("everything was already up")


def test_cli_without_privileges_fails_with_not_root() -> None:
    result = subprocess.run(
        [
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--",
            sys.executable,
            "-m",
            "flowtrace",
            "lab",
            "status",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = assert_one_line_error(result, int(ExitStatus.NOT_ROOT))
    assert "root" in line


def test_cli_without_docker_fails_with_no_docker() -> None:
    result = flowtrace_cli("lab", "up", env={"DOCKER_HOST": "unix:///run/flowtrace-no-such.sock"})
    line = assert_one_line_error(result, int(ExitStatus.NO_DOCKER))
    assert "start dockerd" in line


# --- taking the lab down (these run last: see conftest) -----------------------------------


@pytest.mark.lab_destructive
def test_down_removes_the_lab_and_nothing_else(
    lab_exclusive: None, client: Any, foreign: Foreign
) -> None:
    stranger = run_foreign(client, foreign, f"ftforeign-{secrets.token_hex(4)}")
    # A stranger built on the lab image carries the image's label but is not the lab's.
    foreign.names.append(f"ftforeign-{secrets.token_hex(4)}")
    on_lab_image = client.containers.run(
        lab_api.IMAGE, ["sleep", "600"], name=foreign.names[-1], detach=True
    )
    namespace = f"ftforeign-{secrets.token_hex(4)}"
    foreign.namespaces.append(namespace)
    netns.create(namespace)

    result = flowtrace_cli("lab", "down")
    # The lab image is kept while the stranger uses it, and the user is told.
    line = assert_one_line_error(result, int(ExitStatus.ERROR))
    assert "kept image flowtrace-lab/busybox:1" in line and on_lab_image.name in line
    assert "- removed container c1 (" in result.stdout
    shared = outside_shared()
    assert ("- removed namespace ft-outside" in result.stdout) is not shared
    on_lab_image.remove(force=True)

    result = flowtrace_cli("lab", "down")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "- removed image flowtrace-lab/busybox:1"

    labelled = client.containers.list(all=True, filters={"label": lab_api.MEMBER_LABEL})
    assert labelled == []
    for name in lab_api.CONTAINER_NAMES:
        with pytest.raises(docker.errors.NotFound):
            client.containers.get(name)
    with pytest.raises(docker.errors.NotFound):
        client.networks.get(lab_api.LAB_NETWORK)
    with pytest.raises(docker.errors.ImageNotFound):
        client.images.get(lab_api.IMAGE)
    assert os.path.exists(lab_api.OUTSIDE_NETNS_PATH) is shared
    assert host_has_link(lab_api.UPLINK) is shared

    stranger.reload()
    assert stranger.status == "running"
    assert os.path.exists(f"/run/netns/{namespace}")
    assert client.images.get(foreign.image)

    status = flowtrace_cli("lab", "status")
    assert status.returncode == int(ExitStatus.NOT_FOUND)
    assert "missing: image flowtrace-lab/busybox:1, network ftlab, container c1" in status.stdout
    again = flowtrace_cli("lab", "down")
    assert again.returncode == 0
    assert again.stdout.strip() == "nothing to remove: the lab was not up"


@pytest.mark.lab_destructive
def test_down_lists_what_it_removed(lab_exclusive: None) -> None:
    result = flowtrace_cli("lab", "down")
    assert result.returncode == 0, result.stderr
    removed = result.stdout.splitlines()
    for name in lab_api.CONTAINER_NAMES:
        assert any(line.startswith(f"- removed container {name} (") for line in removed)
    for part in ("network ftlab", "image flowtrace-lab/busybox:1"):
        assert f"- removed {part}" in removed
    outside = ("- removed namespace ft-outside", "- removed veth ft-uplink <-> ft-outside/eth0")
    shared = outside_shared()
    assert all((line in removed) is not shared for line in outside)


@pytest.mark.lab_destructive
def test_up_refuses_a_stranger_named_like_a_lab_container(
    lab_exclusive: None, client: Any, foreign: Foreign
) -> None:
    lab_api.down()
    stranger = run_foreign(client, foreign, "c1")
    result = flowtrace_cli("lab", "up")
    line = assert_one_line_error(result, int(ExitStatus.ERROR))
    assert "a container named c1 exists and is not part of the flowtrace lab" in line
    stranger.reload()
    assert stranger.status == "running"
    assert stranger.name == "c1"
    # Nothing was made before the conflict was found.
    with pytest.raises(docker.errors.NotFound):
        client.networks.get(lab_api.LAB_NETWORK)
    assert os.path.exists(lab_api.OUTSIDE_NETNS_PATH) is outside_shared()
    stranger.remove(force=True)


@pytest.mark.lab_destructive
def test_up_repairs_only_what_is_stopped_or_missing(lab_exclusive: None, client: Any) -> None:
    before = lab_api.up()
    client.containers.get("c2").kill()
    client.containers.get("c4").remove(force=True)
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=lab_api.UPLINK)[0], state="down")

    broken = lab_api.status()
    assert set(broken.missing) == {"container c2 (exited)", "container c4", "ft-uplink up"}

    after = lab_api.up()
    assert after.changes == (
        "started container c2 (was exited)",
        "created container c4",
        "ft-uplink up",
    )
    assert after.complete
    for name in ("c1", "c2", "c3", "web"):
        assert after.container(name).id == before.container(name).id
    assert after.container("c4").id != before.container("c4").id


@pytest.mark.lab_destructive
def test_up_refuses_an_outside_network_in_use(lab_exclusive: None, client: Any) -> None:
    lab_api.down()
    stranger = f"ftf-{secrets.token_hex(3)}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=stranger, kind="veth", peer=f"{stranger}p")
        try:
            index = ipr.link_lookup(ifname=stranger)[0]
            ipr.addr("add", index=index, address="203.0.113.9", prefixlen=32)
            result = flowtrace_cli("lab", "up")
        finally:
            ipr.link("del", index=ipr.link_lookup(ifname=stranger)[0])
    line = assert_one_line_error(result, int(ExitStatus.ERROR))
    assert (
        f"203.0.113.0/28 is already in use on this host (address 203.0.113.9/32 on {stranger})"
        in line
    )
    assert host_has_link(lab_api.UPLINK) is outside_shared()
    assert os.path.exists(lab_api.OUTSIDE_NETNS_PATH) is outside_shared()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("c1")

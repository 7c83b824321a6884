"""The Podman lab's views of what Podman reports (recorded `podman container inspect` and
`podman network inspect` answers of Podman 4.3.1 here) and its fixed parts."""

from __future__ import annotations

import json
from pathlib import Path

from flowtrace.lab import podman
from flowtrace.lab.base import LabState

DATA = Path(__file__).resolve().parents[2] / "data" / "engines"


def test_a_lab_container_as_podman_inspects_it() -> None:
    attrs = json.loads((DATA / "podman-4.3-cli-inspect-c1.json").read_text())
    assert podman.is_lab_member(attrs, "c1") and not podman.is_lab_member(attrs, "c2")
    view = podman.container_view("c1", attrs)
    assert view.running and view.id == attrs["Id"]
    assert list(view.addresses) == ["podman"] and view.ip and view.ip.startswith("10.88.")
    assert view.netns == f"/proc/{attrs['State']['Pid']}/ns/net"
    assert podman.container_view("c1", None).status == "missing"


def test_published_ports_and_a_pod_members_address() -> None:
    web = {
        "Id": "w", "State": {"Status": "running", "Pid": 7},
        "NetworkSettings": {"Ports": {"80/tcp": [{"HostIp": "", "HostPort": "8081"}]},
                            "Networks": {"podman": {"IPAddress": "10.88.0.16"}}},
    }  # fmt: skip
    assert podman.container_view("web", web).ports == ("0.0.0.0:8081->80/tcp",)
    member = {"Id": "p", "State": {"Status": "running", "Pid": 8},
              "NetworkSettings": {"IPAddress": "10.88.0.17", "Networks": {}}}  # fmt: skip
    assert podman.container_view("pa", member).addresses == {"pod": "10.88.0.17"}


def test_a_network_as_podman_inspects_it() -> None:
    attrs = json.loads((DATA / "podman-4.3-cli-network-ftlab.json").read_text())[0]
    view = podman.network_view("ftlab", attrs)
    assert view.present and view.bridge.startswith("podman")
    assert view.subnet.startswith("10.89.") and view.gateway.startswith("10.89.")
    assert not podman.network_view("ftlab", None).present


def test_the_podman_labs_parts_and_its_summary() -> None:
    assert podman.ALL_NAMES == ("c1", "c2", "c3", "c4", "web", "pa", "pb")
    assert dict(podman.CONTAINERS[4].ports) == {80: podman.PODMAN_WEB_PORT}
    assert podman.PODMAN_WEB_PORT != 8080  # the Docker lab's web publishes 8080
    assert podman.PODMAN_IMAGE == "localhost/flowtrace-lab/busybox:1"
    whole = LabState(image=podman.PODMAN_IMAGE)
    assert podman.render_summary(whole).startswith("the Podman lab is up: try `flowtrace ping")
    part = LabState(missing=("pod ftpod", "container pa"))
    assert podman.render_summary(part) == "missing: pod ftpod, container pa"

"""The lab in words: aligned tables, the summary line, changes and removals."""

from __future__ import annotations

from flowtrace.lab.base import LabContainer, LabNetwork, LabState, OutsideHost
from flowtrace.lab.render import render_changes, render_removed, render_state, render_summary


def whole_lab() -> LabState:
    return LabState(
        image_id="sha256:0123456789abcdef",
        networks=(
            LabNetwork("bridge", "n1", "docker0", "172.17.0.0/16", "172.17.0.1"),
            LabNetwork("ftlab", "n2", "br-0123456789ab", "172.18.0.0/16", "172.18.0.1"),
        ),
        containers=(
            LabContainer("c1", "aaaaaaaaaaaaXYZ", "running", 42, {"bridge": "172.17.0.2"}),
            LabContainer(
                "web",
                "bbbbbbbbbbbbXYZ",
                "running",
                43,
                {"bridge": "172.17.0.4"},
                ("0.0.0.0:8080->80/tcp",),
            ),
        ),
        outside=OutsideHost(
            present=True,
            addresses=("203.0.113.2/28",),
            up=True,
            uplink_present=True,
            uplink_addresses=("203.0.113.1/28",),
            uplink_up=True,
            paired=True,
        ),
    )


def test_render_whole_lab() -> None:
    state = whole_lab()
    assert state.complete and state.outside.problems == []
    text = render_state(state)
    lines = text.splitlines()
    assert lines[0] == "image flowtrace-lab/busybox:1  0123456789ab"
    header = next(line for line in lines if line.startswith("CONTAINER"))
    c1 = next(line for line in lines if line.startswith("c1 "))
    assert c1.split() == [
        "c1",
        "aaaaaaaaaaaa",
        "running",
        "/proc/42/ns/net",
        "bridge",
        "172.17.0.2",
        "-",
    ]
    assert header.index("NETNS") == c1.index("/proc/42/ns/net")  # columns line up
    assert "0.0.0.0:8080->80/tcp" in text
    assert "br-0123456789ab  172.18.0.0/16  172.18.0.1" in text
    assert "/run/netns/ft-outside  eth0       203.0.113.2/28  ft-uplink 203.0.113.1/28" in text
    assert all(line == line.rstrip() for line in lines)
    assert render_summary(state).startswith("the lab is up")


def test_render_missing_parts() -> None:
    state = LabState(
        networks=(
            LabNetwork("bridge", "n1", "docker0", "172.17.0.0/16", "172.17.0.1"),
            LabNetwork("ftlab"),
        ),
        containers=(LabContainer("c1"), LabContainer("c2", "cccccccccccc", "exited")),
        missing=("network ftlab", "container c1", "container c2 (exited)"),
    )
    text = render_state(state)
    assert "ftlab    missing" in text
    c2 = next(line for line in text.splitlines() if line.startswith("c2 "))
    assert c2.split()[:4] == ["c2", "cccccccccccc", "exited", "-"]
    assert "ft-outside    missing" in text
    assert render_summary(state) == "missing: network ftlab, container c1, container c2 (exited)"
    assert OutsideHost().problems == ["namespace ft-outside", "veth ft-uplink"]


def test_render_changes_and_removals() -> None:
    assert render_changes(()) == "everything was already up"
    assert render_changes(["created network ftlab"]) == "+ created network ftlab"
    assert render_removed([]) == "nothing to remove: the lab was not up"
    assert render_removed(["network ftlab", "namespace ft-outside"]) == (
        "- removed network ftlab\n- removed namespace ft-outside"
    )

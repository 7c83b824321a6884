"""The Docker lab: the container-networking situations flowtrace is demonstrated and tested on.

The face the CLI, the tests and scripts use: the base lab's verbs (`up`, `status`,
`down`), its state and text, and its names and addresses.  A scenario's verbs are
flowtrace.lab.scenarios', the scenarios themselves flowtrace.lab.catalog's.

Inside, imports run one way, each module on the ones before it: base (names, views)
<- guard (root, lock) <- links (netlink facts) <- engine (Docker SDK) <- render <-
images <- outside <- podman_conf <- podman (the lab on Podman) <- macvlan <- catalog <-
core (the base lab's verbs) <- scenarios; choose says which engine's lab a command means.
Scenario ipv6 runs on an engine of the lab's own (own_engine, before ipv6 and catalog).
"""

from flowtrace.lab.base import (
    BUSYBOX,
    CONTAINER_NAMES,
    CONTAINERS,
    DEFAULT_NETWORK,
    IMAGE,
    LAB_LABEL,
    LAB_LABEL_VALUE,
    LAB_NETWORK,
    MEMBER_LABEL,
    OUTSIDE_IP,
    OUTSIDE_NET,
    OUTSIDE_NETNS,
    OUTSIDE_NETNS_PATH,
    OUTSIDE_PREFIXLEN,
    SCENARIO_LABEL,
    UPLINK,
    UPLINK_ALIAS,
    UPLINK_IP,
    WEB_CONTAINER,
    WEB_CONTAINER_PORT,
    WEB_MARKER,
    WEB_PORT,
    WEB_ROOT,
    WEB_URL,
    ContainerSpec,
    LabConflictError,
    LabContainer,
    LabNetwork,
    LabPartlyRemovedError,
    LabState,
    OutsideHost,
)
from flowtrace.lab.core import down, status, up
from flowtrace.lab.images import build_image_tar
from flowtrace.lab.render import render_changes, render_removed, render_state, render_summary

__all__ = [
    "BUSYBOX",
    "CONTAINERS",
    "CONTAINER_NAMES",
    "DEFAULT_NETWORK",
    "IMAGE",
    "LAB_LABEL",
    "LAB_LABEL_VALUE",
    "LAB_NETWORK",
    "MEMBER_LABEL",
    "OUTSIDE_IP",
    "OUTSIDE_NET",
    "OUTSIDE_NETNS",
    "OUTSIDE_NETNS_PATH",
    "OUTSIDE_PREFIXLEN",
    "SCENARIO_LABEL",
    "UPLINK",
    "UPLINK_ALIAS",
    "UPLINK_IP",
    "WEB_CONTAINER",
    "WEB_CONTAINER_PORT",
    "WEB_MARKER",
    "WEB_PORT",
    "WEB_ROOT",
    "WEB_URL",
    "ContainerSpec",
    "LabConflictError",
    "LabContainer",
    "LabNetwork",
    "LabPartlyRemovedError",
    "LabState",
    "OutsideHost",
    "build_image_tar",
    "down",
    "render_changes",
    "render_removed",
    "render_state",
    "render_summary",
    "status",
    "up",
]

"""The lab's ground floor: its names, labels and addresses, and the views of its parts.

Every other lab module imports its constants from here, so a name or an address has
one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flowtrace.errors import FlowtraceError

#: Label on everything Docker makes for the lab (image, networks, containers).
LAB_LABEL = "flowtrace.lab"
LAB_LABEL_VALUE = "1"
#: Set on lab containers only (images pass their labels on to any container made from
#: them, so LAB_LABEL alone would also mark a stranger's container built on the image).
MEMBER_LABEL = "flowtrace.lab.member"
#: Digest of a container's settings: a container made by an older spec is recreated.
SPEC_LABEL = "flowtrace.lab.spec"
#: On every container (and network) a scenario makes: the scenario's name, so
#: `lab down --scenario NAME` removes that scenario and leaves the base lab up.
SCENARIO_LABEL = "flowtrace.lab.scenario"

IMAGE_REPOSITORY = "flowtrace-lab/busybox"
IMAGE_TAG = "1"
IMAGE = f"{IMAGE_REPOSITORY}:{IMAGE_TAG}"
BUSYBOX = "/bin/busybox"

DEFAULT_NETWORK = "bridge"  # Docker's default bridge network, device docker0
LAB_NETWORK = "ftlab"

OUTSIDE_NETNS = "ft-outside"
OUTSIDE_NETNS_PATH = f"/run/netns/{OUTSIDE_NETNS}"
OUTSIDE_IFNAME = "eth0"
UPLINK = "ft-uplink"
#: The uplink's ifalias marks it as the lab's (links cannot carry labels).
UPLINK_ALIAS = "flowtrace lab uplink"
#: A /28, not the whole TEST-NET-3 /24: a host route for a /24 would capture every
#: 203.0.113.x, and machines like this one reach their package mirrors there
#: (/etc/hosts maps pypi.org and deb.debian.org to 203.0.113.80).
OUTSIDE_NET = "203.0.113.0/28"
OUTSIDE_PREFIXLEN = 28
OUTSIDE_IP = "203.0.113.2"
UPLINK_IP = "203.0.113.1"

WEB_CONTAINER = "web"
WEB_PORT = 8080  # published on the host
WEB_CONTAINER_PORT = 80
WEB_ROOT = "/www"
#: What web (and the `ports` scenario's containers) run: busybox httpd serving WEB_ROOT.
HTTPD_COMMAND = ("httpd", "-f", "-p", str(WEB_CONTAINER_PORT), "-h", WEB_ROOT)
#: The text the lab's web page contains, to recognise it in a reply.
WEB_MARKER = "flowtrace lab web"
WEB_PAGE = f"<!doctype html>\n<title>{WEB_MARKER}</title>\n<p>{WEB_MARKER}: hello from web</p>\n"
WEB_URL = f"http://{UPLINK_IP}:{WEB_PORT}/"


class LabConflictError(FlowtraceError):
    """Something that is not the lab's holds a name or an address the lab needs."""


class LabPartlyRemovedError(LabConflictError):
    """`down()` removed what it could but something else still uses part of the lab."""

    def __init__(self, message: str, removed: list[str]) -> None:
        super().__init__(message)
        self.removed = removed


def settings_digest(settings: list[Any]) -> str:
    """Short digest of a container's settings (JSON), stored as SPEC_LABEL.

    hashlib and json are imported here, at their one use: the CLI imports the lab on
    every start and most commands never make a container.
    """
    import hashlib
    import json

    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:12]


def member_labels(name: str, digest: str) -> dict[str, str]:
    """The labels of a lab container: the lab's, its own name, its settings' digest."""
    return {LAB_LABEL: LAB_LABEL_VALUE, MEMBER_LABEL: name, SPEC_LABEL: digest}


@dataclass(frozen=True)
class ContainerSpec:
    """How one base lab container is made."""

    name: str
    network: str
    command: tuple[str, ...] = ("sleep", "infinity")
    #: (container port, host port), TCP.
    ports: tuple[tuple[int, int], ...] = ()

    def digest(self) -> str:
        """Short digest of the settings, stored as a label to notice outdated containers."""
        return settings_digest([IMAGE, self.network, list(self.command), list(self.ports)])


#: In creation order: c1, c2 then web get .2, .3, .4 on docker0 on a quiet engine.
CONTAINERS = (
    ContainerSpec("c1", DEFAULT_NETWORK),
    ContainerSpec("c2", DEFAULT_NETWORK),
    ContainerSpec("c3", LAB_NETWORK),
    ContainerSpec("c4", LAB_NETWORK),
    ContainerSpec(
        WEB_CONTAINER,
        DEFAULT_NETWORK,
        HTTPD_COMMAND,
        ports=((WEB_CONTAINER_PORT, WEB_PORT),),
    ),
)
CONTAINER_NAMES = tuple(spec.name for spec in CONTAINERS)


@dataclass(frozen=True)
class LabContainer:
    """One lab container as Docker reports it ("missing" when it does not exist)."""

    name: str
    id: str = ""
    status: str = "missing"  # Docker's state: running, exited, created... or missing
    pid: int = 0
    #: network name -> IPv4 address on it
    addresses: dict[str, str] = field(default_factory=dict)
    #: "0.0.0.0:8080->80/tcp"
    ports: tuple[str, ...] = ()

    @property
    def running(self) -> bool:
        return self.status == "running" and self.pid > 0

    @property
    def netns(self) -> str | None:
        """The nsfs path of its network namespace while it runs."""
        return f"/proc/{self.pid}/ns/net" if self.running else None

    @property
    def ip(self) -> str | None:
        """Its first IPv4 address (each lab container is on one network)."""
        return next(iter(self.addresses.values()), None)


@dataclass(frozen=True)
class LabNetwork:
    """A Docker network the lab uses, with its Linux bridge."""

    name: str
    id: str = ""
    bridge: str = ""  # docker0, br-<id[:12]>
    subnet: str = ""
    gateway: str = ""

    @property
    def present(self) -> bool:
        return bool(self.id)


@dataclass(frozen=True)
class OutsideHost:
    """The stand-in for the external network, as the kernel reports it."""

    netns: str = OUTSIDE_NETNS
    netns_path: str = OUTSIDE_NETNS_PATH
    present: bool = False  # the namespace exists
    ifname: str = OUTSIDE_IFNAME
    addresses: tuple[str, ...] = ()  # CIDRs on ifname inside the namespace
    up: bool = False
    uplink: str = UPLINK
    uplink_present: bool = False
    uplink_addresses: tuple[str, ...] = ()  # CIDRs on the host side
    uplink_up: bool = False
    #: The two ends belong to one veth pair.
    paired: bool = False
    ip: str = OUTSIDE_IP
    uplink_ip: str = UPLINK_IP
    prefixlen: int = OUTSIDE_PREFIXLEN

    @property
    def problems(self) -> list[str]:
        """What keeps the outside host from working, in words; empty when it works."""
        want_in = f"{self.ip}/{self.prefixlen}"
        want_up = f"{self.uplink_ip}/{self.prefixlen}"
        found: list[str] = []
        if not self.present:
            found.append(f"namespace {self.netns}")
        if not self.uplink_present:
            found.append(f"veth {self.uplink}")
        if self.present and self.uplink_present and not self.paired:
            found.append(f"veth pair {self.uplink} <-> {self.netns}/{self.ifname}")
        if self.present and self.paired:
            if want_in not in self.addresses:
                found.append(f"address {want_in} on {self.netns}/{self.ifname}")
            if not self.up:
                found.append(f"{self.netns}/{self.ifname} up")
        if self.uplink_present:
            if want_up not in self.uplink_addresses:
                found.append(f"address {want_up} on {self.uplink}")
            if not self.uplink_up:
                found.append(f"{self.uplink} up")
        return found


@dataclass(frozen=True)
class LabState:
    """Everything the lab consists of, what is missing, and what the last `up` changed."""

    image: str = IMAGE
    image_id: str = ""
    networks: tuple[LabNetwork, ...] = ()
    containers: tuple[LabContainer, ...] = ()
    outside: OutsideHost = field(default_factory=OutsideHost)
    #: Parts that are absent or broken, in words ("container c2 (exited)").
    missing: tuple[str, ...] = ()
    #: What `up()` did, in words; empty when everything was already up.
    changes: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing

    def container(self, name: str) -> LabContainer:
        for item in self.containers:
            if item.name == name:
                return item
        raise KeyError(name)

    def network(self, name: str) -> LabNetwork:
        for item in self.networks:
            if item.name == name:
                return item
        raise KeyError(name)

"""The Docker lab: the container-networking situations flowtrace is demonstrated and tested on.

`up()` builds, on the real Docker engine and kernel, with no registry and no docker CLI:

* an image imported from a tar made in memory of the machine's static busybox;
* containers c1, c2 on the default bridge (docker0), c3, c4 on the user-defined
  bridge network ``ftlab`` (they reach each other by name), and ``web`` on docker0
  publishing TCP 8080 -> 80 (busybox httpd);
* an *outside host*: the namespace ``ft-outside`` joined to the host by the veth pair
  ``ft-uplink`` (203.0.113.1/28) <-> ``eth0`` (203.0.113.2/28).  It stands in for the
  external network, so Docker's MASQUERADE (container -> outside) and DNAT (outside ->
  203.0.113.1:8080) happen with no packet leaving the machine.  It has no default
  route, so nothing in it can reach beyond the host.

Everything the lab makes carries a name and, where Docker allows, a label, so `down()`
removes exactly that.  Mutations run under a file lock, so two `lab up` at once do not
race.  Rendering is plain text (aligned columns) so the output reads the same piped.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import ipaddress
import json
import os
import socket
import struct
import subprocess
import tarfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from flowtrace.endpoints.netns import netns_inode, run_in_netns
from flowtrace.errors import (
    DockerUnavailableError,
    FlowtraceError,
    MissingToolError,
    NotRootError,
)

#: Label on everything Docker makes for the lab (image, network, containers).
LAB_LABEL = "flowtrace.lab"
LAB_LABEL_VALUE = "1"
#: Set on lab containers only (images pass their labels on to any container made from
#: them, so LAB_LABEL alone would also mark a stranger's container built on the image).
MEMBER_LABEL = "flowtrace.lab.member"
#: Digest of a container's settings: a container made by an older spec is recreated.
SPEC_LABEL = "flowtrace.lab.spec"

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
#: The text the lab's web page contains, to recognise it in a reply.
WEB_MARKER = "flowtrace lab web"
WEB_PAGE = f"<!doctype html>\n<title>{WEB_MARKER}</title>\n<p>{WEB_MARKER}: hello from web</p>\n"
WEB_URL = f"http://{UPLINK_IP}:{WEB_PORT}/"

LOCK_PATH = "/run/lock/flowtrace-lab.lock"
LOCK_TIMEOUT_S = 120.0

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


class LabConflictError(FlowtraceError):
    """Something that is not the lab's holds a name or an address the lab needs."""


class LabPartlyRemovedError(LabConflictError):
    """`down()` removed what it could but something else still uses part of the lab."""

    def __init__(self, message: str, removed: list[str]) -> None:
        super().__init__(message)
        self.removed = removed


@dataclass(frozen=True)
class ContainerSpec:
    """How one lab container is made."""

    name: str
    network: str
    command: tuple[str, ...] = ("sleep", "infinity")
    #: (container port, host port), TCP.
    ports: tuple[tuple[int, int], ...] = ()

    def digest(self) -> str:
        """Short digest of the settings, stored as a label to notice outdated containers."""
        text = json.dumps([IMAGE, self.network, list(self.command), list(self.ports)])
        return hashlib.sha256(text.encode()).hexdigest()[:12]


#: In creation order: c1, c2 then web get .2, .3, .4 on docker0 on a quiet engine.
CONTAINERS = (
    ContainerSpec("c1", DEFAULT_NETWORK),
    ContainerSpec("c2", DEFAULT_NETWORK),
    ContainerSpec("c3", LAB_NETWORK),
    ContainerSpec("c4", LAB_NETWORK),
    ContainerSpec(
        WEB_CONTAINER,
        DEFAULT_NETWORK,
        ("httpd", "-f", "-p", str(WEB_CONTAINER_PORT), "-h", WEB_ROOT),
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


# --- checks ---------------------------------------------------------------------------


def _effective_capabilities() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def require_privileges() -> None:
    """The lab creates namespaces and links and enters containers' namespaces."""
    caps = _effective_capabilities()
    if not (caps >> CAP_SYS_ADMIN) & 1 or not (caps >> CAP_NET_ADMIN) & 1:
        raise NotRootError(
            "flowtrace lab needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN): run it as root"
        )


def is_dynamic_elf(head: bytes) -> bool:
    """True when an ELF file asks for a program interpreter (it is dynamically linked).

    `head` must hold the ELF header and the program header table.
    """
    if head[:4] != b"\x7fELF":
        raise ValueError("not an ELF file")
    wide = head[4] == 2
    order = "<" if head[5] == 1 else ">"
    if wide:
        (phoff,) = struct.unpack_from(order + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 0x36)
    else:
        (phoff,) = struct.unpack_from(order + "I", head, 0x1C)
        phentsize, phnum = struct.unpack_from(order + "HH", head, 0x2A)
    pt_interp = 3
    for number in range(phnum):
        offset = phoff + number * phentsize
        if offset + 4 > len(head):
            raise ValueError("program header table beyond the bytes given")
        (kind,) = struct.unpack_from(order + "I", head, offset)
        if kind == pt_interp:
            return True
    return False


def check_busybox(path: str = BUSYBOX) -> None:
    """The image is this one file, so it must exist and need no shared libraries."""
    hint = "apt-get install busybox-static"
    try:
        with open(path, "rb") as binary:
            head = binary.read(8192)
    except FileNotFoundError:
        raise MissingToolError(f"busybox is missing ({path}): {hint}") from None
    try:
        dynamic = is_dynamic_elf(head)
    except ValueError:
        raise MissingToolError(f"{path} is not a busybox program: {hint}") from None
    if dynamic:
        raise MissingToolError(
            f"{path} is dynamically linked and cannot run alone in an image: {hint}"
        )


def busybox_applets(path: str = BUSYBOX) -> list[str]:
    """The applet paths busybox installs itself under (bin/sh, usr/bin/wget...)."""
    result = subprocess.run(
        [path, "--list-full"], capture_output=True, text=True, check=False, timeout=10
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise MissingToolError(
            f"{path} --list-full failed; install a full busybox: apt-get install busybox-static"
        )
    return result.stdout.split()


def overlapping_use(
    network: str,
    addresses: Iterable[tuple[str, int, str]],
    routes: Iterable[tuple[str, int, str]],
    own_link: str,
) -> list[str]:
    """Addresses and routes of the host inside `network` that are not on `own_link`.

    Each item is (address or destination, prefix length, interface name).  A default
    route (prefix 0) covers everything and is not a conflict.
    """
    wanted = ipaddress.ip_network(network)
    found: list[str] = []
    for ip, prefixlen, ifname in addresses:
        if ifname != own_link and ipaddress.ip_address(ip) in wanted:
            found.append(f"address {ip}/{prefixlen} on {ifname}")
    for dst, prefixlen, ifname in routes:
        if prefixlen == 0 or ifname == own_link:
            continue
        route = ipaddress.ip_network(f"{dst}/{prefixlen}", strict=False)
        if route.version == wanted.version and route.overlaps(wanted):
            found.append(f"route {route} via {ifname}")
    return found


def hosts_file_addresses(text: str) -> list[tuple[str, str]]:
    """(address, first name) of each entry of an /etc/hosts text."""
    found: list[tuple[str, str]] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            found.append((words[0], words[1]))
    return found


def resolv_conf_nameservers(text: str) -> list[str]:
    """The nameserver addresses of an /etc/resolv.conf text."""
    found: list[str] = []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(words[1])
    return found


def proc_net_peers(text: str) -> list[str]:
    """Remote IPv4 addresses of the sockets in a /proc/net/tcp or /proc/net/udp text."""
    found: list[str] = []
    for line in text.splitlines()[1:]:
        words = line.split()
        if len(words) < 3 or ":" not in words[2]:
            continue
        packed = bytes.fromhex(words[2].split(":")[0])
        if len(packed) == 4 and packed != bytes(4):
            found.append(socket.inet_ntoa(packed[::-1]))  # the kernel prints host byte order
    return found


def destinations_inside(network: str, destinations: Iterable[tuple[str, str]]) -> list[str]:
    """Of (address, why the host talks to it), those inside `network`, in words."""
    wanted = ipaddress.ip_network(network)
    found: list[str] = []
    for address, why in destinations:
        try:
            inside = ipaddress.ip_address(address.split("%")[0]) in wanted
        except ValueError:
            continue
        if inside and f"{address} ({why})" not in found:
            found.append(f"{address} ({why})")
    return found


def _read(path: str) -> str:
    try:
        with open(path) as source:
            return source.read()
    except OSError:
        return ""


def _host_destinations() -> list[tuple[str, str]]:
    """Addresses this host is known to talk to: hosts entries, name servers, open sockets.

    A route to the outside network would send their traffic into ft-outside instead.
    """
    destinations = [
        (ip, f"{name} in /etc/hosts") for ip, name in hosts_file_addresses(_read("/etc/hosts"))
    ]
    destinations += [
        (ip, "a name server in /etc/resolv.conf")
        for ip in resolv_conf_nameservers(_read("/etc/resolv.conf"))
    ]
    lab_own = {OUTSIDE_IP, UPLINK_IP}  # sockets left from an earlier lab (TIME_WAIT)
    for table in ("tcp", "udp"):
        destinations += [
            (ip, f"an open {table.upper()} connection")
            for ip in proc_net_peers(_read(f"/proc/self/net/{table}"))
            if ip not in lab_own
        ]
    return destinations


# --- the image ------------------------------------------------------------------------


def build_image_tar(busybox: bytes, applets: Iterable[str], page: str = WEB_PAGE) -> bytes:
    """A root filesystem of one static busybox, its applet links and the web page."""
    buffer = io.BytesIO()
    added: set[str] = set()

    def add_dir(tar: tarfile.TarFile, path: str, mode: int = 0o755) -> None:
        parts = path.split("/")
        for depth in range(1, len(parts) + 1):
            name = "/".join(parts[:depth])
            if name in added:
                continue
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = mode if name == path else 0o755
            tar.addfile(info)
            added.add(name)

    def add_file(tar: tarfile.TarFile, path: str, data: bytes, mode: int = 0o644) -> None:
        add_dir(tar, os.path.dirname(path))
        info = tarfile.TarInfo(path)
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))
        added.add(path)

    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        add_dir(tar, "tmp", 0o1777)
        add_dir(tar, "root", 0o700)
        add_file(tar, "bin/busybox", busybox, 0o755)
        add_file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
        add_file(tar, "etc/group", b"root:x:0:\n")
        add_file(tar, f"{WEB_ROOT.strip('/')}/index.html", page.encode())
        for applet in applets:
            name = os.path.normpath(applet.strip("/"))
            if name in added or name.startswith("..") or "/" not in name:
                continue
            add_dir(tar, os.path.dirname(name))
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = "/bin/busybox"
            info.mode = 0o777
            tar.addfile(info)
            added.add(name)
    return buffer.getvalue()


# --- Docker ---------------------------------------------------------------------------


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _docker() -> Any:
    """A Docker SDK client that has answered a ping."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except DockerException as exc:
        raise DockerUnavailableError(
            f"the Docker engine does not answer ({_short(exc)}): start dockerd, "
            "e.g. with `bash scripts/setup.sh`"
        ) from None
    return client


def _labels(attrs: dict[str, Any]) -> dict[str, str]:
    return dict((attrs.get("Config") or {}).get("Labels") or {})


def _get_container(client: Any, name: str) -> Any | None:
    from docker.errors import NotFound

    try:
        container = client.containers.get(name)
    except NotFound:
        return None
    return container if container.name == name else None


def _get_network(client: Any, name: str) -> Any | None:
    from docker.errors import NotFound

    try:
        network = client.networks.get(name)
    except NotFound:
        return None
    return network if network.name == name else None


def _get_image(client: Any) -> Any | None:
    from docker.errors import ImageNotFound

    try:
        return client.images.get(IMAGE)
    except ImageNotFound:
        return None


def _is_lab_container(container: Any, name: str) -> bool:
    return _labels(container.attrs).get(MEMBER_LABEL) == name


def _is_lab_labelled(attrs_labels: dict[str, str] | None) -> bool:
    return (attrs_labels or {}).get(LAB_LABEL) == LAB_LABEL_VALUE


def _container_view(name: str, container: Any | None) -> LabContainer:
    if container is None:
        return LabContainer(name)
    attrs = container.attrs
    state = attrs.get("State") or {}
    settings = attrs.get("NetworkSettings") or {}
    networks = settings.get("Networks") or {}
    ports: list[str] = []
    for inner, bindings in sorted((settings.get("Ports") or {}).items()):
        for binding in bindings or ():
            host_ip = binding.get("HostIp") or "0.0.0.0"
            host = f"[{host_ip}]" if ":" in host_ip else host_ip
            ports.append(f"{host}:{binding.get('HostPort')}->{inner}")
    return LabContainer(
        name=name,
        id=str(attrs.get("Id", "")),
        status=str(state.get("Status", "unknown")),
        pid=int(state.get("Pid") or 0),
        addresses={
            net: info["IPAddress"] for net, info in networks.items() if info.get("IPAddress")
        },
        ports=tuple(ports),
    )


def _network_view(name: str, network: Any | None) -> LabNetwork:
    if network is None:
        return LabNetwork(name)
    attrs = network.attrs
    options = attrs.get("Options") or {}
    bridge = options.get("com.docker.network.bridge.name") or f"br-{network.id[:12]}"
    configs = (attrs.get("IPAM") or {}).get("Config") or [{}]
    return LabNetwork(
        name=name,
        id=network.id,
        bridge=bridge,
        subnet=str(configs[0].get("Subnet", "")),
        # The default bridge's IPAM often leaves the gateway out: it is docker0's address.
        gateway=str(configs[0].get("Gateway") or _bridge_address(bridge)),
    )


def _bridge_address(ifname: str) -> str:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        facts = _link_facts(ipr, ifname)
    if not facts or not facts["addresses"]:
        return ""
    return str(facts["addresses"][0]).split("/")[0]


# --- the outside host (netlink) -------------------------------------------------------


def _link_facts(ipr: Any, ifname: str) -> dict[str, Any] | None:
    """index, kind, peer index, alias, up, IPv4 CIDRs of a link; None when it is absent."""
    indexes = ipr.link_lookup(ifname=ifname)
    if not indexes:
        return None
    link = ipr.get_links(indexes[0])[0]
    cidrs = tuple(
        f"{addr.get('IFA_ADDRESS')}/{addr['prefixlen']}"
        for addr in ipr.get_addr(index=indexes[0], family=socket.AF_INET)
    )
    info = link.get("IFLA_LINKINFO")
    return {
        "index": indexes[0],
        "kind": info.get("IFLA_INFO_KIND") if info is not None else None,
        "peer": link.get("IFLA_LINK"),
        "alias": link.get("IFLA_IFALIAS"),
        "up": bool(link["flags"] & 1),
        "addresses": cidrs,
    }


def _inside_facts() -> dict[str, Any] | None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return _link_facts(ipr, OUTSIDE_IFNAME)


def _netns_usable(path: str) -> bool:
    """The path exists and is a mounted network namespace (not a stale file)."""
    try:
        run_in_netns(path, lambda: None)
    except (FlowtraceError, OSError):
        return False
    return True


def _outside_view() -> OutsideHost:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        uplink = _link_facts(ipr, UPLINK)
    present = os.path.exists(OUTSIDE_NETNS_PATH) and _netns_usable(OUTSIDE_NETNS_PATH)
    inside = run_in_netns(OUTSIDE_NETNS_PATH, _inside_facts) if present else None
    paired = bool(
        uplink
        and inside
        and uplink["peer"] == inside["index"]
        and inside["peer"] == uplink["index"]
    )
    return OutsideHost(
        present=present,
        addresses=inside["addresses"] if inside else (),
        up=bool(inside and inside["up"]),
        uplink_present=uplink is not None,
        uplink_addresses=uplink["addresses"] if uplink else (),
        uplink_up=bool(uplink and uplink["up"]),
        paired=paired,
    )


def host_range_conflicts(net: str, own_link: str) -> list[str]:
    """The host's addresses and main-table routes that overlap `net` (other than on the
    lab's own link `own_link`), in words."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        names = {link["index"]: link.get("IFLA_IFNAME") for link in ipr.get_links()}
        addresses = [
            (a.get("IFA_ADDRESS"), a["prefixlen"], names.get(a["index"], "?"))
            for a in ipr.get_addr(family=socket.AF_INET)
        ]
        routes = [
            (r.get("RTA_DST") or "0.0.0.0", r["dst_len"], names.get(r.get("RTA_OIF"), "?"))
            for r in ipr.get_routes(family=socket.AF_INET, table=254)
        ]
    return overlapping_use(net, addresses, routes, own_link)


def _uplink_is_foreign() -> bool:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        facts = _link_facts(ipr, UPLINK)
    return facts is not None and facts["alias"] != UPLINK_ALIAS


def _disable_ipv6(ifname: str) -> None:
    """No router solicitations or MLD reports from the lab's links in captures."""
    path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
    try:
        with open(path, "w") as knob:
            knob.write("1")
    except FileNotFoundError:
        pass  # IPv6 is off in this kernel: nothing to quiet


def _refuse_host_namespace(host_inode: int) -> None:
    """Called in the thread that entered ft-outside, right before changing anything there."""
    if netns_inode("/proc/thread-self/ns/net") == host_inode:
        raise LabConflictError(_HOST_NETNS_MESSAGE)


def _configure_inside(host_inode: int) -> list[str]:
    from pyroute2 import IPRoute

    _refuse_host_namespace(host_inode)
    made: list[str] = []
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")
        facts = _link_facts(ipr, OUTSIDE_IFNAME)
        if facts is None:
            raise FlowtraceError(f"{OUTSIDE_NETNS} has no {OUTSIDE_IFNAME} after creating it")
        if facts["kind"] != "veth":
            raise FlowtraceError(
                f"{OUTSIDE_NETNS}/{OUTSIDE_IFNAME} is not the lab's veth: run `flowtrace lab down`"
            )
        cidr = f"{OUTSIDE_IP}/{OUTSIDE_PREFIXLEN}"
        _disable_ipv6(OUTSIDE_IFNAME)
        if cidr not in facts["addresses"]:
            ipr.addr("add", index=facts["index"], address=OUTSIDE_IP, prefixlen=OUTSIDE_PREFIXLEN)
            made.append(f"address {cidr} on {OUTSIDE_NETNS}/{OUTSIDE_IFNAME}")
        if not facts["up"]:
            ipr.link("set", index=facts["index"], state="up")
            made.append(f"{OUTSIDE_NETNS}/{OUTSIDE_IFNAME} up")
    return made


def _ensure_outside() -> list[str]:
    from pyroute2 import IPRoute, netns

    changes: list[str] = []
    view = _outside_view()
    if not view.present:
        if os.path.exists(OUTSIDE_NETNS_PATH):
            os.unlink(OUTSIDE_NETNS_PATH)  # a stale file, not a namespace
        netns.create(OUTSIDE_NETNS)
        changes.append(f"created namespace {OUTSIDE_NETNS} ({OUTSIDE_NETNS_PATH})")
    host_inode = netns_inode("/proc/self/ns/net")
    if _outside_is_the_host():
        raise LabConflictError(_HOST_NETNS_MESSAGE)
    with IPRoute() as ipr:
        if view.uplink_present and not view.paired:
            ipr.link("del", index=ipr.link_lookup(ifname=UPLINK)[0])
        if not view.paired:
            stray = run_in_netns(OUTSIDE_NETNS_PATH, _inside_facts)
            if stray is not None:
                run_in_netns(OUTSIDE_NETNS_PATH, _delete_inside_link, host_inode)
            ipr.link(
                "add",
                ifname=UPLINK,
                kind="veth",
                peer={"ifname": OUTSIDE_IFNAME, "net_ns_fd": OUTSIDE_NETNS},
            )
            changes.append(f"created veth {UPLINK} <-> {OUTSIDE_NETNS}/{OUTSIDE_IFNAME}")
        index = ipr.link_lookup(ifname=UPLINK)[0]
        ipr.link("set", index=index, ifalias=UPLINK_ALIAS)
        _disable_ipv6(UPLINK)
        facts = _link_facts(ipr, UPLINK)
        if facts is None:
            raise FlowtraceError(f"{UPLINK} vanished while the lab was being built")
        cidr = f"{UPLINK_IP}/{OUTSIDE_PREFIXLEN}"
        if cidr not in facts["addresses"]:
            ipr.addr("add", index=index, address=UPLINK_IP, prefixlen=OUTSIDE_PREFIXLEN)
            changes.append(f"address {cidr} on {UPLINK}")
        if not facts["up"]:
            ipr.link("set", index=index, state="up")
            changes.append(f"{UPLINK} up")
    changes.extend(run_in_netns(OUTSIDE_NETNS_PATH, _configure_inside, host_inode))
    return changes


_HOST_NETNS_MESSAGE = (
    f"{OUTSIDE_NETNS_PATH} names this host's own namespace, not a separate one: "
    f"remove it with `ip netns delete {OUTSIDE_NETNS}`"
)


def _outside_is_the_host() -> bool:
    """Guard: every change meant for the outside host would otherwise hit the host itself."""
    if not os.path.exists(OUTSIDE_NETNS_PATH):
        return False
    return netns_inode(OUTSIDE_NETNS_PATH) == netns_inode("/proc/self/ns/net")


def _delete_inside_link(host_inode: int) -> None:
    from pyroute2 import IPRoute

    _refuse_host_namespace(host_inode)
    with IPRoute() as ipr:
        ipr.link("del", index=ipr.link_lookup(ifname=OUTSIDE_IFNAME)[0])


# --- lock -----------------------------------------------------------------------------


@contextmanager
def _exclusive(timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """One `lab up` or `lab down` at a time on this machine."""
    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    with open(LOCK_PATH, "a") as lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise FlowtraceError(
                        f"another flowtrace lab command holds {LOCK_PATH} for over "
                        f"{timeout_s:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# --- the three verbs ------------------------------------------------------------------


def _survey(client: Any) -> LabState:
    image = _get_image(client)
    networks = tuple(
        _network_view(name, _get_network(client, name)) for name in (DEFAULT_NETWORK, LAB_NETWORK)
    )
    containers: list[LabContainer] = []
    for spec in CONTAINERS:
        found = _get_container(client, spec.name)
        lab_owned = found is not None and _is_lab_container(found, spec.name)
        containers.append(_container_view(spec.name, found if lab_owned else None))
    outside = _outside_view()
    missing: list[str] = []
    if image is None or not _is_lab_labelled(image.labels):
        missing.append(f"image {IMAGE}")
    missing.extend(f"network {net.name}" for net in networks if not net.present)
    for item in containers:
        if item.status == "missing":
            missing.append(f"container {item.name}")
        elif not item.running:
            missing.append(f"container {item.name} ({item.status})")
    missing.extend(outside.problems)
    return LabState(
        image_id=image.id if image is not None else "",
        networks=networks,
        containers=tuple(containers),
        outside=outside,
        missing=tuple(missing),
    )


def _conflicts(client: Any) -> list[str]:
    """Names and addresses the lab needs that something else holds."""
    found: list[str] = []
    for name in CONTAINER_NAMES:
        container = _get_container(client, name)
        if container is not None and not _is_lab_container(container, name):
            found.append(
                f"a container named {name} exists and is not part of the flowtrace lab "
                f"(no label {MEMBER_LABEL}={name}): rename or remove it"
            )
    network = _get_network(client, LAB_NETWORK)
    if network is not None and not _is_lab_labelled(network.attrs.get("Labels")):
        found.append(
            f"a Docker network named {LAB_NETWORK} exists and is not the lab's "
            f"(no label {LAB_LABEL}={LAB_LABEL_VALUE}): rename or remove it"
        )
    image = _get_image(client)
    if image is not None and not _is_lab_labelled(image.labels):
        found.append(f"an image tagged {IMAGE} exists and is not the lab's: remove or retag it")
    if _outside_is_the_host():
        found.append(_HOST_NETNS_MESSAGE)
    if _uplink_is_foreign():
        found.append(f"a link named {UPLINK} exists and is not the lab's: delete it")
    for use in host_range_conflicts(OUTSIDE_NET, UPLINK):
        found.append(f"{OUTSIDE_NET} is already in use on this host ({use})")
    for use in destinations_inside(OUTSIDE_NET, _host_destinations()):
        found.append(
            f"{OUTSIDE_NET} holds an address this host talks to, {use}: the lab's route "
            "to its outside host would cut it off"
        )
    for other in client.containers.list(all=True):
        if other.name in CONTAINER_NAMES:
            continue
        bindings = ((other.attrs.get("HostConfig") or {}).get("PortBindings")) or {}
        if any(str(b.get("HostPort")) == str(WEB_PORT) for v in bindings.values() for b in v or ()):
            found.append(f"container {other.name} publishes port {WEB_PORT}, which web needs")
    return found


def status() -> LabState:
    """What of the lab exists now; `missing` names what is absent or stopped."""
    require_privileges()
    return _survey(_docker())


def _ensure_image(client: Any, busybox: str) -> list[str]:
    if _get_image(client) is not None:
        return []
    check_busybox(busybox)
    with open(busybox, "rb") as binary:
        data = build_image_tar(binary.read(), busybox_applets(busybox))
    client.api.import_image_from_data(
        data,
        repository=IMAGE_REPOSITORY,
        tag=IMAGE_TAG,
        changes=[
            f"LABEL {LAB_LABEL}={LAB_LABEL_VALUE}",
            "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            'CMD ["sleep", "infinity"]',
        ],
    )
    if _get_image(client) is None:
        raise FlowtraceError(f"Docker did not keep the imported image {IMAGE}")
    return [f"created image {IMAGE} from {busybox}"]


def _ensure_network(client: Any) -> list[str]:
    if _get_network(client, LAB_NETWORK) is not None:
        return []
    client.networks.create(
        LAB_NETWORK, driver="bridge", labels={LAB_LABEL: LAB_LABEL_VALUE}, check_duplicate=True
    )
    return [f"created network {LAB_NETWORK}"]


def _create_container(client: Any, spec: ContainerSpec) -> Any:
    from docker.errors import APIError

    container = client.containers.create(
        IMAGE,
        command=list(spec.command),
        name=spec.name,
        hostname=spec.name,
        labels={LAB_LABEL: LAB_LABEL_VALUE, MEMBER_LABEL: spec.name, SPEC_LABEL: spec.digest()},
        network=spec.network,
        ports={f"{inner}/tcp": outer for inner, outer in spec.ports},
        restart_policy={"Name": "no"},
        detach=True,
    )
    try:
        container.start()
    except APIError as exc:
        container.remove(force=True)
        raise LabConflictError(f"container {spec.name} cannot start: {_short(exc)}") from None
    return container


def _ensure_container(client: Any, spec: ContainerSpec) -> list[str]:
    from docker.errors import APIError

    container = _get_container(client, spec.name)
    if container is None:
        _create_container(client, spec)
        return [f"created container {spec.name}"]
    view = _container_view(spec.name, container)
    outdated = _labels(container.attrs).get(SPEC_LABEL) != spec.digest()
    detached = view.running and spec.network not in view.addresses
    if outdated or detached:
        container.remove(force=True)
        _create_container(client, spec)
        why = "its settings changed" if outdated else f"it was not on network {spec.network}"
        return [f"recreated container {spec.name} ({why})"]
    if view.running:
        return []
    try:
        container.start()
    except APIError:
        container.remove(force=True)  # e.g. its network was removed while it was stopped
        _create_container(client, spec)
        return [f"recreated container {spec.name} (it could not start again)"]
    return [f"started container {spec.name} (was {view.status})"]


def up(busybox: str = BUSYBOX) -> LabState:
    """Make whatever of the lab is missing and return the lab; idempotent.

    Nothing is touched when a name or an address the lab needs belongs to something
    else: that raises LabConflictError first.
    """
    from docker.errors import APIError

    require_privileges()
    client = _docker()
    with _exclusive():
        conflicts = _conflicts(client)
        if conflicts:
            more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
            raise LabConflictError(conflicts[0] + more)
        changes: list[str] = []
        try:
            changes += _ensure_image(client, busybox)
            changes += _ensure_network(client)
            for spec in CONTAINERS:
                changes += _ensure_container(client, spec)
        except APIError as exc:
            raise FlowtraceError(f"Docker refused to build the lab: {_short(exc)}") from None
        changes += _ensure_outside()
        state = _survey(client)
    return replace(state, changes=tuple(changes))


def _creation_rank(name: str) -> tuple[int, str]:
    rank = CONTAINER_NAMES.index(name) if name in CONTAINER_NAMES else len(CONTAINER_NAMES)
    return rank, name


def down() -> list[str]:
    """Remove everything the lab made, and only that; returns what was removed.

    A lab part that something else still uses (a stranger's container on the lab
    image or network) is kept, and a LabConflictError says so after the rest is gone.
    """
    from docker.errors import APIError, NotFound
    from pyroute2 import IPRoute, netns

    require_privileges()
    client = _docker()
    removed: list[str] = []
    kept: list[str] = []
    with _exclusive():
        members = client.containers.list(all=True, filters={"label": MEMBER_LABEL})
        for container in sorted(members, key=lambda c: _creation_rank(c.name)):
            if not _is_lab_container(container, container.name):
                continue
            container.remove(force=True)
            removed.append(f"container {container.name} ({container.id[:12]})")
        from flowtrace.scenarios import remove_parts

        gone, still = remove_parts(client)  # a scenario's namespaces, links and networks
        removed += gone
        kept += still
        network = _get_network(client, LAB_NETWORK)
        if network is not None and _is_lab_labelled(network.attrs.get("Labels")):
            try:
                network.remove()
                removed.append(f"network {LAB_NETWORK}")
            except APIError as exc:
                kept.append(f"network {LAB_NETWORK} ({_short(exc)})")
        image = _get_image(client)
        if image is not None and _is_lab_labelled(image.labels):
            users = [
                c.name for c in client.containers.list(all=True) if c.attrs.get("Image") == image.id
            ]
            if users:
                kept.append(f"image {IMAGE} (used by container {', '.join(sorted(users))})")
            else:
                try:
                    client.images.remove(image.id, force=False)
                    removed.append(f"image {IMAGE}")
                except NotFound:
                    pass
                except APIError as exc:
                    kept.append(f"image {IMAGE} ({_short(exc)})")
        with IPRoute() as ipr:
            indexes = ipr.link_lookup(ifname=UPLINK)
            if indexes and not _uplink_is_foreign():
                ipr.link("del", index=indexes[0])
                removed.append(f"veth {UPLINK} <-> {OUTSIDE_NETNS}/{OUTSIDE_IFNAME}")
        if os.path.exists(OUTSIDE_NETNS_PATH):
            netns.remove(OUTSIDE_NETNS)
            removed.append(f"namespace {OUTSIDE_NETNS}")
    if kept:
        raise LabPartlyRemovedError(
            f"kept {'; '.join(kept)}: remove what uses it, then run `flowtrace lab down` again",
            removed,
        )
    return removed


# --- rendering (plain text: it reads the same in a terminal and in a pipe) -------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_state(state: LabState) -> str:
    """The lab as three small tables: containers, networks, outside host."""
    image_id = state.image_id.removeprefix("sha256:")[:12] or "missing"
    lines = [f"image {state.image}  {image_id}", ""]
    container_rows = [
        (
            item.name,
            item.id[:12] or "-",
            item.status,
            item.netns or "-",
            ", ".join(f"{net} {ip}" for net, ip in item.addresses.items()) or "-",
            ", ".join(item.ports) or "-",
        )
        for item in state.containers
    ]
    lines += _table(
        ("CONTAINER", "ID", "STATE", "NETNS", "NETWORK IP", "PUBLISHED"), container_rows
    )
    lines.append("")
    network_rows = [
        (net.name, net.bridge or "-", net.subnet or "-", net.gateway or "-")
        if net.present
        else (net.name, "missing", "-", "-")
        for net in state.networks
    ]
    lines += _table(("NETWORK", "BRIDGE", "SUBNET", "GATEWAY"), network_rows)
    lines.append("")
    out = state.outside
    inside = ", ".join(out.addresses) or "-"
    host_side = ", ".join(out.uplink_addresses) or "-"
    lines += _table(
        ("OUTSIDE HOST", "NETNS", "INTERFACE", "ADDRESS", "HOST SIDE"),
        [
            (
                out.netns,
                out.netns_path if out.present else "missing",
                out.ifname,
                inside,
                f"{out.uplink} {host_side}" if out.uplink_present else f"{out.uplink} missing",
            )
        ],
    )
    return "\n".join(lines)


def render_summary(state: LabState) -> str:
    """One line on whether the lab is whole, then what is missing."""
    if state.complete:
        return f"the lab is up: try `ip netns exec {OUTSIDE_NETNS} busybox wget -q -O - {WEB_URL}`"
    return "missing: " + ", ".join(state.missing)


def render_changes(changes: Sequence[str]) -> str:
    if not changes:
        return "everything was already up"
    return "\n".join(f"+ {change}" for change in changes)


def render_removed(removed: Sequence[str]) -> str:
    if not removed:
        return "nothing to remove: the lab was not up"
    return "\n".join(f"- removed {item}" for item in removed)

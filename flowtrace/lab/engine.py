"""What the lab asks the Docker engine: find, view, make and repair its containers and
networks (Docker SDK).

A lab object is recognised by its labels, never by its name alone: a stranger's
container or network with a lab name is left untouched.  `docker` is imported where
it is used: it is slow to import, and the CLI imports the lab on every start.
"""

from __future__ import annotations

from typing import Any

from flowtrace.endpoints import engines
from flowtrace.errors import DockerUnavailableError
from flowtrace.lab.base import (
    IMAGE,
    LAB_LABEL,
    LAB_LABEL_VALUE,
    LAB_NETWORK,
    MEMBER_LABEL,
    SPEC_LABEL,
    ContainerSpec,
    LabConflictError,
    LabContainer,
    LabNetwork,
    member_labels,
)
from flowtrace.lab.links import bridge_address

#: Importing an image of a few MB can take a while on a busy engine.
CLIENT_TIMEOUT_S = 60


def lab_client() -> Any:
    """The Docker SDK client the lab uses (flowtrace's one factory, a longer timeout);
    the engine must be Docker (the Podman lab is flowtrace.lab.podman's)."""
    found = engines.connect(timeout=CLIENT_TIMEOUT_S)
    if found.info.name != "docker":
        raise DockerUnavailableError(
            f"the Docker lab needs Docker, and {found.info.selected_by} leads to "
            f"{found.info.name} {found.info.version}: use `flowtrace lab up --engine podman` "
            "for the lab on Podman"
        )
    return found.client


def short(exc: BaseException) -> str:
    """The first line of an engine's error, for a one-line message."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def labels(attrs: dict[str, Any]) -> dict[str, str]:
    """A container's labels from its inspect attributes."""
    return dict((attrs.get("Config") or {}).get("Labels") or {})


def get_container(client: Any, name: str) -> Any | None:
    """The container called exactly `name` (not one whose id starts so), or None."""
    from docker.errors import NotFound

    try:
        container = client.containers.get(name)
    except NotFound:
        return None
    return container if container.name == name else None


def get_network(client: Any, name: str) -> Any | None:
    """The network called exactly `name`, or None."""
    from docker.errors import NotFound

    try:
        network = client.networks.get(name)
    except NotFound:
        return None
    return network if network.name == name else None


def get_image(client: Any) -> Any | None:
    """The image tagged as the lab's, or None (whoever made it)."""
    from docker.errors import ImageNotFound

    try:
        return client.images.get(IMAGE)
    except ImageNotFound:
        return None


def is_lab_container(container: Any, name: str) -> bool:
    return labels(container.attrs).get(MEMBER_LABEL) == name


def is_lab_labelled(attrs_labels: dict[str, str] | None) -> bool:
    return (attrs_labels or {}).get(LAB_LABEL) == LAB_LABEL_VALUE


def foreign_network(network: Any | None, name: str) -> list[str]:
    """`network` (get_network's for `name`) when it is not the lab's, in words; [] when
    it is the lab's or absent."""
    if network is None or is_lab_labelled(network.attrs.get("Labels")):
        return []
    return [
        f"a Docker network named {name} exists and is not the lab's "
        f"(no label {LAB_LABEL}={LAB_LABEL_VALUE}): rename or remove it"
    ]


def owned(client: Any, name: str) -> Any | None:
    """The lab's container called `name`, None when there is none (or a stranger's)."""
    container = get_container(client, name)
    if container is None or not is_lab_container(container, name):
        return None
    return container


def running_pid(container: Any | None) -> int:
    """The pid of a running container's first process; 0 when it does not run."""
    if container is None:
        return 0
    state = container.attrs.get("State") or {}
    return int(state.get("Pid") or 0) if state.get("Running") else 0


def container_view(name: str, container: Any | None) -> LabContainer:
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


def network_view(name: str, network: Any | None) -> LabNetwork:
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
        gateway=str(configs[0].get("Gateway") or bridge_address(bridge)),
    )


def ensure_network(client: Any) -> list[str]:
    """The user-defined bridge network ftlab, made when missing."""
    if get_network(client, LAB_NETWORK) is not None:
        return []
    client.networks.create(
        LAB_NETWORK, driver="bridge", labels={LAB_LABEL: LAB_LABEL_VALUE}, check_duplicate=True
    )
    return [f"created network {LAB_NETWORK}"]


def create_container(client: Any, spec: ContainerSpec) -> Any:
    from docker.errors import APIError

    container = client.containers.create(
        IMAGE,
        command=list(spec.command),
        name=spec.name,
        hostname=spec.name,
        labels=member_labels(spec.name, spec.digest()),
        network=spec.network,
        ports={f"{inner}/tcp": outer for inner, outer in spec.ports},
        restart_policy={"Name": "no"},
        detach=True,
    )
    try:
        container.start()
    except APIError as exc:
        container.remove(force=True)
        raise LabConflictError(f"container {spec.name} cannot start: {short(exc)}") from None
    return container


def ensure_container(client: Any, spec: ContainerSpec) -> list[str]:
    """Make, remake (outdated settings, off its network) or start one base container."""
    from docker.errors import APIError

    container = get_container(client, spec.name)
    if container is None:
        create_container(client, spec)
        return [f"created container {spec.name}"]
    view = container_view(spec.name, container)
    outdated = labels(container.attrs).get(SPEC_LABEL) != spec.digest()
    detached = view.running and spec.network not in view.addresses
    if outdated or detached:
        container.remove(force=True)
        create_container(client, spec)
        why = "its settings changed" if outdated else f"it was not on network {spec.network}"
        return [f"recreated container {spec.name} ({why})"]
    if view.running:
        return []
    try:
        container.start()
    except APIError:
        container.remove(force=True)  # e.g. its network was removed while it was stopped
        create_container(client, spec)
        return [f"recreated container {spec.name} (it could not start again)"]
    return [f"started container {spec.name} (was {view.status})"]

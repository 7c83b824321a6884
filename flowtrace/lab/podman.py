"""The lab on Podman: the base situations, and a pod, built with the podman CLI.

`flowtrace lab up --engine podman` makes, with no registry, what the Docker lab makes
and one thing only Podman has:

* the image, imported (`podman import`) from the same tar of the static busybox;
* c1, c2 on Podman's default network `podman` (bridge podman0), c3, c4 on the user
  network ftlab (netavark picks its subnet and bridge, aardvark-dns its names), web on
  `podman` publishing TCP 8081 -> 80 (8080 is the Docker lab's web);
* the pod ftpod: pa and pb share the network namespace of its infra container
  ftpod-infra;
* the outside host ft-outside, shared with the Docker lab (flowtrace.lab.outside).

Everything carries the lab's labels and `lab down --engine podman` removes exactly
that; the outside host only when the Docker lab does not use it too.  The podman CLI,
not the API, builds it: its Docker-compatible API knows no pods and tags imports its
own way, and the lab is always local.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import replace
from typing import Any

from flowtrace.endpoints.podman_service import REMOTE_VARIABLES
from flowtrace.errors import FlowtraceError, MissingToolError
from flowtrace.lab.base import (
    BUSYBOX,
    HTTPD_COMMAND,
    IMAGE,
    LAB_LABEL,
    LAB_LABEL_VALUE,
    LAB_NETWORK,
    MEMBER_LABEL,
    SPEC_LABEL,
    UPLINK_IP,
    WEB_CONTAINER,
    WEB_CONTAINER_PORT,
    ContainerSpec,
    LabConflictError,
    LabContainer,
    LabNetwork,
    LabPartlyRemovedError,
    LabState,
    member_labels,
)
from flowtrace.lab.guard import exclusive, require_privileges
from flowtrace.lab.images import build_image_tar, busybox_applets, check_busybox
from flowtrace.lab.netavark_chains import note_before_up, remove_if_ours
from flowtrace.lab.outside import ensure_outside, outside_conflicts, outside_view, remove_outside
from flowtrace.lab.podman_conf import podman_env

#: Podman names an image imported without a registry localhost/...
PODMAN_IMAGE = f"localhost/{IMAGE}"
PODMAN_NETWORK = "podman"  # Podman's default network, bridge podman0
PODMAN_WEB_PORT = 8081  # the Docker lab's web has 8080
POD = "ftpod"
POD_INFRA = f"{POD}-infra"
POD_MEMBERS = ("pa", "pb")
CONTAINERS = (
    ContainerSpec("c1", PODMAN_NETWORK),
    ContainerSpec("c2", PODMAN_NETWORK),
    ContainerSpec("c3", LAB_NETWORK),
    ContainerSpec("c4", LAB_NETWORK),
    ContainerSpec(
        WEB_CONTAINER,
        PODMAN_NETWORK,
        HTTPD_COMMAND,
        ports=((WEB_CONTAINER_PORT, PODMAN_WEB_PORT),),
    ),
)
CONTAINER_NAMES = tuple(spec.name for spec in CONTAINERS)
#: Every container the lab makes on Podman, in creation order (the infra comes with the pod).
ALL_NAMES = (*CONTAINER_NAMES, *POD_MEMBERS)
WEB_URL = f"http://{UPLINK_IP}:{PODMAN_WEB_PORT}/"
PODMAN_TIMEOUT_S = 120


class PodmanCommandError(FlowtraceError):
    """A podman command failed; the message is its first line of error."""


def podman(*args: str, data: bytes | None = None, env: dict[str, str] | None = None) -> str:
    """Run `podman ARGS` and return its output; one-line error when it fails."""
    if shutil.which("podman") is None:
        raise MissingToolError("podman is not installed: apt-get install podman")
    # the lab is local: with CONTAINER_HOST the CLI would be another service's client
    local = {k: v for k, v in (env or os.environ).items() if k not in REMOTE_VARIABLES}
    try:
        done = subprocess.run(
            ["podman", *args],
            input=data,
            capture_output=True,
            env=local,
            timeout=PODMAN_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PodmanCommandError(f"`podman {args[0]}` took over {PODMAN_TIMEOUT_S} s") from None
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        why = next((line for line in lines if line.startswith("Error")), lines[-1] if lines else "")
        raise PodmanCommandError(f"`podman {' '.join(args[:2])}` failed: {why[:200]}")
    return done.stdout.decode(errors="replace")


def _json(*args: str) -> Any:
    return json.loads(podman(*args) or "null")


# --- looking ------------------------------------------------------------------------------


def _existing() -> set[str]:
    """Names of every container Podman has (infra containers too)."""
    return set(podman("ps", "-a", "--format", "{{.Names}}").split())


def _inspect(names: list[str]) -> dict[str, dict[str, Any]]:
    if not names:
        return {}
    found = _json("container", "inspect", "--format", "json", *names) or []
    return {str(attrs.get("Name", "")).lstrip("/"): attrs for attrs in found}


def _labels(attrs: dict[str, Any]) -> dict[str, str]:
    return dict((attrs.get("Config") or {}).get("Labels") or {})


def is_lab_member(attrs: dict[str, Any], name: str) -> bool:
    return _labels(attrs).get(MEMBER_LABEL) == name


def container_view(name: str, attrs: dict[str, Any] | None) -> LabContainer:
    """A lab container as Podman's inspect (Docker's shape) describes it (pure)."""
    if attrs is None:
        return LabContainer(name)
    state = attrs.get("State") or {}
    settings = attrs.get("NetworkSettings") or {}
    networks = settings.get("Networks") or {}
    ports: list[str] = []
    for inner, bindings in sorted((settings.get("Ports") or {}).items()):
        for binding in bindings or ():
            ports.append(f"{binding.get('HostIp') or '0.0.0.0'}:{binding.get('HostPort')}->{inner}")
    address = settings.get("IPAddress") or ""
    addresses = {n: i["IPAddress"] for n, i in networks.items() if i.get("IPAddress")}
    if not addresses and address:
        addresses = {"pod": address}
    return LabContainer(
        name=name,
        id=str(attrs.get("Id", "")),
        status=str(state.get("Status", "unknown")),
        pid=int(state.get("Pid") or 0),
        addresses=addresses,
        ports=tuple(ports),
    )


def network_view(name: str, attrs: dict[str, Any] | None) -> LabNetwork:
    """A network as `podman network inspect` describes it (pure)."""
    if attrs is None:
        return LabNetwork(name)
    subnets = attrs.get("subnets") or [{}]
    return LabNetwork(
        name=name,
        id=str(attrs.get("id", "")),
        bridge=str(attrs.get("network_interface", "")),
        subnet=str(subnets[0].get("subnet", "")),
        gateway=str(subnets[0].get("gateway", "")),
    )


def _network(name: str) -> dict[str, Any] | None:
    try:
        found = _json("network", "inspect", name)
    except PodmanCommandError:
        return None
    return found[0] if found else None


def _image() -> dict[str, Any] | None:
    try:
        found = _json("image", "inspect", PODMAN_IMAGE)
    except PodmanCommandError:
        return None
    return found[0] if found else None


def _pod() -> dict[str, Any] | None:
    try:
        found = _json("pod", "inspect", POD)
    except PodmanCommandError:
        return None
    return found[0] if isinstance(found, list) and found else found or None


def survey() -> LabState:
    """The Podman lab as Podman and the kernel report it, with what is missing."""
    existing = _existing()
    attrs = _inspect([n for n in ALL_NAMES if n in existing])
    image = _image()
    networks = tuple(network_view(n, _network(n)) for n in (PODMAN_NETWORK, LAB_NETWORK))
    containers = []
    for name in ALL_NAMES:
        found = attrs.get(name)
        containers.append(
            container_view(name, found if found and is_lab_member(found, name) else None)
        )
    outside = outside_view()
    missing: list[str] = []
    if image is None or (image.get("Labels") or {}).get(LAB_LABEL) != LAB_LABEL_VALUE:
        missing.append(f"image {PODMAN_IMAGE}")
    # the default network exists on every Podman; podman0 appears with its first container
    missing.extend(f"network {net.name}" for net in networks[1:] if not net.present)
    if _pod() is None:
        missing.append(f"pod {POD}")
    for item in containers:
        if item.status == "missing":
            missing.append(f"container {item.name}")
        elif not item.running:
            missing.append(f"container {item.name} ({item.status})")
    missing.extend(outside.problems)
    return LabState(
        image=PODMAN_IMAGE,
        image_id=str((image or {}).get("Id", "")),
        networks=networks,
        containers=tuple(containers),
        outside=outside,
        missing=tuple(missing),
    )


def conflicts() -> list[str]:
    """Names and ports the Podman lab needs that something else holds."""
    found: list[str] = []
    existing = _existing()
    attrs = _inspect([n for n in ALL_NAMES if n in existing])
    for name, item in attrs.items():
        if not is_lab_member(item, name):
            found.append(
                f"a Podman container named {name} exists and is not part of the flowtrace lab "
                f"(no label {MEMBER_LABEL}={name}): rename or remove it"
            )
    network = _network(LAB_NETWORK)
    if network is not None and (network.get("labels") or {}).get(LAB_LABEL) != LAB_LABEL_VALUE:
        found.append(f"a Podman network named {LAB_NETWORK} exists and is not the lab's")
    pod = _pod()
    if pod is not None and (pod.get("Labels") or {}).get(LAB_LABEL) != LAB_LABEL_VALUE:
        found.append(f"a Podman pod named {POD} exists and is not the lab's")
    image = _image()
    if image is not None and (image.get("Labels") or {}).get(LAB_LABEL) != LAB_LABEL_VALUE:
        found.append(f"a Podman image tagged {PODMAN_IMAGE} exists and is not the lab's")
    return found + outside_conflicts()


# --- building -------------------------------------------------------------------------------


def _label_args(labels: dict[str, str]) -> list[str]:
    return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]


def _ensure_image(env: dict[str, str], busybox: str) -> list[str]:
    if _image() is not None:
        return []
    check_busybox(busybox)
    with open(busybox, "rb") as binary:
        data = build_image_tar(binary.read(), busybox_applets(busybox))
    podman(
        "import",
        "--change", f"LABEL {LAB_LABEL}={LAB_LABEL_VALUE}",
        "--change", "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin",
        "--change", 'CMD ["sleep", "infinity"]',
        "-", PODMAN_IMAGE,
        data=data, env=env,
    )  # fmt: skip
    return [f"created image {PODMAN_IMAGE} from {busybox} (podman import)"]


def _ensure_network(env: dict[str, str]) -> list[str]:
    if _network(LAB_NETWORK) is not None:
        return []
    podman("network", "create", *_label_args({LAB_LABEL: LAB_LABEL_VALUE}), LAB_NETWORK, env=env)
    return [f"created Podman network {LAB_NETWORK}"]


def _run(spec: ContainerSpec, env: dict[str, str], where: list[str]) -> None:
    ports = [arg for inner, outer in spec.ports for arg in ("--publish", f"{outer}:{inner}/tcp")]
    # a pod's members share its infra container's UTS namespace, hostname included
    hostname = [] if "--pod" in where else ["--hostname", spec.name]
    podman(
        "run", "--detach", "--name", spec.name, *hostname,
        *_label_args(member_labels(spec.name, spec.digest())),
        *where, *ports, PODMAN_IMAGE, *spec.command,
        env=env,
    )  # fmt: skip


def _ensure_container(spec: ContainerSpec, env: dict[str, str], where: list[str]) -> list[str]:
    """Make, remake (outdated settings) or start one lab container."""
    existing = _existing()
    attrs = _inspect([spec.name]).get(spec.name) if spec.name in existing else None
    if attrs is None:
        _run(spec, env, where)
        return [f"created container {spec.name}"]
    view = container_view(spec.name, attrs)
    if _labels(attrs).get(SPEC_LABEL) != spec.digest():
        podman("rm", "--force", "--time", "0", spec.name, env=env)
        _run(spec, env, where)
        return [f"recreated container {spec.name} (its settings changed)"]
    if view.running:
        return []
    try:
        podman("start", spec.name, env=env)
    except PodmanCommandError:  # e.g. made with limits this machine refuses, or its network gone
        podman("rm", "--force", "--time", "0", spec.name, env=env)
        _run(spec, env, where)
        return [f"recreated container {spec.name} (it could not start again)"]
    return [f"started container {spec.name} (was {view.status})"]


def _ensure_pod(env: dict[str, str]) -> list[str]:
    changes: list[str] = []
    if _pod() is None:
        podman(
            "pod", "create", "--name", POD, "--infra-name", POD_INFRA,
            "--infra-image", PODMAN_IMAGE, "--network", PODMAN_NETWORK,
            *_label_args({LAB_LABEL: LAB_LABEL_VALUE}),
            env=env,
        )  # fmt: skip
        changes.append(f"created pod {POD} (infra container {POD_INFRA})")
    for name in POD_MEMBERS:
        changes += _ensure_container(ContainerSpec(name, f"pod:{POD}"), env, ["--pod", POD])
    return changes


def up(busybox: str = BUSYBOX) -> LabState:
    """Make whatever of the Podman lab is missing and return it; idempotent."""
    require_privileges()
    with exclusive():
        found = conflicts()
        if found:
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            raise LabConflictError(found[0] + more)
        changes: list[str] = []
        note_before_up()
        with podman_env() as env:
            changes += _ensure_image(env, busybox)
            changes += _ensure_network(env)
            for spec in CONTAINERS:
                changes += _ensure_container(spec, env, ["--network", spec.network])
            changes += _ensure_pod(env)
        changes += ensure_outside()
        state = survey()
    return replace(state, changes=tuple(changes))


def status() -> LabState:
    require_privileges()
    return survey()


def members_present() -> bool:
    """Some container of the Podman lab exists (it uses the shared outside host)."""
    if shutil.which("podman") is None:
        return False
    try:
        names = podman("ps", "-a", "--filter", f"label={MEMBER_LABEL}", "--format", "{{.Names}}")
    except PodmanCommandError:
        return False
    return bool(names.split())


def _docker_lab_present() -> bool:
    """The Docker lab has containers (so the outside host stays)."""
    from flowtrace.endpoints import engines
    from flowtrace.endpoints.engines import EngineChoice
    from flowtrace.errors import DockerUnavailableError

    try:
        with engines.using(EngineChoice("docker")):
            client = engines.client()
            return bool(client.api.containers(all=True, filters={"label": MEMBER_LABEL}))
    except DockerUnavailableError:
        return False


def down() -> list[str]:
    """Remove everything the Podman lab made, and only that; returns what was removed."""
    require_privileges()
    removed: list[str] = []
    kept: list[str] = []
    with exclusive(), podman_env() as env:
        existing = _existing()
        attrs = _inspect([n for n in ALL_NAMES if n in existing])
        for name in reversed(ALL_NAMES):
            item = attrs.get(name)
            if item is not None and is_lab_member(item, name):
                podman("rm", "--force", "--time", "0", name, env=env)
                removed.append(f"container {name} ({str(item.get('Id', ''))[:12]})")
        pod = _pod()
        if pod is not None and (pod.get("Labels") or {}).get(LAB_LABEL) == LAB_LABEL_VALUE:
            podman("pod", "rm", "--force", "--time", "0", POD, env=env)
            removed.append(f"pod {POD} (and its infra container {POD_INFRA})")
        network = _network(LAB_NETWORK)
        if network is not None and (network.get("labels") or {}).get(LAB_LABEL) == LAB_LABEL_VALUE:
            try:
                podman("network", "rm", LAB_NETWORK, env=env)
                removed.append(f"Podman network {LAB_NETWORK}")
            except PodmanCommandError as exc:
                kept.append(f"Podman network {LAB_NETWORK} ({exc.message})")
        image = _image()
        if image is not None and (image.get("Labels") or {}).get(LAB_LABEL) == LAB_LABEL_VALUE:
            try:
                podman("rmi", PODMAN_IMAGE, env=env)
                removed.append(f"image {PODMAN_IMAGE}")
            except PodmanCommandError as exc:
                kept.append(f"image {PODMAN_IMAGE} ({exc.message})")
        running = podman("ps", "--quiet", env=env).split()
        removed += remove_if_ours(podman_running=bool(running))
        if not _docker_lab_present():
            removed += remove_outside()
    if kept:
        raise LabPartlyRemovedError(
            f"kept {'; '.join(kept)}: remove what uses it, then run "
            "`flowtrace lab down --engine podman` again",
            removed,
        )
    return removed


def render_summary(state: LabState) -> str:
    if state.complete:
        return (
            "the Podman lab is up: try `flowtrace ping --engine podman c1 c2`, "
            "`flowtrace dns --engine podman c3 c4` or `flowtrace ping --engine podman pa pb` "
            "(one pod, over lo)"
        )
    return "missing: " + ", ".join(state.missing)

"""The lab as a whole: `status`, `up` and `down` of the base lab on the real engine and kernel.

`up()` builds, with no registry and no docker CLI:

* an image imported from a tar made in memory of the machine's static busybox;
* containers c1, c2 on the default bridge (docker0), c3, c4 on the user-defined
  bridge network ``ftlab`` (they reach each other by name), and ``web`` on docker0
  publishing TCP 8080 -> 80 (busybox httpd);
* the outside host ``ft-outside`` (flowtrace.lab.outside).

Everything the lab makes carries a name and, where Docker allows, a label, so `down()`
removes exactly that, scenario parts included; the outside host stays while the Podman
lab (flowtrace.lab.podman) uses it too.  Changes run under the lab lock.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flowtrace.errors import FlowtraceError
from flowtrace.lab.base import (
    BUSYBOX,
    CONTAINER_NAMES,
    CONTAINERS,
    DEFAULT_NETWORK,
    IMAGE,
    LAB_NETWORK,
    MEMBER_LABEL,
    WEB_CONTAINER,
    WEB_PORT,
    LabConflictError,
    LabContainer,
    LabPartlyRemovedError,
    LabState,
)
from flowtrace.lab.catalog import remove_parts
from flowtrace.lab.engine import (
    container_view,
    ensure_container,
    ensure_network,
    foreign_network,
    get_container,
    get_image,
    get_network,
    is_lab_container,
    is_lab_labelled,
    lab_client,
    network_view,
    short,
)
from flowtrace.lab.guard import exclusive, require_privileges
from flowtrace.lab.images import ensure_image
from flowtrace.lab.outside import ensure_outside, outside_conflicts, outside_view, remove_outside
from flowtrace.lab.podman import members_present as podman_lab_present


def survey(client: Any) -> LabState:
    """The base lab as Docker and the kernel report it, with what is missing."""
    image = get_image(client)
    networks = tuple(
        network_view(name, get_network(client, name)) for name in (DEFAULT_NETWORK, LAB_NETWORK)
    )
    containers: list[LabContainer] = []
    for spec in CONTAINERS:
        found = get_container(client, spec.name)
        lab_owned = found is not None and is_lab_container(found, spec.name)
        containers.append(container_view(spec.name, found if lab_owned else None))
    outside_host = outside_view()
    missing: list[str] = []
    if image is None or not is_lab_labelled(image.labels):
        missing.append(f"image {IMAGE}")
    missing.extend(f"network {net.name}" for net in networks if not net.present)
    for item in containers:
        if item.status == "missing":
            missing.append(f"container {item.name}")
        elif not item.running:
            missing.append(f"container {item.name} ({item.status})")
    missing.extend(outside_host.problems)
    return LabState(
        image_id=image.id if image is not None else "",
        networks=networks,
        containers=tuple(containers),
        outside=outside_host,
        missing=tuple(missing),
    )


def _conflicts(client: Any) -> list[str]:
    """Names and addresses the lab needs that something else holds."""
    found: list[str] = []
    for name in CONTAINER_NAMES:
        container = get_container(client, name)
        if container is not None and not is_lab_container(container, name):
            found.append(
                f"a container named {name} exists and is not part of the flowtrace lab "
                f"(no label {MEMBER_LABEL}={name}): rename or remove it"
            )
    found += foreign_network(get_network(client, LAB_NETWORK), LAB_NETWORK)
    image = get_image(client)
    if image is not None and not is_lab_labelled(image.labels):
        found.append(f"an image tagged {IMAGE} exists and is not the lab's: remove or retag it")
    found += outside_conflicts()
    for other in client.containers.list(all=True):
        if other.name in CONTAINER_NAMES:
            continue
        bindings = ((other.attrs.get("HostConfig") or {}).get("PortBindings")) or {}
        if any(str(b.get("HostPort")) == str(WEB_PORT) for v in bindings.values() for b in v or ()):
            found.append(
                f"container {other.name} publishes port {WEB_PORT}, which {WEB_CONTAINER} needs"
            )
    return found


def status() -> LabState:
    """What of the lab exists now; `missing` names what is absent or stopped."""
    require_privileges()
    return survey(lab_client())


def up(busybox: str = BUSYBOX) -> LabState:
    """Make whatever of the lab is missing and return the lab; idempotent.

    Nothing is touched when a name or an address the lab needs belongs to something
    else: that raises LabConflictError first.
    """
    from docker.errors import APIError

    require_privileges()
    client = lab_client()
    with exclusive():
        conflicts = _conflicts(client)
        if conflicts:
            more = f" (and {len(conflicts) - 1} more)" if len(conflicts) > 1 else ""
            raise LabConflictError(conflicts[0] + more)
        changes: list[str] = []
        try:
            changes += ensure_image(client, busybox)
            changes += ensure_network(client)
            for spec in CONTAINERS:
                changes += ensure_container(client, spec)
        except APIError as exc:
            raise FlowtraceError(f"Docker refused to build the lab: {short(exc)}") from None
        changes += ensure_outside()
        state = survey(client)
    return replace(state, changes=tuple(changes))


def _creation_rank(name: str) -> tuple[int, str]:
    rank = CONTAINER_NAMES.index(name) if name in CONTAINER_NAMES else len(CONTAINER_NAMES)
    return rank, name


def _remove_image(client: Any, removed: list[str], kept: list[str]) -> None:
    """The lab's image, unless a container (a stranger's too) still uses it."""
    from docker.errors import APIError, NotFound

    image = get_image(client)
    if image is None or not is_lab_labelled(image.labels):
        return
    users = [c.name for c in client.containers.list(all=True) if c.attrs.get("Image") == image.id]
    if users:
        kept.append(f"image {IMAGE} (used by container {', '.join(sorted(users))})")
        return
    try:
        client.images.remove(image.id, force=False)
        removed.append(f"image {IMAGE}")
    except NotFound:
        pass
    except APIError as exc:
        kept.append(f"image {IMAGE} ({short(exc)})")


def down() -> list[str]:
    """Remove everything the lab made (scenarios' parts too), and only that; returns what
    was removed.

    A lab part that something else still uses (a stranger's container on the lab
    image or network) is kept, and a LabConflictError says so after the rest is gone.
    """
    from docker.errors import APIError

    require_privileges()
    client = lab_client()
    removed: list[str] = []
    kept: list[str] = []
    with exclusive():
        members = client.containers.list(all=True, filters={"label": MEMBER_LABEL})
        for container in sorted(members, key=lambda c: _creation_rank(c.name)):
            if not is_lab_container(container, container.name):
                continue
            container.remove(force=True)
            removed.append(f"container {container.name} ({container.id[:12]})")
        gone, still = remove_parts(client)  # a scenario's namespaces, links and networks
        removed += gone
        kept += still
        network = get_network(client, LAB_NETWORK)
        if network is not None and is_lab_labelled(network.attrs.get("Labels")):
            try:
                network.remove()
                removed.append(f"network {LAB_NETWORK}")
            except APIError as exc:
                kept.append(f"network {LAB_NETWORK} ({short(exc)})")
        _remove_image(client, removed, kept)
        if not podman_lab_present():  # else the Podman lab still uses it
            removed += remove_outside()
    if kept:
        raise LabPartlyRemovedError(
            f"kept {'; '.join(kept)}: remove what uses it, then run `flowtrace lab down` again",
            removed,
        )
    return removed

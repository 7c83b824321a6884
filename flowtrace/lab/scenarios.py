"""One scenario at a time: `lab up/status/down --scenario NAME` on top of the base lab.

Scenario containers are lab containers: they carry the lab's labels (so a plain
`flowtrace lab down` removes them with the rest) plus SCENARIO_LABEL, which
`lab down --scenario NAME` uses to remove one scenario and leave the base lab up.
What a scenario consists of is flowtrace.lab.catalog's; its text is here, beside the
state it shows, as the CLI reads both from this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import flowtrace.lab.core as core
import flowtrace.lab.ipv6 as ipv6
import flowtrace.lab.own_engine as own_engine
from flowtrace.errors import FlowtraceError
from flowtrace.lab.base import (
    IMAGE,
    MEMBER_LABEL,
    OUTSIDE_NETNS,
    SCENARIO_LABEL,
    SPEC_LABEL,
    UPLINK_IP,
    WEB_CONTAINER,
    LabConflictError,
    LabContainer,
    LabPartlyRemovedError,
    LabState,
    member_labels,
)
from flowtrace.lab.catalog import Member, Scenario, get
from flowtrace.lab.engine import (
    container_view,
    get_container,
    get_image,
    is_lab_container,
    is_lab_labelled,
    lab_client,
    labels,
    owned,
    running_pid,
    short,
)
from flowtrace.lab.guard import exclusive, require_privileges
from flowtrace.lab.images import ensure_image
from flowtrace.lab.links import netns_usable, pid_netns_inode
from flowtrace.lab.render import table


@dataclass(frozen=True)
class MemberView:
    """A scenario container as Docker and the kernel report it."""

    member: Member
    container: LabContainer
    #: Docker's HostConfig.NetworkMode ("default", "none", "host", "container:<id>").
    docker_mode: str = ""
    #: Inode of its network namespace while it runs (0 otherwise).
    netns_inode: int = 0


@dataclass(frozen=True)
class ScenarioState:
    scenario: Scenario
    lab: LabState
    members: tuple[MemberView, ...] = ()
    #: Parts of the base lab or of the scenario that are absent or broken, in words.
    missing: tuple[str, ...] = ()
    #: What `up()` did, in words (the base lab's changes first).
    changes: tuple[str, ...] = field(default_factory=tuple)
    #: The scenario's other parts (namespaces, links) as table lines.
    parts: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return not self.missing

    def member(self, name: str) -> MemberView:
        for view in self.members:
            if view.member.name == name:
                return view
        raise KeyError(name)


# --- looking ----------------------------------------------------------------------------


def _running_inode(container: Any) -> int:
    """Inode of a running container's network namespace; 0 when it does not run."""
    pid = running_pid(container)
    return pid_netns_inode(pid) if pid else 0


def _view(member: Member, container: Any | None) -> MemberView:
    view = container_view(member.name, container)
    if container is None:
        return MemberView(member, view)
    mode = str((container.attrs.get("HostConfig") or {}).get("NetworkMode", ""))
    return MemberView(member, view, mode, _running_inode(container))


def _problems(view: MemberView, views: dict[str, MemberView]) -> list[str]:
    """What keeps one member from showing its situation, in words."""
    item, member = view.container, view.member
    if item.status == "missing":
        return [f"container {member.name}"]
    if not item.running:
        return [f"container {member.name} ({item.status})"]
    found = [
        f"container {member.name} on network {net}"
        for net in (member.network, *member.joins)
        if member.mode == "bridge" and net not in item.addresses
    ]
    if (member.publish or member.publish_all) and not item.ports:
        found.append(f"container {member.name}'s published port")
    owner = views.get(member.owner) if member.owner else None
    if owner is not None and owner.container.running and owner.netns_inode != view.netns_inode:
        found.append(f"container {member.name} in {owner.member.name}'s namespace")
    return found


def _survey(client: Any, scenario: Scenario, lab_state: LabState) -> ScenarioState:
    views = {m.name: _view(m, owned(client, m.name)) for m in scenario.members}
    missing = list(lab_state.missing)
    for view in views.values():
        missing += _problems(view, views)
    shown: list[str] = []
    if scenario.parts is not None:
        shown, found = scenario.parts.survey(client)
        missing += found
    return ScenarioState(
        scenario, lab_state, tuple(views.values()), tuple(missing), parts=tuple(shown)
    )


def _conflicts(client: Any, scenario: Scenario) -> list[str]:
    found = []
    for member in scenario.members:
        container = get_container(client, member.name)
        if container is not None and not is_lab_container(container, member.name):
            found.append(
                f"a container named {member.name} exists and is not part of the flowtrace lab "
                f"(no label {MEMBER_LABEL}={member.name}): rename or remove it"
            )
    parts = scenario.parts
    return found + (parts.conflicts(client) if parts is not None else [])


# --- building ---------------------------------------------------------------------------


def _create(client: Any, scenario: Scenario, member: Member) -> Any:
    from docker.errors import APIError

    options: dict[str, Any] = {}
    if member.mode == "bridge":
        options.update(network=member.network, hostname=member.name)
    else:  # Docker refuses a hostname of one's own in host and container modes
        options.update(network_mode=member.mode)
    options.update(member.port_options())
    container = client.containers.create(
        IMAGE,
        command=list(member.command),
        name=member.name,
        labels={**member_labels(member.name, member.digest(IMAGE)), SCENARIO_LABEL: scenario.name},
        restart_policy={"Name": "no"},
        detach=True,
        **options,
    )
    try:
        for network in member.joins:
            client.networks.get(network).connect(container)
        container.start()
    except APIError as exc:
        container.remove(force=True)
        raise LabConflictError(f"container {member.name} cannot start: {short(exc)}") from None
    return container


def _outdated(client: Any, member: Member, container: Any) -> str | None:
    """Why an existing member must be made again, or None."""
    if labels(container.attrs).get(SPEC_LABEL) != member.digest(IMAGE):
        return "its settings changed"
    if member.owner is None:
        return None
    owner = owned(client, member.owner)
    mode = str((container.attrs.get("HostConfig") or {}).get("NetworkMode", ""))
    if owner is None or mode != f"container:{owner.id}":
        return f"{member.owner} was made again"
    own, theirs = _running_inode(container), _running_inode(owner)
    if own and theirs and own != theirs:
        return f"{member.owner} restarted with a new namespace"
    return None


def _ensure(client: Any, scenario: Scenario, member: Member) -> list[str]:
    """Make, repair or start one member; members are ensured owners first."""
    from docker.errors import APIError

    container = owned(client, member.name)
    if container is None:
        _create(client, scenario, member)
        return [f"created container {member.name}"]
    why = _outdated(client, member, container)
    if why is not None:
        container.remove(force=True)
        _create(client, scenario, member)
        return [f"recreated container {member.name} ({why})"]
    changes = []
    view = _view(member, container)
    for network in member.joins if member.mode == "bridge" else ():
        if network not in view.container.addresses:
            client.networks.get(network).connect(container)
            changes.append(f"connected container {member.name} to network {network}")
    if not view.container.running:
        try:
            container.start()
        except APIError:
            container.remove(force=True)
            _create(client, scenario, member)
            return [*changes, f"recreated container {member.name} (it could not start again)"]
        changes.append(f"started container {member.name} (was {view.container.status})")
    return changes


def up(name: str) -> ScenarioState:
    """Bring the base lab up, then the scenario's containers; idempotent.

    A scenario on an engine of its own gets that engine (started when it is not) and
    its image there instead of the base lab."""
    scenario = get(name)
    if scenario.own_engine:
        require_privileges()
        here = getattr(scenario.parts, "machine_conflicts", None)
        found = here() if here is not None else []
        if found:
            raise LabConflictError("; ".join(found))
        with exclusive():
            started = own_engine.start()
        with own_engine.entered():
            built = _build(scenario, own=True)
        return replace(built, changes=(*started, *built.changes))
    return _build(scenario, own=False)


def _build(scenario: Scenario, own: bool) -> ScenarioState:
    from docker.errors import APIError

    base = LabState() if own else core.up()
    client = lab_client()
    changes: list[str] = []
    with exclusive():
        conflicts = _conflicts(client, scenario)
        if conflicts:
            raise LabConflictError("; ".join(conflicts))
        parts = scenario.parts
        try:
            if own:
                changes += ensure_image(client)
            if parts is not None:
                changes += parts.build(client)
            for member in scenario.members:
                changes += _ensure(client, scenario, member)
            if parts is not None:
                changes += parts.attach(client)
        except APIError as exc:
            raise FlowtraceError(
                f"Docker refused to build scenario {scenario.name}: {short(exc)}"
            ) from None
        if own:
            base = _own_base(client)
        state = _survey(client, scenario, base)
    return replace(state, changes=(*base.changes, *changes))


def _own_base(client: Any) -> LabState:
    """What a scenario on its own engine needs of a base: the lab's image there."""
    image = get_image(client)
    if image is None or not is_lab_labelled(image.labels):
        return LabState(missing=(f"image {IMAGE}",))
    return LabState(image_id=image.id)


def status(name: str) -> ScenarioState:
    """The base lab (or the scenario's own engine) and the scenario's containers as they
    are now."""
    scenario = get(name)
    if scenario.own_engine:
        require_privileges()
        if not own_engine.running():
            return ScenarioState(scenario, LabState(), missing=(own_engine.not_running(),))
        with own_engine.entered():
            client = lab_client()
            return _survey(client, scenario, _own_base(client))
    base = core.status()
    return _survey(lab_client(), scenario, base)


def down(name: str) -> list[str]:
    """Remove the scenario's containers (sharers before owners), then its other parts;
    a scenario on an engine of its own, with that engine."""
    scenario = get(name)
    require_privileges()
    if scenario.own_engine:
        with exclusive():
            return own_engine.teardown(scenario.parts)
    client = lab_client()
    removed: list[str] = []
    kept: list[str] = []
    with exclusive():
        for member in reversed(scenario.members):
            container = owned(client, member.name)
            if container is None or labels(container.attrs).get(SCENARIO_LABEL) != name:
                continue
            container.remove(force=True)
            removed.append(f"container {member.name} ({container.id[:12]})")
        if scenario.parts is not None:
            gone, kept = scenario.parts.remove(client)
            removed += gone
    if kept:
        raise LabPartlyRemovedError(
            f"kept {'; '.join(kept)}: remove what uses it, then run "
            f"`flowtrace lab down --scenario {name}` again",
            removed,
        )
    return removed


# --- rendering --------------------------------------------------------------------------


def _mode_text(view: MemberView, views: dict[str, str]) -> str:
    mode = view.docker_mode or view.member.mode
    if mode.startswith("container:"):
        target = mode.split(":", 1)[1]
        return f"container:{views.get(target, target[:12])}"
    return "bridge" if mode == "default" else mode


def split_binding(text: str) -> tuple[str, int, str]:
    """ "0.0.0.0:49153->80/tcp" -> ("0.0.0.0", 49153, "80/tcp"); "[::]:…" -> ("::", …)."""
    host, _, inner = text.partition("->")
    ip, _, port = host.rpartition(":")
    return ip.strip("[]"), int(port), inner


def _web_of(state: ScenarioState) -> LabContainer:
    try:
        return state.lab.container(WEB_CONTAINER)
    except KeyError:
        return LabContainer(WEB_CONTAINER)


def _published_lines(state: ScenarioState) -> list[str]:
    """Each published port of the scenario (and web's, when it publishes) with the
    commands that trace it from an outside host and from the host: an IPv4 binding from
    ft-outside, a `::` one (the IPv6 twin Docker makes of every binding) from
    ft6-outside while the ipv6 scenario is up."""
    owners = [(v.member.name, v.container) for v in state.members]
    own = state.scenario.own_engine  # no base lab there, and traced from its host
    if not own and any(v.member.publish or v.member.publish_all for v in state.members):
        owners.insert(0, (WEB_CONTAINER, _web_of(state)))  # -p 8080:80, the base lab's
    published = [(name, *split_binding(p)) for name, item in owners for p in item.ports]
    if not published:
        return []
    outside6 = netns_usable(ipv6.OUTSIDE6_NETNS_PATH)
    lines = ["", "published (docker port), traced from the outside host and from the host:"]
    for name, host_ip, host_port, inner in published:
        if ":" in host_ip:
            lines.append(f"  {name}: [{host_ip}]:{host_port} -> {inner}")
            targets = [f"netns:{ipv6.OUTSIDE6_NETNS} [{ipv6.UPLINK6_IP}]"] if outside6 else []
            targets.append("host [::1]")
        else:
            lines.append(f"  {name}: {host_ip}:{host_port} -> {inner}")
            targets = [f"netns:{OUTSIDE_NETNS} {UPLINK_IP}"]
            if host_ip in ("0.0.0.0", "127.0.0.1"):
                targets.append("host 127.0.0.1")
            if host_ip in ("0.0.0.0", UPLINK_IP):
                targets.append(f"host {UPLINK_IP}")
        if ":" not in host_ip and own:  # no ft-outside and no 203.0.113.1 there
            targets = ["host 127.0.0.1"] if host_ip in ("0.0.0.0", "127.0.0.1") else []
        prefix = "flowtrace lab exec -- flowtrace" if own else "flowtrace"
        lines += [f"    {prefix} tcp {target}:{host_port}" for target in targets]
    return lines


def render(state: ScenarioState) -> str:
    """The scenario: what it shows, its containers, and the commands that trace it."""
    scenario = state.scenario
    lines = [f"scenario {scenario.name}: {scenario.situation}"]
    if state.members:
        ids = {v.container.id: v.member.name for v in state.members if v.container.id}
        rows = [
            (
                v.member.name,
                v.container.id[:12] or "-",
                v.container.status,
                _mode_text(v, ids),
                v.container.netns or "-",
                ", ".join(f"{net} {ip}" for net, ip in v.container.addresses.items()) or "-",
            )
            for v in state.members
        ]
        lines.append("")
        lines += table(("CONTAINER", "ID", "STATE", "NETWORK MODE", "NETNS", "NETWORK IP"), rows)
    if state.parts:
        lines.append("")
        lines += state.parts
    lines.append("")
    lines.append("trace it:")
    lines += [f"  {command}" for command in scenario.commands]
    lines += _published_lines(state)
    return "\n".join(lines)


def render_summary(state: ScenarioState) -> str:
    if state.complete:
        return f"scenario {state.scenario.name} is up"
    return "missing: " + ", ".join(state.missing)


def render_removed(name: str, removed: list[str]) -> str:
    if not removed:
        return f"nothing to remove: scenario {name} was not up"
    return "\n".join(f"- removed {item}" for item in removed)

"""Situations from container-networking guides, built on top of the lab: `lab up --scenario`.

Each scenario adds a few containers to the base lab (c1..c4, web, ftlab, ft-outside)
so one situation can be traced: a container with network mode none, one with
network mode host, two containers sharing one namespace (container mode), one joined
to a second network (`docker network connect`), and for `macvlan` a second host (a
namespace on a veth segment) with a Docker macvlan network: what is not a container
lives in the module a Scenario's `parts` names (flowtrace.lab_macvlan).  Some
situations need nothing beyond the base lab (two isolated bridges, a container
reaching the outside host).

Scenario containers are lab containers: they carry the lab's labels (so a plain
`flowtrace lab down` removes them with the rest) plus SCENARIO_LABEL, which
`lab down --scenario NAME` uses to remove one scenario and leave the base lab up.
Only the standard library is imported at module level: the CLI reads SCENARIO_NAMES
on every start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from flowtrace.errors import ExitStatus, FlowtraceError

if TYPE_CHECKING:
    from flowtrace.lab import LabContainer, LabState

#: On every container a scenario makes: the scenario's name.
SCENARIO_LABEL = "flowtrace.lab.scenario"

#: Network names the scenarios attach to (the same as flowtrace.lab's, which is
#: not imported here to keep the CLI's start fast; a unit test keeps them equal).
DEFAULT_NETWORK = "bridge"
LAB_NETWORK = "ftlab"


#: A member's command, publish, expose and publish_all when it sets none of them.
_PLAIN: tuple[object, ...] = (("sleep", "infinity"), (), (), False)
#: What the `ports` scenario's containers run (the same page as the lab's web).
HTTPD = ("httpd", "-f", "-p", "80", "-h", "/www")
#: The base lab's container publishing -p 8080:80 (flowtrace.lab.WEB_CONTAINER).
WEB = "web"
#: The host address the `ports` scenario binds one port to: the lab's uplink (flowtrace.lab).
UPLINK_IP = "203.0.113.1"


@dataclass(frozen=True)
class Member:
    """One container a scenario makes.

    `mode` is Docker's network mode: "bridge" (on `network`), "none", "host" or
    "container:<name of another member>".  `joins` are networks it is connected to
    after creation, as `docker network connect` does (eth1, eth2...).  `publish` are
    TCP ports in `docker run -p` syntax ("80", "127.0.0.1::80", "IP:9999:80");
    `publish_all` is `-P`: every exposed port (`expose`) on a random host port.
    """

    name: str
    mode: str = "bridge"
    network: str = DEFAULT_NETWORK
    joins: tuple[str, ...] = ()
    command: tuple[str, ...] = ("sleep", "infinity")
    publish: tuple[str, ...] = ()
    expose: tuple[int, ...] = ()
    publish_all: bool = False

    @property
    def owner(self) -> str | None:
        """The member whose namespace this one shares (container mode), else None."""
        return self.mode.split(":", 1)[1] if self.mode.startswith("container:") else None

    def digest(self, image: str) -> str:
        """Short digest of the settings: a container made from older settings is recreated."""
        import hashlib
        import json

        settings: list[Any] = [image, self.mode, self.network, list(self.joins)]
        if (self.command, self.publish, self.expose, self.publish_all) != _PLAIN:
            # only when set: the older members' digests (and containers) stay as they are
            settings += [list(self.command), list(self.publish), list(self.expose)]
            settings.append(self.publish_all)
        text = json.dumps(settings)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def port_options(self) -> dict[str, Any]:
        """The Docker SDK's `ports` and `publish_all_ports` for this member's -p / -P."""
        ports: dict[str, Any] = {f"{port}/tcp": [] for port in self.expose}
        for spec in self.publish:
            inner, binding = parse_publish(spec)
            ports.setdefault(f"{inner}/tcp", []).append(binding)
        options: dict[str, Any] = {"ports": ports} if ports else {}
        if self.publish_all:
            options["publish_all_ports"] = True
        return options


def parse_publish(spec: str) -> tuple[int, tuple[str, int | None] | int | None]:
    """`docker run -p` syntax (TCP) -> (container port, the Docker SDK's binding).

    "80" -> (80, None): a random host port on every address; "8080:80" -> (80, 8080);
    "127.0.0.1::80" -> (80, ("127.0.0.1", None)); "IP:9999:80" -> (80, ("IP", 9999)).
    """

    def number(text: str) -> int:
        if not text.isdigit() or not 0 < int(text) < 65536:
            raise ValueError(f"bad port {text!r} in -p {spec!r}")
        return int(text)

    parts = spec.split(":")
    if len(parts) == 1:
        return number(parts[0]), None
    if len(parts) == 2:
        return number(parts[1]), number(parts[0])
    if len(parts) == 3:
        ip, host, inner = parts
        return number(inner), (ip, number(host) if host else None)
    raise ValueError(f"cannot read -p {spec!r}: give [IP:][HOSTPORT:]PORT")


@dataclass(frozen=True)
class Scenario:
    name: str
    #: The situation in a few words, as the README's table names it.
    situation: str
    #: Commands that trace it, shown after `lab up --scenario`.
    commands: tuple[str, ...]
    members: tuple[Member, ...] = ()
    #: A module that builds what is not a container (namespaces, links, networks):
    #: conflicts(), build() before the members, attach() after them, survey() (table
    #: lines and what is missing) and remove(), each given a Docker client.
    parts: str = ""

    def parts_module(self) -> Any | None:
        import importlib

        return importlib.import_module(self.parts) if self.parts else None


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "none",
            "network mode none: nonec has only lo",
            ("flowtrace ping nonec c1", "flowtrace ping c1 nonec"),
            (Member("nonec", mode="none"),),
        ),
        Scenario(
            "host",
            "network mode host: hostc shares the host's namespace",
            ("flowtrace ping hostc c1", "flowtrace path hostc c1"),
            (Member("hostc", mode="host"),),
        ),
        Scenario(
            "shared",
            "container mode: sharerc runs in ownerc's namespace",
            (
                "flowtrace ping sharerc ownerc",
                "docker stop ownerc && flowtrace ping sharerc c1",
            ),
            (Member("ownerc"), Member("sharerc", mode="container:ownerc")),
        ),
        Scenario(
            "dns",
            "names: c3 and c4 on ftlab resolve each other through Docker's embedded DNS, "
            "c1 and c2 on docker0 cannot",
            ("flowtrace dns c3 c4", "flowtrace ping c3 c4", "flowtrace dns c1 c2"),
        ),
        Scenario(
            "isolated",
            "two bridges: c1 on docker0 cannot reach c3 on ftlab",
            ("flowtrace ping c1 c3",),
        ),
        Scenario(
            "multi",
            "docker network connect: multi is on docker0 (eth0) and ftlab (eth1)",
            ("flowtrace ping multi c1", "flowtrace ping multi c3"),
            (Member("multi", joins=(LAB_NETWORK,)),),
        ),
        Scenario(
            "ports",
            "published ports, every form: -p 8080:80 (web), -p 80, -p 127.0.0.1::80, "
            f"-p {UPLINK_IP}:9999:80, -P",
            (
                f"flowtrace tcp netns:ft-outside {UPLINK_IP}:8080",
                "flowtrace tcp host 127.0.0.1:8080",
                f"flowtrace tcp host {UPLINK_IP}:8080",
            ),
            (
                Member("pub-random", command=HTTPD, publish=("80",)),
                Member("pub-loopback", command=HTTPD, publish=("127.0.0.1::80",)),
                Member("pub-9999", command=HTTPD, publish=(f"{UPLINK_IP}:9999:80",)),
                Member("pub-all", command=HTTPD, expose=(80,), publish_all=True),
            ),
        ),
        Scenario(
            "outside",
            "container to the outside host through MASQUERADE",
            ("flowtrace ping c1 netns:ft-outside",),
        ),
        Scenario(
            "macvlan",
            "macvlan across two hosts: m1 on host A and m2 on host B (netns ft-hostb) "
            "reach each other but not their own host",
            (
                "flowtrace ping m1 m2",
                "flowtrace ping m1 host",
                "flowtrace ping m2 netns:ft-hostb",
                "flowtrace ping m1 netns:ft-hostb",
            ),
            (Member("m1", network="ftmacvlan"), Member("m2", mode="none")),
            parts="flowtrace.lab_macvlan",
        ),
    )
}
SCENARIO_NAMES = tuple(SCENARIOS)


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


def get(name: str) -> Scenario:
    """The scenario called `name`; a usage error naming the choices otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise FlowtraceError(
            f"no scenario named {name!r}: choose one of {', '.join(SCENARIO_NAMES)}",
            ExitStatus.USAGE,
        ) from None


# --- looking ----------------------------------------------------------------------------


def _inode(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return 0


def _view(member: Member, container: Any | None) -> MemberView:
    from flowtrace.lab import _container_view

    view = _container_view(member.name, container)
    if container is None:
        return MemberView(member, view)
    mode = str((container.attrs.get("HostConfig") or {}).get("NetworkMode", ""))
    return MemberView(member, view, mode, _running_inode(container))


def _owned(client: Any, name: str) -> Any | None:
    """The lab's container called `name`, None when there is none (or a stranger's)."""
    from flowtrace.lab import _get_container, _is_lab_container

    container = _get_container(client, name)
    if container is None or not _is_lab_container(container, name):
        return None
    return container


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
    views = {m.name: _view(m, _owned(client, m.name)) for m in scenario.members}
    missing = list(lab_state.missing)
    for view in views.values():
        missing += _problems(view, views)
    parts = scenario.parts_module()
    shown: list[str] = []
    if parts is not None:
        shown, found = parts.survey(client)
        missing += found
    return ScenarioState(
        scenario, lab_state, tuple(views.values()), tuple(missing), parts=tuple(shown)
    )


def _conflicts(client: Any, scenario: Scenario) -> list[str]:
    from flowtrace.lab import MEMBER_LABEL, _get_container, _is_lab_container

    found = []
    for member in scenario.members:
        container = _get_container(client, member.name)
        if container is not None and not _is_lab_container(container, member.name):
            found.append(
                f"a container named {member.name} exists and is not part of the flowtrace lab "
                f"(no label {MEMBER_LABEL}={member.name}): rename or remove it"
            )
    parts = scenario.parts_module()
    return found + (parts.conflicts(client) if parts is not None else [])


# --- building ---------------------------------------------------------------------------


def _create(client: Any, scenario: Scenario, member: Member) -> Any:
    from docker.errors import APIError

    from flowtrace.lab import (
        IMAGE,
        LAB_LABEL,
        LAB_LABEL_VALUE,
        MEMBER_LABEL,
        SPEC_LABEL,
        LabConflictError,
        _short,
    )

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
        labels={
            LAB_LABEL: LAB_LABEL_VALUE,
            MEMBER_LABEL: member.name,
            SPEC_LABEL: member.digest(IMAGE),
            SCENARIO_LABEL: scenario.name,
        },
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
        raise LabConflictError(f"container {member.name} cannot start: {_short(exc)}") from None
    return container


def _outdated(client: Any, member: Member, container: Any) -> str | None:
    """Why an existing member must be made again, or None."""
    from flowtrace.lab import IMAGE, SPEC_LABEL, _labels

    if _labels(container.attrs).get(SPEC_LABEL) != member.digest(IMAGE):
        return "its settings changed"
    if member.owner is None:
        return None
    owner = _owned(client, member.owner)
    mode = str((container.attrs.get("HostConfig") or {}).get("NetworkMode", ""))
    if owner is None or mode != f"container:{owner.id}":
        return f"{member.owner} was made again"
    own, theirs = _running_inode(container), _running_inode(owner)
    if own and theirs and own != theirs:
        return f"{member.owner} restarted with a new namespace"
    return None


def _running_inode(container: Any) -> int:
    """Inode of a running container's network namespace; 0 when it does not run."""
    state = container.attrs.get("State") or {}
    pid = int(state.get("Pid") or 0)
    return _inode(pid) if state.get("Running") and pid else 0


def _ensure(client: Any, scenario: Scenario, member: Member) -> list[str]:
    """Make, repair or start one member; members are ensured owners first."""
    from docker.errors import APIError

    container = _owned(client, member.name)
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
    """Bring the base lab up, then the scenario's containers; idempotent."""
    from docker.errors import APIError

    from flowtrace import lab

    scenario = get(name)
    base = lab.up()
    client = lab._docker()
    changes: list[str] = []
    with lab._exclusive():
        conflicts = _conflicts(client, scenario)
        if conflicts:
            raise lab.LabConflictError("; ".join(conflicts))
        parts = scenario.parts_module()
        try:
            if parts is not None:
                changes += parts.build(client)
            for member in scenario.members:
                changes += _ensure(client, scenario, member)
            if parts is not None:
                changes += parts.attach(client)
        except APIError as exc:
            raise FlowtraceError(
                f"Docker refused to build scenario {name}: {lab._short(exc)}"
            ) from None
        state = _survey(client, scenario, base)
    return replace(state, changes=(*base.changes, *changes))


def status(name: str) -> ScenarioState:
    """The base lab and the scenario's containers as they are now."""
    from flowtrace import lab

    scenario = get(name)
    base = lab.status()
    return _survey(lab._docker(), scenario, base)


def down(name: str) -> list[str]:
    """Remove the scenario's containers (sharers before owners), then its other parts."""
    from flowtrace import lab

    scenario = get(name)
    lab.require_privileges()
    client = lab._docker()
    removed: list[str] = []
    kept: list[str] = []
    parts = scenario.parts_module()
    with lab._exclusive():
        for member in reversed(scenario.members):
            container = _owned(client, member.name)
            if container is None or lab._labels(container.attrs).get(SCENARIO_LABEL) != name:
                continue
            container.remove(force=True)
            removed.append(f"container {member.name} ({container.id[:12]})")
        if parts is not None:
            gone, kept = parts.remove(client)
            removed += gone
    if kept:
        raise lab.LabPartlyRemovedError(
            f"kept {'; '.join(kept)}: remove what uses it, then run "
            f"`flowtrace lab down --scenario {name}` again",
            removed,
        )
    return removed


def remove_parts(client: Any) -> tuple[list[str], list[str]]:
    """What every scenario made besides containers, for a plain `lab down` (lock held)."""
    removed: list[str] = []
    kept: list[str] = []
    for scenario in SCENARIOS.values():
        parts = scenario.parts_module()
        if parts is not None:
            gone, still = parts.remove(client)
            removed += gone
            kept += still
    return removed, kept


# --- rendering --------------------------------------------------------------------------


def _mode_text(view: MemberView, views: dict[str, str]) -> str:
    mode = view.docker_mode or view.member.mode
    if mode.startswith("container:"):
        target = mode.split(":", 1)[1]
        return f"container:{views.get(target, target[:12])}"
    return "bridge" if mode == "default" else mode


def render(state: ScenarioState) -> str:
    """The scenario: what it shows, its containers, and the commands that trace it."""
    from flowtrace.lab import _table

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
        lines += _table(("CONTAINER", "ID", "STATE", "NETWORK MODE", "NETNS", "NETWORK IP"), rows)
    if state.parts:
        lines.append("")
        lines += state.parts
    lines.append("")
    lines.append("trace it:")
    lines += [f"  {command}" for command in scenario.commands]
    owners = [(v.member.name, v.container) for v in state.members]
    if any(v.member.publish or v.member.publish_all for v in state.members):
        owners.insert(0, (WEB, _web_of(state)))  # -p 8080:80, the base lab's
    published = [(name, *split_binding(p)) for name, item in owners for p in item.ports]
    if published:
        lines.append("")
        lines.append("published (docker port), traced from the outside host and from the host:")
        for name, host_ip, host_port, inner in published:
            if ":" in host_ip:
                continue  # the IPv6 twin of a binding: flowtrace traces IPv4
            lines.append(f"  {name}: {host_ip}:{host_port} -> {inner}")
            targets = [f"netns:ft-outside {UPLINK_IP}"]
            if host_ip in ("0.0.0.0", "127.0.0.1"):
                targets.append("host 127.0.0.1")
            if host_ip in ("0.0.0.0", UPLINK_IP):
                targets.append(f"host {UPLINK_IP}")
            lines += [f"    flowtrace tcp {target}:{host_port}" for target in targets]
    return "\n".join(lines)


def _web_of(state: ScenarioState) -> LabContainer:
    try:
        return state.lab.container(WEB)
    except KeyError:
        from flowtrace.lab import LabContainer

        return LabContainer(WEB)


def split_binding(text: str) -> tuple[str, int, str]:
    """ "0.0.0.0:49153->80/tcp" -> ("0.0.0.0", 49153, "80/tcp"); "[::]:…" -> ("::", …)."""
    host, _, inner = text.partition("->")
    ip, _, port = host.rpartition(":")
    return ip.strip("[]"), int(port), inner


def render_summary(state: ScenarioState) -> str:
    if state.complete:
        return f"scenario {state.scenario.name} is up"
    return "missing: " + ", ".join(state.missing)


def render_removed(name: str, removed: list[str]) -> str:
    if not removed:
        return f"nothing to remove: scenario {name} was not up"
    return "\n".join(f"- removed {item}" for item in removed)

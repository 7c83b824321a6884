"""The scenarios as data: situations from container-networking guides, each a few
containers (and, for macvlan, other parts) added to the base lab by `lab up --scenario`.

A container with network mode none, one with network mode host, two containers
sharing one namespace (container mode), one joined to a second network (`docker
network connect`), published ports in every form, and for `macvlan` a second host (a
namespace on a veth segment) with a Docker macvlan network, built by the module a
Scenario's `parts` is (flowtrace.lab.macvlan).  Some situations need nothing beyond
the base lab (two isolated bridges, a container reaching the outside host).  The CLI
reads SCENARIO_NAMES on every start, so nothing this imports loads Docker or pyroute2
before a lab command runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import flowtrace.lab.hosts as hosts
import flowtrace.lab.ipv6 as ipv6
import flowtrace.lab.macvlan as macvlan
import flowtrace.lab.own_engine as own_engine
from flowtrace.errors import ExitStatus, FlowtraceError
from flowtrace.lab.base import (
    DEFAULT_NETWORK,
    HTTPD_COMMAND,
    LAB_NETWORK,
    OUTSIDE_NETNS,
    UPLINK_IP,
    WEB_CONTAINER_PORT,
    WEB_PORT,
    settings_digest,
)

#: A member's command, publish, expose and publish_all when it sets none of them.
_PLAIN: tuple[object, ...] = (("sleep", "infinity"), (), (), False)


class ScenarioParts(Protocol):
    """What a scenario builds besides containers (namespaces, links, networks); each call
    gets a Docker client and runs with the lab lock held."""

    def conflicts(self, client: Any) -> list[str]:
        """Names and addresses the parts need that something else holds."""
        ...

    def build(self, client: Any) -> list[str]:
        """Before the members are made; returns what changed, in words."""
        ...

    def attach(self, client: Any) -> list[str]:
        """After the members are made; returns what changed, in words."""
        ...

    def survey(self, client: Any) -> tuple[list[str], list[str]]:
        """(table lines, what is missing in words)."""
        ...

    def remove(self, client: Any) -> tuple[list[str], list[str]]:
        """(removed, kept with why), in words."""
        ...


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
        settings: list[Any] = [image, self.mode, self.network, list(self.joins)]
        if (self.command, self.publish, self.expose, self.publish_all) != _PLAIN:
            # only when set: the older members' digests (and containers) stay as they are
            settings += [list(self.command), list(self.publish), list(self.expose)]
            settings.append(self.publish_all)
        return settings_digest(settings)

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
    #: What it builds besides containers: build() before the members, attach() after.
    parts: ScenarioParts | None = None
    #: It runs on an engine of the lab's own in a namespace of its own
    #: (flowtrace.lab.own_engine), not on the machine's engine and without the base lab.
    own_engine: bool = False


#: flowtrace on the IPv6 lab's host (its own engine, in namespace ft6-host).
_IN6 = "flowtrace lab exec -- flowtrace"

#: The port web and the `ports` scenario's httpd containers listen on, as -p writes it.
_HTTPD_PORT = str(WEB_CONTAINER_PORT)

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
            f"published ports, every form: -p {WEB_PORT}:{_HTTPD_PORT} (web), -p {_HTTPD_PORT}, "
            f"-p 127.0.0.1::{_HTTPD_PORT}, -p {UPLINK_IP}:9999:{_HTTPD_PORT}, -P",
            (
                f"flowtrace tcp netns:{OUTSIDE_NETNS} {UPLINK_IP}:{WEB_PORT}",
                f"flowtrace tcp host 127.0.0.1:{WEB_PORT}",
                f"flowtrace tcp host {UPLINK_IP}:{WEB_PORT}",
            ),
            (
                Member("pub-random", command=HTTPD_COMMAND, publish=(_HTTPD_PORT,)),
                Member(
                    "pub-loopback", command=HTTPD_COMMAND, publish=(f"127.0.0.1::{_HTTPD_PORT}",)
                ),
                Member(
                    "pub-9999", command=HTTPD_COMMAND, publish=(f"{UPLINK_IP}:9999:{_HTTPD_PORT}",)
                ),
                Member(
                    "pub-all", command=HTTPD_COMMAND, expose=(WEB_CONTAINER_PORT,), publish_all=True
                ),
            ),
        ),
        Scenario(
            "outside",
            "container to the outside host through MASQUERADE",
            (f"flowtrace ping c1 netns:{OUTSIDE_NETNS}",),
        ),
        Scenario(
            macvlan.SCENARIO,
            f"macvlan across two hosts: {macvlan.M1} on host A and {macvlan.M2} on host B "
            f"(netns {macvlan.HOSTB_NETNS}) reach each other but not their own host",
            (
                f"flowtrace ping {macvlan.M1} {macvlan.M2}",
                f"flowtrace ping {macvlan.M1} host",
                f"flowtrace ping {macvlan.M2} netns:{macvlan.HOSTB_NETNS}",
                f"flowtrace ping {macvlan.M1} netns:{macvlan.HOSTB_NETNS}",
            ),
            (Member(macvlan.M1, network=macvlan.NETWORK), Member(macvlan.M2, mode="none")),
            parts=macvlan,
        ),
        Scenario(
            hosts.SCENARIO,
            "two more Docker hosts (engines of their own) on a LAN: a swarm with the attachable "
            f"overlay {hosts.OVERLAY}, macvlan {hosts.MACVLAN} on the LAN, a published port",
            (
                "flowtrace ping o1@hosta o2@hostb",
                f"flowtrace tcp c1@hosta {hosts.WORKER.lan_ip}:8080",
                "flowtrace ping m1@hosta m2@hostb",
                "flowtrace ping m1@hosta host@hosta",
            ),
            parts=hosts,
        ),
        Scenario(
            ipv6.SCENARIO,
            f"IPv6: {ipv6.A}, {ipv6.B} and {ipv6.WEB} on the dual-stack network {ipv6.NETWORK} "
            f"({ipv6.SUBNET6}), the IPv6 outside host {ipv6.OUTSIDE6_NETNS} "
            f"({ipv6.OUTSIDE6_IP}) through NAT66, {ipv6.WEB} publishing {ipv6.WEB_PORT6} on "
            f"0.0.0.0 and [::], on the lab's own engine in namespace {own_engine.NETNS}",
            (
                f"{_IN6} ping -6 {ipv6.A} {ipv6.B}",
                f"{_IN6} ping {ipv6.A} {ipv6.B}",
                f"{_IN6} ping {ipv6.A} netns:{ipv6.OUTSIDE6_NETNS}",
                f"{_IN6} tcp netns:{ipv6.OUTSIDE6_NETNS} [{ipv6.UPLINK6_IP}]:{ipv6.WEB_PORT6}",
                f"{_IN6} tcp host [::1]:{ipv6.WEB_PORT6}",
                f"{_IN6} dns {ipv6.A} {ipv6.B} -t AAAA",
            ),
            (
                Member(ipv6.A, network=ipv6.NETWORK),
                Member(ipv6.B, network=ipv6.NETWORK),
                Member(
                    ipv6.WEB,
                    network=ipv6.NETWORK,
                    command=HTTPD_COMMAND,
                    publish=(f"{ipv6.WEB_PORT6}:{_HTTPD_PORT}",),
                ),
            ),
            parts=ipv6,
            own_engine=True,
        ),
    )
}
SCENARIO_NAMES = tuple(SCENARIOS)


def get(name: str) -> Scenario:
    """The scenario called `name`; a usage error naming the choices otherwise."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise FlowtraceError(
            f"no scenario named {name!r}: choose one of {', '.join(SCENARIO_NAMES)}",
            ExitStatus.USAGE,
        ) from None


def remove_parts(client: Any) -> tuple[list[str], list[str]]:
    """What every scenario made besides containers, for a plain `lab down` (lock held);
    a scenario on an engine of its own goes with that engine, containers and all."""
    removed: list[str] = []
    kept: list[str] = []
    for scenario in SCENARIOS.values():
        if scenario.own_engine:
            removed += own_engine.teardown(scenario.parts)
        elif scenario.parts is not None:
            gone, still = scenario.parts.remove(client)
            removed += gone
            kept += still
    return removed, kept

"""What is Podman's own in container networking: pods and their infra containers,
netavark's bridges and networks, aardvark-dns.

Podman answers the Docker SDK on its Docker-compatible API, which knows nothing of
pods: for those flowtrace reads Podman's own (libpod) endpoints on the same socket.
The parsers are pure and tested on recorded answers; the few reads are small.

* A pod's containers join the network namespace of its infra container (a Docker
  SDK inspect shows them in network mode `container:<infra id>`).
* netavark gives each network a Linux bridge (podman0 for the default network
  `podman`, podman1... for the others) and, where DNS is enabled, aardvark-dns answers
  on the bridge's gateway address, in the host's namespace, from the records it keeps
  per network under /run/containers/networks/aardvark-dns.
* Podman bind-mounts each container's namespace at /run/netns/netns-<uuid>.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The libpod API version flowtrace asks for (Podman 4.x serves it).
LIBPOD_API = "v4.0.0"
AARDVARK_DIR = "/run/containers/networks/aardvark-dns"
_NETNS_NAME = re.compile(r"^netns-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$")


def libpod_get(client: Any, path: str) -> Any:
    """GET a libpod endpoint (`/info`, `/pods/NAME/json`) on the client's socket; {} when
    the engine does not serve it (Docker) or refuses.

    `client`: what engines.api() reads with (an engine_http.EngineAPI, or the SDK's
    APIClient), or a Docker SDK DockerClient."""
    from flowtrace.endpoints.engine_http import EngineAPI, EngineError

    if isinstance(client, EngineAPI):
        try:
            answer = client.get(f"/{LIBPOD_API}/libpod{path}")
        except EngineError:
            return {}
        return answer if isinstance(answer, (dict, list)) else {}
    from docker.errors import DockerException

    api = getattr(client, "api", client)
    try:
        response = api.get(f"{api.base_url}/{LIBPOD_API}/libpod{path}", timeout=api.timeout)
    except (DockerException, OSError):
        return {}
    if response.status_code != 200:
        return {}
    try:
        return response.json()
    except ValueError:
        return {}


def is_podman_netns_name(label: str) -> bool:
    """A /run/netns entry Podman made for a container (netns-<uuid>)."""
    return bool(_NETNS_NAME.match(label))


# --- pods ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodFacts:
    """The pod a container belongs to, and the infra container holding its namespaces."""

    name: str
    id: str
    infra_name: str
    infra_id: str
    shared: tuple[str, ...] = ()  # namespaces the pod's containers share: net, ipc, uts

    def owner_note(self, member: str) -> str:
        shared = ", ".join(self.shared) or "net"
        return (
            f"{member} is in Podman pod {self.name}: the pod's infra container "
            f"{self.infra_name} owns the network namespace its containers share ({shared})"
        )


def pod_facts(container: Mapping[str, Any], pod: Mapping[str, Any]) -> PodFacts | None:
    """A PodFacts from libpod's inspect of a container and of its pod (pure)."""
    pod_id = str(container.get("Pod") or "")
    if not pod_id or str(pod.get("Id", "")) != pod_id:
        return None
    infra_id = str(pod.get("InfraContainerID") or "")
    infra_name = next(
        (str(c.get("Name")) for c in pod.get("Containers") or () if c.get("Id") == infra_id),
        infra_id[:12],
    )
    return PodFacts(
        name=str(pod.get("Name", pod_id[:12])),
        id=pod_id,
        infra_name=infra_name,
        infra_id=infra_id,
        shared=tuple(sorted(str(n) for n in pod.get("SharedNamespaces") or ())),
    )


def pod_of(client: Any, container: str) -> PodFacts | None:
    """The pod `container` (a name or id) is in, None when it is in none."""
    attrs = libpod_get(client, f"/containers/{container}/json")
    pod_id = attrs.get("Pod") if isinstance(attrs, Mapping) else None
    if not pod_id:
        return None
    return pod_facts(attrs, libpod_get(client, f"/pods/{pod_id}/json"))


def is_infra(client: Any, container: str) -> bool:
    attrs = libpod_get(client, f"/containers/{container}/json")
    return bool(isinstance(attrs, Mapping) and attrs.get("IsInfra"))


# --- networks and aardvark-dns -------------------------------------------------------------


@dataclass(frozen=True)
class PodmanNetwork:
    """One of netavark's networks: its bridge, subnets and whether aardvark-dns serves it."""

    name: str
    bridge: str
    subnets: tuple[tuple[str, str], ...]  # (subnet, gateway)
    dns_enabled: bool

    @property
    def gateways(self) -> tuple[str, ...]:
        return tuple(gateway for _, gateway in self.subnets if gateway)


def networks_from(answer: Sequence[Mapping[str, Any]]) -> list[PodmanNetwork]:
    """libpod's GET /networks/json, as PodmanNetworks (pure)."""
    found = []
    for net in answer:
        subnets = tuple(
            (str(s.get("subnet", "")), str(s.get("gateway", ""))) for s in net.get("subnets") or ()
        )
        found.append(
            PodmanNetwork(
                str(net.get("name", "")),
                str(net.get("network_interface", "")),
                subnets,
                bool(net.get("dns_enabled")),
            )
        )
    return found


def networks(client: Any) -> list[PodmanNetwork]:
    answer = libpod_get(client, "/networks/json")
    return networks_from(answer) if isinstance(answer, list) else []


def network_with_gateway(found: Sequence[PodmanNetwork], ip: str) -> PodmanNetwork | None:
    for net in found:
        if ip in net.gateways:
            return net
    return None


def network_of_bridge(found: Sequence[PodmanNetwork], bridge: str) -> PodmanNetwork | None:
    for net in found:
        if net.bridge == bridge:
            return net
    return None


def network_holding(found: Sequence[PodmanNetwork], ip: str) -> PodmanNetwork | None:
    address = ipaddress.ip_address(ip)
    for net in found:
        for subnet, _ in net.subnets:
            try:
                if address in ipaddress.ip_network(subnet, strict=False):
                    return net
            except ValueError:
                continue
    return None


@dataclass(frozen=True)
class AardvarkRecord:
    """One container's line in aardvark-dns's file for a network."""

    container_id: str
    ipv4: tuple[str, ...]
    ipv6: tuple[str, ...]
    names: tuple[str, ...]


def parse_aardvark(text: str) -> tuple[tuple[str, ...], list[AardvarkRecord]]:
    """aardvark-dns's per-network file: the first line lists the addresses it listens on
    (the network's gateways), then one line per container: `ID IPV4[,IPV4] [IPV6[,...]]
    NAME[,ALIAS...]` (an empty IPv6 field leaves two spaces) (pure)."""
    lines = text.splitlines()
    if not lines:
        return (), []
    listen = tuple(a for a in lines[0].split(",") if a.strip())
    records = []
    for line in lines[1:]:
        fields = line.split(" ")
        if len(fields) < 4:
            continue
        cid, v4, v6, names = fields[0], fields[1], fields[2], " ".join(fields[3:])
        records.append(
            AardvarkRecord(
                cid,
                tuple(a for a in v4.split(",") if a),
                tuple(a for a in v6.split(",") if a),
                tuple(n for n in names.split(",") if n),
            )
        )
    return tuple(a.strip() for a in listen), records


def aardvark_record(
    network: str, name: str, directory: str = AARDVARK_DIR
) -> AardvarkRecord | None:
    """The record aardvark-dns keeps for `name` on `network`, None when it has none."""
    try:
        text = (Path(directory) / network).read_text()
    except OSError:
        return None
    wanted = name.rstrip(".").lower()
    for record in parse_aardvark(text)[1]:
        if wanted in (n.lower() for n in record.names):
            return record
    return None


def aardvark_note(server: str, net: PodmanNetwork, record: AardvarkRecord | None, name: str) -> str:
    """What answers a Podman container's lookups, in words (pure)."""
    text = (
        f"{server} is the gateway of Podman network {net.name} (bridge {net.bridge}): "
        f"aardvark-dns listens there, in the host's namespace, answers for the names of "
        f"the network's containers and forwards other names to the host's resolvers"
    )
    if record is not None:
        addresses = ", ".join(record.ipv4 + record.ipv6)
        text += (
            f"; its record for {name} ({AARDVARK_DIR}/{net.name}): {addresses}, container "
            f"{record.container_id[:12]}"
        )
    elif not net.dns_enabled:
        text += f"; DNS is not enabled on {net.name}, so aardvark-dns does not serve it"
    return text


def bridge_note(net: PodmanNetwork) -> str:
    subnets = ", ".join(subnet for subnet, _ in net.subnets)
    return f"{net.bridge} is netavark's bridge for Podman network {net.name} ({subnets})"

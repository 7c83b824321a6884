"""Podman's own facts, read from answers recorded from Podman 4.3.1 (netavark 1.4,
aardvark-dns 1.4) here: a pod's member and the pod, the networks, aardvark-dns's file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowtrace.endpoints.podman import (
    aardvark_note,
    aardvark_record,
    bridge_note,
    is_podman_netns_name,
    network_holding,
    network_of_bridge,
    network_with_gateway,
    networks_from,
    parse_aardvark,
    pod_facts,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "engines"


def recorded(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def test_a_pods_member_and_its_infra_container() -> None:
    member = recorded("podman-4.3-inspect-pod-member.json")
    pod = pod_facts(member, recorded("podman-4.3-inspect-pod.json"))
    assert pod is not None
    assert (pod.name, pod.infra_name) == ("ftexppod", "aa924b10eee4-infra")
    assert pod.infra_id.startswith("6bd3c17a2793") and set(pod.shared) == {"ipc", "net", "uts"}
    compat = recorded("podman-4.3-compat-inspect-pod-member.json")
    assert compat["HostConfig"]["NetworkMode"] == f"container:{pod.infra_id}"
    assert pod.owner_note("ftexppod-a").startswith(
        "ftexppod-a is in Podman pod ftexppod: the pod's infra container aa924b10eee4-infra "
        "owns the network namespace its containers share ("
    )
    assert pod_facts({"Pod": ""}, {}) is None
    assert pod_facts(member, {"Id": "another pod"}) is None


def test_netavark_networks_bridges_and_gateways() -> None:
    found = networks_from(recorded("podman-4.3-libpod-networks.json"))
    names = {n.name: n for n in found}
    assert names["podman"].bridge == "podman0" and not names["podman"].dns_enabled
    assert names["ftexpnet"].subnets == (("10.89.0.0/24", "10.89.0.1"),)
    assert network_with_gateway(found, "10.89.0.1") == names["ftexpnet"]
    assert network_with_gateway(found, "10.89.0.2") is None
    assert network_of_bridge(found, "podman0") == names["podman"]
    assert network_holding(found, "10.88.7.7") == names["podman"]
    assert bridge_note(names["podman"]) == (
        "podman0 is netavark's bridge for Podman network podman (10.88.0.0/16)"
    )


def test_aardvark_dns_file_and_the_record_that_answers(tmp_path: Path) -> None:
    text = (DATA / "aardvark-dns-ftexpnet.txt").read_text()
    listen, records = parse_aardvark(text)
    assert listen == ("10.89.0.1",)
    assert [(r.ipv4, r.ipv6, r.names) for r in records] == [
        (("10.89.0.2",), (), ("ftexp3", "89664f53fa97")),
        (("10.89.0.3",), (), ("ftexp4", "330db19ac1f8")),
    ]
    (tmp_path / "ftexpnet").write_text(text)
    record = aardvark_record("ftexpnet", "FTEXP4.", str(tmp_path))
    assert record is not None and record.container_id.startswith("330db19ac1f8")
    assert aardvark_record("ftexpnet", "nosuch", str(tmp_path)) is None
    net = next(
        n
        for n in networks_from(recorded("podman-4.3-libpod-networks.json"))
        if n.name == "ftexpnet"
    )
    assert aardvark_note("10.89.0.1", net, record, "ftexp4") == (
        "10.89.0.1 is the gateway of Podman network ftexpnet (bridge podman1): aardvark-dns "
        "listens there, in the host's namespace, answers for the names of the network's "
        "containers and forwards other names to the host's resolvers; its record for ftexp4 "
        "(/run/containers/networks/aardvark-dns/ftexpnet): 10.89.0.3, container 330db19ac1f8"
    )
    assert parse_aardvark("") == ((), [])


def test_podmans_netns_names() -> None:
    assert is_podman_netns_name("netns-e562e13f-6ddf-9e24-bcb9-3303c596fba5")
    assert not is_podman_netns_name("ft-outside")
    assert not is_podman_netns_name("netns-x")

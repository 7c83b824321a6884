"""Whose chains a ruleset's rules are in, on the ruleset recorded with netavark 1.4 next to
Docker 20.10 here (tests/data/iptables-save-netavark-with-docker.txt)."""

from __future__ import annotations

from pathlib import Path

from flowtrace.topology.netfilter.iptables_save import parse_iptables_save
from flowtrace.topology.netfilter.owners import (
    both_engines,
    chain_purpose,
    forward_conflict,
    netavark_hash,
    rule_chain,
    rule_notes,
)

DATA = Path(__file__).resolve().parents[3] / "data"
NETAVARK = parse_iptables_save((DATA / "iptables-save-netavark-with-docker.txt").read_text())
DOCKER_ONLY = parse_iptables_save((DATA / "iptables-save-docker-default.txt").read_text())


def test_netavarks_chain_names_are_its_networks_names_hashed() -> None:
    assert netavark_hash("podman") == "1D8721804F16F"
    assert netavark_hash("ftexpnet") == "2C4A7216F49E5"
    assert "NETAVARK-1D8721804F16F" in NETAVARK.nat.chains
    assert "NETAVARK-DN-1D8721804F16F" in NETAVARK.nat.chains


def test_what_each_chain_is_for() -> None:
    assert chain_purpose("NETAVARK-1D8721804F16F", ["ftlab", "podman"]) == (
        "NETAVARK-1D8721804F16F is netavark's chain for Podman network podman: it masquerades "
        "what leaves the network"
    )
    assert chain_purpose("NETAVARK-DN-1D8721804F16F", ["podman"]) == (
        "NETAVARK-DN-1D8721804F16F is netavark's chain for the published ports of Podman "
        "network podman (DNAT)"
    )
    assert "a Podman network" in (chain_purpose("NETAVARK-2C4A7216F49E5") or "")
    assert chain_purpose("NETAVARK-HOSTPORT-MASQ") is not None
    assert chain_purpose("DOCKER") is None and chain_purpose("POSTROUTING") is None
    assert rule_chain("-A NETAVARK-HOSTPORT-DNAT -p tcp -j X") == "NETAVARK-HOSTPORT-DNAT"
    rules = ["-A NETAVARK-1D8721804F16F ! -d 224.0.0.0/4 -j MASQUERADE", None, "-P FORWARD DROP",
             "-A NETAVARK-1D8721804F16F -d 10.88.0.0/16 -j ACCEPT"]  # fmt: skip
    assert len(rule_notes(rules, ["podman"])) == 1


def test_dockers_forward_policy_against_a_podman_published_port_is_the_engines_conflict() -> None:
    assert both_engines(NETAVARK) and not both_engines(DOCKER_ONLY)
    why = forward_conflict("-P FORWARD DROP", NETAVARK, "podman0")
    assert why is not None
    assert (
        "netavark's NETAVARK_FORWARD accepts only what leaves its networks (10.88.0.0/16, " in why
    )
    assert why.endswith("the two engines' rules conflict on this host")
    assert forward_conflict("-P FORWARD DROP", DOCKER_ONLY, "docker0") is None
    assert forward_conflict("-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP", NETAVARK, "x") is None

"""Recorded firewalls: the replicas' rules as the kernel printed them (tests/data/firewalls)."""

from __future__ import annotations

from pathlib import Path

from flowtrace.topology.netfilter import Firewall
from flowtrace.topology.netfilter.read import Outputs, firewall_from

FIREWALLS = Path(__file__).resolve().parents[3] / "data" / "firewalls"


def recorded(engine: str, prefix: str = "") -> Firewall:
    """The firewall of a replica's host namespace, from what its readers printed."""
    folder = FIREWALLS / engine

    def text(name: str) -> str | None:
        path = folder / f"{prefix}{name}"
        return path.read_text() if path.exists() else None

    iptables = text("iptables-save.txt")
    return firewall_from(
        Outputs(
            iptables=iptables if iptables is not None else "",
            iptables_program="iptables-nft-save",
            nft_json=text("nft.json") or '{"nftables": []}',
            nft_text=text("nft.txt") or "",
        )
    )

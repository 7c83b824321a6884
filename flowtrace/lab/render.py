"""The lab in words: aligned plain-text tables, so the output reads the same in a
terminal and in a pipe.  Pure: views in, text out."""

from __future__ import annotations

from collections.abc import Sequence

from flowtrace.lab.base import OUTSIDE_NETNS, WEB_URL, LabState


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = []
    for row in (headers, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_state(state: LabState) -> str:
    """The lab as three small tables: containers, networks, outside host."""
    image_id = state.image_id.removeprefix("sha256:")[:12] or "missing"
    lines = [f"image {state.image}  {image_id}", ""]
    container_rows = [
        (
            item.name,
            item.id[:12] or "-",
            item.status,
            item.netns or "-",
            ", ".join(f"{net} {ip}" for net, ip in item.addresses.items()) or "-",
            ", ".join(item.ports) or "-",
        )
        for item in state.containers
    ]
    lines += table(("CONTAINER", "ID", "STATE", "NETNS", "NETWORK IP", "PUBLISHED"), container_rows)
    lines.append("")
    network_rows = [
        (net.name, net.bridge or "-", net.subnet or "-", net.gateway or "-")
        if net.present
        else (net.name, "missing", "-", "-")
        for net in state.networks
    ]
    lines += table(("NETWORK", "BRIDGE", "SUBNET", "GATEWAY"), network_rows)
    lines.append("")
    out = state.outside
    inside = ", ".join(out.addresses) or "-"
    host_side = ", ".join(out.uplink_addresses) or "-"
    lines += table(
        ("OUTSIDE HOST", "NETNS", "INTERFACE", "ADDRESS", "HOST SIDE"),
        [
            (
                out.netns,
                out.netns_path if out.present else "missing",
                out.ifname,
                inside,
                f"{out.uplink} {host_side}" if out.uplink_present else f"{out.uplink} missing",
            )
        ],
    )
    return "\n".join(lines)


def render_summary(state: LabState) -> str:
    """One line on whether the lab is whole, then what is missing."""
    if state.complete:
        return f"the lab is up: try `ip netns exec {OUTSIDE_NETNS} busybox wget -q -O - {WEB_URL}`"
    return "missing: " + ", ".join(state.missing)


def render_changes(changes: Sequence[str]) -> str:
    """What `up` did, one `+` line each (a scenario's `up` shows its changes so too)."""
    if not changes:
        return "everything was already up"
    return "\n".join(f"+ {change}" for change in changes)


def render_removed(removed: Sequence[str]) -> str:
    """What a plain `lab down` removed, one `-` line each."""
    if not removed:
        return "nothing to remove: the lab was not up"
    return "\n".join(f"- removed {item}" for item in removed)

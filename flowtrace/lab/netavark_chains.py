"""netavark's base chains, put back as the Podman lab found them.

netavark makes its chains (NETAVARK_FORWARD, NETAVARK-HOSTPORT-DNAT, -MASQ, -SETMARK and
the jumps to them from FORWARD, PREROUTING, OUTPUT, POSTROUTING) when a machine's first
rootful container starts, and never removes them.  On a machine that had none, the lab's
containers would leave them behind; so `lab up` notes their absence and `lab down`
removes them again, once no Podman container runs (a running one may need them).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

#: Present while the chains are the lab's doing: they were absent when `lab up` ran.
ABSENT_MARKER = Path("/run/flowtrace-lab/netavark-chains-absent")
PREFIX = "NETAVARK"
TABLES = ("filter", "nat")
COMMANDS = ("iptables", "ip6tables")


def _save(command: str, table: str) -> list[str]:
    if shutil.which(f"{command}-save") is None:
        return []
    done = subprocess.run(
        [f"{command}-save", "-t", table], capture_output=True, text=True, check=False
    )
    return done.stdout.splitlines() if done.returncode == 0 else []


def _run(command: str, table: str, *args: str) -> None:
    subprocess.run([command, "-t", table, *args], capture_output=True, check=False)


def chains_in(saved: list[str]) -> list[str]:
    """netavark's chains declared in one table's iptables-save output (pure)."""
    return [line[1:].split()[0] for line in saved if line.startswith(f":{PREFIX}")]


def rules_to_delete(saved: list[str]) -> list[list[str]]:
    """The `-D` arguments of every rule in netavark's chains or jumping to them (pure)."""
    deletions: list[list[str]] = []
    for line in saved:
        if not line.startswith("-A "):
            continue
        words = shlex.split(line)
        chain = words[1]
        target = words[words.index("-j") + 1] if "-j" in words else ""
        if chain.startswith(PREFIX) or target.startswith(PREFIX):
            deletions.append(["-D", chain, *words[2:]])
    return deletions


def present() -> bool:
    return any(chains_in(_save(cmd, table)) for cmd in COMMANDS for table in TABLES)


def note_before_up() -> None:
    """Remember that the chains were absent, unless a previous `lab up` already did."""
    if not ABSENT_MARKER.exists() and not present():
        ABSENT_MARKER.parent.mkdir(parents=True, exist_ok=True)
        ABSENT_MARKER.touch()


def remove_if_ours(podman_running: bool) -> list[str]:
    """Remove the chains the lab's containers made appear; returns what was removed."""
    if not ABSENT_MARKER.exists() or podman_running:
        return []
    removed: list[str] = []
    for command in COMMANDS:
        for table in TABLES:
            saved = _save(command, table)
            for deletion in rules_to_delete(saved):
                _run(command, table, *deletion)
            for chain in chains_in(saved):
                _run(command, table, "-F", chain)
                _run(command, table, "-X", chain)
                removed.append(f"{command} {table} chain {chain} (netavark's, made for the lab)")
    ABSENT_MARKER.unlink(missing_ok=True)
    return removed

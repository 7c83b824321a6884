"""What a test module leaves changed on the host: a snapshot before and after, compared.

The integration conftest takes a snapshot before each module and one after it, and
fails the module naming what changed: namespaces (`ip netns`, /run/netns), the host's
links and every link's promiscuity count (the host's and the lab containers'),
iptables-save and ip6tables-save, nft tables, containers on Docker and on Podman,
tracefs instances, and processes this session started (they carry SESSION_MARK in
their environment, so they are found even once orphaned, and another session's
processes never are).

Only what must be is tolerated:
- the shared lab (its containers, networks, bridges, veths, outside host, and the
  engine rules that name them): it is session-scoped, shared with other sessions
  through the lab-users lock, and may come up during any module;
- empty chains the engines declare (Docker and netavark create chains and keep them
  when their networks go: an engine's chain that still holds a rule is reported, one
  that holds only the lab's rules is not: the lab coming up mid-module fills Docker's
  filter DOCKER chain, empty on a fresh engine, with its published ports' ACCEPTs);
- processes a session-scoped fixture registered with `session_owned` (the Podman API
  a session starts for all its modules).
Nothing else is filtered: under the shared test lock (and in CI) no other session
changes these things while a module runs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SESSION_MARK_VAR = "FLOWTRACE_TEST_SESSION"
#: Set in this process's environment once: every process it starts inherits it.
SESSION_MARK = os.environ.setdefault(SESSION_MARK_VAR, secrets.token_hex(8))

TRACEFS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
#: Chains engines declare and keep; reported only while they hold a rule.
ENGINE_CHAIN = re.compile(r"^(DOCKER|NETAVARK)")

_session_pids: set[int] = set()


def session_owned(pid: int | None) -> None:
    """A process a session-scoped fixture started and stops at the session's end."""
    if pid:
        _session_pids.add(pid)


def _run(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def _json(*command: str) -> list[dict[str, Any]]:
    text = _run(*command)
    try:
        found = json.loads(text) if text.strip() else []
    except json.JSONDecodeError:
        return []
    return found if isinstance(found, list) else []


# --- the lab: tolerated ----------------------------------------------------------------------


@dataclass
class LabParts:
    """What belongs to the shared lab now, on both engines."""

    container_ids: set[str] = field(default_factory=set)
    pids: dict[str, int] = field(default_factory=dict)  # container name -> pid
    links: set[str] = field(default_factory=set)
    netns: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)  # ids, addresses, subnets, bridges

    def mentions(self, line: str) -> bool:
        return any(_mentions(line, token) for token in self.tokens)


def _mentions(line: str, token: str) -> bool:
    if token not in line:
        return False
    return re.search(rf"(?<![\w.]){re.escape(token)}(?![\w]|\.\w)", line) is not None


def lab_parts() -> LabParts:
    from flowtrace.lab.base import LAB_LABEL, MEMBER_LABEL, OUTSIDE_NET, OUTSIDE_NETNS, UPLINK

    parts = LabParts(links={UPLINK}, netns={OUTSIDE_NETNS}, tokens={OUTSIDE_NET, UPLINK})
    containers: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    for engine in ("docker", "podman"):
        ids = _run(engine, "ps", "-aq", "--no-trunc", "--filter", f"label={MEMBER_LABEL}").split()
        if engine == "podman":  # a lab pod's infra container carries no label of its own
            pods = _run("podman", "pod", "ps", "-q", "--filter", f"label={LAB_LABEL}").split()
            for pod in pods:
                ids += _run("podman", "ps", "-aq", "--no-trunc", "--filter", f"pod={pod}").split()
        if ids:
            containers += _json(engine, "inspect", "--type", "container", *sorted(set(ids)))
        nets = _run(engine, "network", "ls", "-q", "--filter", f"label={LAB_LABEL}").split()
        if nets:
            networks += [
                dict(n, _engine=engine) for n in _json(engine, "network", "inspect", *nets)
            ]
    for c in containers:
        cid = str(c.get("Id", ""))
        parts.container_ids.add(cid)
        parts.tokens |= {cid, cid[:12]}
        state = c.get("State") or {}
        name = str(c.get("Name", "")).lstrip("/")
        pid = int(state.get("Pid") or 0) if isinstance(state, dict) else 0
        if pid:
            parts.pids[name] = pid
            parts.links |= _peer_links(pid)
        settings = c.get("NetworkSettings") or {}
        sandbox = str(settings.get("SandboxKey") or "")
        if sandbox.startswith("/run/netns/"):  # Podman names its containers' namespaces
            parts.netns.add(sandbox.removeprefix("/run/netns/"))
        nets_of = settings.get("Networks") or {} if isinstance(settings, dict) else {}
        for net in nets_of.values() if isinstance(nets_of, dict) else ():
            for key in ("IPAddress", "GlobalIPv6Address"):
                if isinstance(net, dict) and net.get(key):
                    parts.tokens.add(str(net[key]))
    for n in networks:
        nid = str(n.get("Id") or n.get("id") or "")
        parts.tokens |= {nid[:12]} if nid else set()
        bridge = str(n.get("network_interface") or "")  # Podman
        options = n.get("Options") or {}
        if not bridge and isinstance(options, dict):
            bridge = str(options.get("com.docker.network.bridge.name") or "")
        if not bridge and n["_engine"] == "docker" and nid:
            bridge = f"br-{nid[:12]}"
        if bridge:
            parts.links.add(bridge)
            parts.tokens.add(bridge)
        ipam = n.get("IPAM") or {}
        for conf in (ipam.get("Config") or []) if isinstance(ipam, dict) else []:
            if isinstance(conf, dict) and conf.get("Subnet"):
                parts.tokens.add(str(conf["Subnet"]))
        for sub in n.get("subnets") or []:  # Podman
            if isinstance(sub, dict) and sub.get("subnet"):
                parts.tokens.add(str(sub["subnet"]))
    return parts


def _peer_links(pid: int) -> set[str]:
    """The host's ends of a container's veths (their names in the host's namespace)."""
    inside = _json("nsenter", "-t", str(pid), "-n", "ip", "-j", "link", "show")
    peers = {int(link["link_index"]) for link in inside if isinstance(link.get("link_index"), int)}
    host = _json("ip", "-j", "link", "show")
    return {str(link["ifname"]) for link in host if link.get("ifindex") in peers}


# --- the snapshot ------------------------------------------------------------------------------


@dataclass
class Snapshot:
    items: dict[str, set[str]]
    #: "where/link" -> promiscuity, compared where both snapshots have the link.
    promiscuity: dict[str, int]


def _netfilter(save: str, lab: LabParts) -> set[str]:
    """Rules and chains, without counters or comments; the lab's and engines' empty
    chains left out."""
    lines: set[str] = set()
    table = ""
    with_rules: set[tuple[str, str]] = set()
    declared: list[tuple[str, str, str]] = []
    for raw in save.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            continue
        if line.startswith(":"):
            name, policy = line[1:].split()[:2]
            declared.append((table, name, f"{table}: :{name} {policy}"))
            continue
        if lab.mentions(line):
            continue  # before counting the rule: a chain holding only the lab's is "empty"
        if line.startswith("-A "):
            with_rules.add((table, line.split()[1]))
        lines.add(f"{table}: {line}")
    for table, name, text in declared:
        if ENGINE_CHAIN.match(name) and (table, name) not in with_rules:
            continue
        lines.add(text)
    return lines


def _containers(engine: str, lab: LabParts) -> set[str]:
    out = _run(engine, "ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Names}} {{.Image}}")
    found = set()
    for line in out.splitlines():
        cid, _, rest = line.partition(" ")
        if cid and cid not in lab.container_ids:
            found.add(f"{engine} container {rest} ({cid[:12]})")
    return found


def _processes() -> set[str]:
    mark = f"{SESSION_MARK_VAR}={SESSION_MARK}".encode()
    me = os.getpid()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (me, *_session_pids):
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it ended meanwhile
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue  # a zombie its parent (this process) has not reaped: nothing runs
        found.add(f"process {entry.name}: {cmdline.strip()[:160]}")
    return found


def _promiscuity(lab: LabParts) -> dict[str, int]:
    found = {}
    for link in _json("ip", "-d", "-j", "link", "show"):
        found[f"host/{link.get('ifname')}"] = int(link.get("promiscuity") or 0)
    for name in _run("ip", "netns", "list").split("\n"):
        ns = name.split(" ")[0]
        if ns:
            for link in _json("ip", "-n", ns, "-d", "-j", "link", "show"):
                found[f"netns {ns}/{link.get('ifname')}"] = int(link.get("promiscuity") or 0)
    for container, pid in lab.pids.items():
        for link in _json("nsenter", "-t", str(pid), "-n", "ip", "-d", "-j", "link", "show"):
            found[f"{container}/{link.get('ifname')}"] = int(link.get("promiscuity") or 0)
    return found


def snapshot() -> Snapshot:
    lab = lab_parts()
    netns = {
        f"namespace {line.split()[0]}"
        for line in _run("ip", "netns", "list").splitlines()
        if line.strip() and line.split()[0] not in lab.netns
    }
    run_netns = Path("/run/netns")
    files = {
        f"/run/netns/{p.name}"
        for p in (run_netns.iterdir() if run_netns.is_dir() else ())
        if p.name not in lab.netns
    }
    links = {
        f"link {link.get('ifname')} ({(link.get('linkinfo') or {}).get('info_kind', 'device')})"
        for link in _json("ip", "-d", "-j", "link", "show")
        if link.get("ifname") not in lab.links
    }
    tracefs = next(
        (Path(t) / "instances" for t in TRACEFS if (Path(t) / "instances").is_dir()), None
    )
    items = {
        "namespaces": netns | files,
        "links": links,
        "iptables": _netfilter(_run("iptables-save"), lab),
        "ip6tables": _netfilter(_run("ip6tables-save"), lab),
        "nft tables": {line for line in _run("nft", "list", "tables").splitlines() if line},
        "containers": _containers("docker", lab) | _containers("podman", lab),
        "tracefs instances": {p.name for p in tracefs.iterdir()} if tracefs else set(),
        "processes": _processes(),
    }
    return Snapshot(items, _promiscuity(lab))


def compare(before: Snapshot, after: Snapshot) -> list[str]:
    """Sentences naming what changed, [] when nothing did."""
    changes = []
    for kind in before.items:
        added = sorted(after.items[kind] - before.items[kind])
        removed = sorted(before.items[kind] - after.items[kind])
        if kind == "processes":
            removed = []  # a process that ended is no change this checks
        changes += [f"{kind}: left behind: {item}" for item in added]
        changes += [f"{kind}: gone: {item}" for item in removed]
    for key in sorted(before.promiscuity.keys() & after.promiscuity.keys()):
        if before.promiscuity[key] != after.promiscuity[key]:
            changes.append(
                f"promiscuity of {key}: {before.promiscuity[key]} before, "
                f"{after.promiscuity[key]} after"
            )
    return changes


def describe(changes: Iterable[str], module: str) -> str:
    listed = list(changes)
    head = f"{module} left the host changed ({len(listed)} change(s)):"
    return "\n  ".join([head, *listed])

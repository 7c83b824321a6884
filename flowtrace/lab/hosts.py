"""Scenario `hosts`: two more Docker hosts on this machine, a LAN between them, a swarm.

Host A and host B are each a real dockerd (the machine's own, Debian's 20.10), in a
network namespace and a mount namespace of its own, with its own data-root, exec-root,
pid file, socket, /etc/docker (so its own key.json: its own engine ID) and hostname (so
the swarm sees two nodes): the recipe of ../shared/research/multihost.md, the way
moby's own tests run several engines.  Each is started as

  nsenter --net=/run/netns/ft-host-a unshare -m -u --propagation slave sh -c '
    hostname ft-host-a; mount --bind R/etc-docker /etc/docker;
    mount --rbind /sys/fs/cgroup R/cgstash; mount -t sysfs sysfs /sys;
    mount --rbind R/cgstash /sys/fs/cgroup; umount -l R/cgstash;
    exec dockerd --data-root D --exec-root R/exec --pidfile R/docker.pid
      -H unix://R/docker.sock --config-file R/daemon.json --cgroup-parent /ft-host-a'

(a fresh sysfs, because `ip netns exec`'s would hide /sys/fs/cgroup: "Devices cgroup
isn't mounted").  Each host's eth0 is a veth into the namespace ft-lan, whose bridge is
the LAN (198.18.20.0/24, the benchmarking range, checked unused here first: host A is
.2, host B .3).  On it: a swarm (A the manager, B a worker; overlay subnets from
10.213.128.0/17), the attachable overlay `ftover`, and on each host the macvlan network
`ftmv` (parent eth0).  Containers: on A c1 (default bridge), o1 (ftover), m1 (ftmv); on
B web (default bridge, `-p 8080:80`, busybox httpd), o2 (ftover), m2 (ftmv).  Each
host is registered as the Docker context of its name (hosta, hostb), so `c1@hosta`
reaches it and so does `docker --context hosta ps`.  Nothing leaves the machine: the
hosts have no route but the LAN and their own bridges.

Removing it stops each engine by its own pid (its pid file, checked against its
command line), after removing its containers (`rm -f`: a stopping engine waits ~13 s
for a `sleep` that ignores SIGTERM), then removes its directories, the namespaces (the
veths go with them) and the contexts; nothing else.  This kernel has no IPVS, so swarm
services' virtual IPs do not work: the scenario uses an attachable network and plain
containers.  Nothing here takes the lab lock: the scenario verbs hold it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError
from flowtrace.lab.base import (
    IMAGE,
    LAB_LABEL,
    LAB_LABEL_VALUE,
    SCENARIO_LABEL,
    LabConflictError,
    member_labels,
)
from flowtrace.lab.engine import short
from flowtrace.lab.hostengines import (
    DATA,
    HOSTS,
    HOSTS_RANGE,
    LAN_ALIAS,
    LAN_BRIDGE,
    LAN_GATEWAY,
    LAN_IFNAME,
    LAN_NETNS,
    LAN_PATH,
    MACVLAN,
    MANAGER,
    OVERLAY,
    PREFIXLEN,
    ROOT,
    SCENARIO,
    SUBNET,
    SWARM_POOL,
    WORKER,
    HostContainer,
    LabHost,
    answers,
    client_of,
    context_is_foreign,
    engine_pid,
    leftovers,
    read_context,
    register,
    remove_empty_context_folders,
    start_engine,
    stop_engine,
    unregister,
)
from flowtrace.lab.images import ensure_image
from flowtrace.lab.links import disable_ipv6, ensure_netns, link_facts, netns_usable
from flowtrace.lab.outside import destinations_inside, host_destinations, host_range_conflicts
from flowtrace.lab.render import table

__all__ = [
    "HOSTS",
    "MACVLAN",
    "OVERLAY",
    "SCENARIO",
    "WORKER",
    "attach",
    "build",
    "conflicts",
    "remove",
    "survey",
]


# --- the LAN -------------------------------------------------------------------------------


def _lan_links() -> dict[str, Any]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        return {name: link_facts(ipr, name) for name in (LAN_BRIDGE, *(h.lan_port for h in HOSTS))}


def _ensure_lan_here() -> list[str]:
    from pyroute2 import IPRoute

    made: list[str] = []
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        if link_facts(ipr, LAN_BRIDGE) is None:
            ipr.link("add", ifname=LAN_BRIDGE, kind="bridge")
            made.append(f"bridge {LAN_NETNS}/{LAN_BRIDGE} (the LAN)")
        bridge = ipr.link_lookup(ifname=LAN_BRIDGE)[0]
        ipr.link("set", index=bridge, ifalias=LAN_ALIAS, state="up")
        for host in HOSTS:
            facts = link_facts(ipr, host.lan_port)
            if facts is None:
                ipr.link(
                    "add",
                    ifname=host.lan_port,
                    kind="veth",
                    peer={"ifname": LAN_IFNAME, "net_ns_fd": host.netns},
                )
                made.append(f"veth {LAN_NETNS}/{host.lan_port} <-> {host.netns}/{LAN_IFNAME}")
            port = ipr.link_lookup(ifname=host.lan_port)[0]
            disable_ipv6(host.lan_port)
            ipr.link("set", index=port, master=bridge, ifalias=LAN_ALIAS, state="up")
    return made


def _configure_host_here(host: LabHost) -> list[str]:
    from pyroute2 import IPRoute

    made: list[str] = []
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        facts = link_facts(ipr, LAN_IFNAME)
        if facts is None:
            raise FlowtraceError(f"{host.netns} has no {LAN_IFNAME} after the LAN was made")
        disable_ipv6(LAN_IFNAME)
        ipr.link("set", index=facts["index"], ifalias=LAN_ALIAS)
        cidr = f"{host.lan_ip}/{PREFIXLEN}"
        if cidr not in facts["addresses"]:
            ipr.addr("add", index=facts["index"], address=host.lan_ip, prefixlen=PREFIXLEN)
            made.append(f"address {cidr} on {host.netns}/{LAN_IFNAME}")
        if not facts["up"]:
            ipr.link("set", index=facts["index"], state="up")
    return made


def _host_link(host: LabHost) -> dict[str, Any] | None:
    from flowtrace.lab.links import link_facts_here

    if not netns_usable(host.netns_path):
        return None
    return run_in_netns(host.netns_path, link_facts_here, LAN_IFNAME)


# --- on the engines ------------------------------------------------------------------------


def _labels(name: str) -> dict[str, str]:
    return {**member_labels(name, SCENARIO), SCENARIO_LABEL: SCENARIO}


def _ensure_swarm(clients: dict[str, Any]) -> list[str]:
    made: list[str] = []
    manager, worker = clients[MANAGER.name], clients[WORKER.name]
    if (manager.info().get("Swarm") or {}).get("LocalNodeState") != "active":
        manager.swarm.init(
            advertise_addr=MANAGER.lan_ip,
            listen_addr=f"{MANAGER.lan_ip}:2377",
            default_addr_pool=[SWARM_POOL],
            subnet_size=24,
        )
        made.append(f"swarm on {MANAGER.name} ({MANAGER.lan_ip}, the manager)")
    if (worker.info().get("Swarm") or {}).get("LocalNodeState") != "active":
        manager.swarm.reload()
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        worker.swarm.join(
            remote_addrs=[f"{MANAGER.lan_ip}:2377"],
            join_token=token,
            listen_addr=f"{WORKER.lan_ip}:2377",
            advertise_addr=WORKER.lan_ip,
        )
        made.append(f"{WORKER.name} joined the swarm")
    return made


def _network(client: Any, name: str) -> Any | None:
    found = [n for n in client.networks.list(names=[name]) if n.name == name]
    return found[0] if found else None


def _ensure_networks(clients: dict[str, Any]) -> list[str]:
    from docker.types import IPAMConfig, IPAMPool

    made: list[str] = []
    manager = clients[MANAGER.name]
    if _network(manager, OVERLAY) is None:
        manager.networks.create(
            OVERLAY,
            driver="overlay",
            attachable=True,
            labels={LAB_LABEL: LAB_LABEL_VALUE, SCENARIO_LABEL: SCENARIO},
        )
        made.append(f"overlay network {OVERLAY} (attachable, on {MANAGER.name})")
    for host in HOSTS:
        client = clients[host.name]
        if _network(client, MACVLAN) is not None:
            continue
        pool = IPAMPool(subnet=SUBNET, iprange=host.macvlan_range, gateway=LAN_GATEWAY)
        client.networks.create(
            MACVLAN,
            driver="macvlan",
            options={"parent": LAN_IFNAME},
            ipam=IPAMConfig(pool_configs=[pool]),
            labels={LAB_LABEL: LAB_LABEL_VALUE, SCENARIO_LABEL: SCENARIO},
        )
        made.append(f"macvlan network {MACVLAN} on {host.name} (parent {LAN_IFNAME})")
    return made


def _ensure_containers(host: LabHost, client: Any) -> list[str]:
    from docker.errors import NotFound

    made: list[str] = []
    for spec in host.containers:
        try:
            container = client.containers.get(spec.name)
        except NotFound:
            container = None
        if container is not None and container.status == "running":
            continue
        if container is not None:
            container.remove(force=True)
        client.containers.run(
            IMAGE,
            list(spec.command),
            name=spec.name,
            hostname=spec.name,
            network=spec.network,
            ports={f"{inner}/tcp": outer for inner, outer in spec.publish},
            labels=_labels(spec.name),
            restart_policy={"Name": "no"},
            detach=True,
        )
        made.append(f"container {spec.name}@{host.name} on {spec.network}")
    return made


# --- the ScenarioParts protocol (flowtrace.lab.catalog) ------------------------------------


def conflicts(client: Any) -> list[str]:
    """Names and addresses the scenario needs that something else holds."""
    found: list[str] = []
    for host in HOSTS:
        link = _host_link(host)
        if netns_usable(host.netns_path) and link is not None and link["alias"] != LAN_ALIAS:
            found.append(f"namespace {host.netns} exists and is not the lab's: remove it")
        if context_is_foreign(host):
            found.append(
                f"a Docker context named {host.name} exists and is not the lab's: "
                f"`docker context rm {host.name}`"
            )
    for net in (SUBNET, HOSTS_RANGE):
        found += [
            f"{net} is already in use on this host ({use})" for use in host_range_conflicts(net, "")
        ]
        found += [
            f"{net} holds an address this host talks to, {use}"
            for use in destinations_inside(net, host_destinations())
        ]
    return found


def build(client: Any) -> list[str]:
    """The namespaces, the LAN, the engines, the swarm, the networks, the containers; a
    build that fails or is interrupted removes all of it again."""
    with _undone_on_failure():
        return _build()


def _build() -> list[str]:
    from docker.errors import APIError

    changes: list[str] = []
    for host in HOSTS:
        changes += ensure_netns(host.netns, host.netns_path)
    changes += ensure_netns(LAN_NETNS, LAN_PATH)
    changes += run_in_netns(LAN_PATH, _ensure_lan_here)
    for host in HOSTS:
        changes += run_in_netns(host.netns_path, _configure_host_here, host)
    clients: dict[str, Any] = {}
    try:
        for host in HOSTS:
            if not answers(host):  # a fresh engine: nothing of an earlier one kept
                changes += _clear(host)
                changes += start_engine(host)
            clients[host.name] = client_of(host)
            changes += [f"{c} on {host.name}" for c in ensure_image(clients[host.name])]
        changes += _ensure_swarm(clients)
        changes += _ensure_networks(clients)
        for host in HOSTS:
            changes += _ensure_containers(host, clients[host.name])
    except APIError as exc:
        raise LabConflictError(f"a lab host's engine refused: {short(exc)}") from None
    finally:
        for made in clients.values():
            made.close()
    for host in HOSTS:
        changes += register(host)
    return changes


def _clear(host: LabHost) -> list[str]:
    """What an engine that no longer answers left (its processes, cgroups, folders: a
    swarm state it would try to rejoin)."""
    gone = [f"left by an earlier engine: {what}" for what in stop_engine(host)]
    for folder in (host.data_root, host.root):
        if os.path.isdir(folder):
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(f"left by an earlier engine: folder {folder}")
    return gone


def attach(client: Any) -> list[str]:
    """Nothing to do after the members (the scenario's containers are on its own hosts)."""
    return []


def survey(client: Any) -> tuple[list[str], list[str]]:
    """The hosts and their containers as a table, and what is missing, in words."""
    missing: list[str] = []
    rows: list[tuple[str, ...]] = []
    container_rows: list[tuple[str, ...]] = []
    lan = run_in_netns(LAN_PATH, _lan_links) if netns_usable(LAN_PATH) else {}
    if not lan.get(LAN_BRIDGE):
        missing.append(f"the LAN ({LAN_NETNS}/{LAN_BRIDGE})")
    for host in HOSTS:
        link = _host_link(host)
        if link is None or f"{host.lan_ip}/{PREFIXLEN}" not in link["addresses"]:
            missing.append(f"{host.netns}/{LAN_IFNAME} {host.lan_ip}/{PREFIXLEN}")
        pid = engine_pid(host)
        swarm = "-"
        if pid is None or not answers(host):
            missing.append(f"dockerd of {host.name}")
        else:
            with contextlib.closing(client_of(host, timeout=10)) as engine:
                state = engine.info().get("Swarm") or {}
                swarm = (
                    ("manager" if state.get("ControlAvailable") else "worker")
                    if state.get("LocalNodeState") == "active"
                    else "not in a swarm"
                )
                if state.get("LocalNodeState") != "active":
                    missing.append(f"{host.name} in the swarm")
                for spec in host.containers:
                    container_rows.append(_container_row(engine, host, spec, missing))
        context = read_context(host.name)
        if context is None:
            missing.append(f"Docker context {host.name}")
        rows.append(
            (
                host.name,
                str(pid or "-"),
                host.url,
                f"{host.lan_ip}/{PREFIXLEN}",
                swarm,
                host.name if context is not None else "-",
            )
        )
    lines = table(("HOST", "DOCKERD PID", "SOCKET", "LAN ADDRESS", "SWARM", "CONTEXT"), rows)
    if container_rows:
        lines += ["", *table(("CONTAINER", "STATE", "NETWORK", "ADDRESS"), container_rows)]
    return lines, missing


def _container_row(
    engine: Any, host: LabHost, spec: HostContainer, missing: list[str]
) -> tuple[str, ...]:
    from docker.errors import NotFound

    try:
        attrs = engine.api.inspect_container(spec.name)
    except NotFound:
        missing.append(f"container {spec.name}@{host.name}")
        return (f"{spec.name}@{host.name}", "missing", spec.network, "-")
    state = attrs.get("State") or {}
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    address = (networks.get(spec.network) or {}).get("IPAddress") or "-"
    if not state.get("Running"):
        missing.append(f"container {spec.name}@{host.name} ({state.get('Status')})")
    published = ", ".join(f"{outer}->{inner}/tcp" for inner, outer in spec.publish)
    where = spec.network + (f" (published {published})" if published else "")
    return (f"{spec.name}@{host.name}", str(state.get("Status", "?")), where, address)


def remove(client: Any) -> tuple[list[str], list[str]]:
    """Everything the scenario made, and only that, whatever state it is in (a build cut
    short, an engine that died): each host's engine and what outlives it (containerd,
    shims, containers' processes, cgroups; hostengines.stop_engine), its folders and
    context, then the namespaces (their veths and rules go with them).  Ctrl-C and
    SIGTERM wait until it is done."""
    with _uninterrupted():
        return _remove()


def _remove() -> tuple[list[str], list[str]]:
    from pyroute2 import netns

    removed: list[str] = []
    kept: list[str] = []
    for host in reversed(HOSTS):
        try:
            removed += stop_engine(host)
        except Exception as exc:  # the other host and the rest go on
            kept.append(f"dockerd of {host.name} ({short(exc)})")
            continue
        if engine_pid(host) is not None:
            kept.append(f"dockerd of {host.name} (it did not stop)")
            continue
        for folder in (host.data_root, host.root):
            if os.path.isdir(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(f"folder {folder}")
        removed += unregister(host)
        kept += [f"{what} of {host.name}" for what in leftovers(host)]
    for name, path in (*((h.netns, h.netns_path) for h in HOSTS), (LAN_NETNS, LAN_PATH)):
        if os.path.exists(path) and not kept:
            netns.remove(name)
            removed.append(f"namespace {name}")
    for folder in (ROOT, os.path.dirname(ROOT), DATA):
        with contextlib.suppress(OSError):
            os.rmdir(folder)  # only when empty: the base lab keeps nothing there
    remove_empty_context_folders()
    return removed, kept


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM for the block (main thread only): a removal cut short
    would leave engines running with nothing to stop them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _undone_on_failure() -> Iterator[None]:
    """A build that fails or is stopped (Ctrl-C, SIGTERM) removes what it made: the
    engines run in sessions of their own, and nothing else would stop them."""
    previous = None
    if threading.current_thread() is threading.main_thread():

        def interrupt(signum: int, frame: FrameType | None) -> None:
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            remove(None)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

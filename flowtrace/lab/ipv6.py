"""The parts of scenario `ipv6` that are not containers: a dual-stack network and an IPv6
outside host, on the lab's own engine (flowtrace.lab.own_engine).

The scenario runs in the namespace ft6-host, on a dockerd of the lab's own started with
"ip6tables" and "experimental" (Docker 20.10 NATs IPv6 only with both; Docker 27 has
them on by default); every function here runs inside it (`own_engine.entered()`), so
"the host" below is ft6-host, and the machine's engine, rules and sysctls are never
touched.

* the Docker network ``ftlab6``: a user-defined bridge with IPv6 on (``--ipv6``) and the
  unique local subnet fd6c:6162:3600::/64 (gateway ::1), IPv4 from Docker's own pool;
  its containers v6a, v6b and v6web (publishing TCP 8086 -> 80, which Docker binds on
  0.0.0.0 and [::]) are the scenario's members (flowtrace.lab.catalog).
* the IPv6 outside host: the namespace ``ft6-outside`` joined to ft6-host by the veth
  ``ft6-uplink`` (ft6-host's side 2001:db8:f6::1/64, inside 2001:db8:f6::2/64: a /64 of
  the IPv6 documentation range, checked unused first).  Like ft-outside it has no
  default route, so nothing in it reaches beyond ft6-host; router solicitations are
  off inside, so it never asks ft6-host to be its router.
* NAT66: the engine masquerades the network's subnet towards other interfaces and
  DNATs its ports published on [::], in ft6-host's ip6tables.  Should it not (the
  options missing), the scenario says what is missing.
* Making an IPv6 network makes Docker turn on IPv6 forwarding: in ft6-host, whose
  sysctls go with it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from typing import Any

import flowtrace.lab.own_engine as own_engine
from flowtrace.endpoints.netns import HOST_NETNS, netns_inode, run_in_netns
from flowtrace.errors import FlowtraceError
from flowtrace.lab.base import LAB_LABEL, LAB_LABEL_VALUE, SCENARIO_LABEL, LabConflictError
from flowtrace.lab.engine import foreign_network, get_network, is_lab_labelled, owned, short
from flowtrace.lab.links import (
    add_veth_into,
    ensure_netns,
    foreign_netns_and_link,
    link_facts,
    link_facts_here,
    names_the_host,
    netns_usable,
    thread_is_in,
)
from flowtrace.lab.outside import destinations_inside, host_destinations, host_range_conflicts
from flowtrace.lab.render import table

SCENARIO = "ipv6"
NETWORK = "ftlab6"
SUBNET6 = "fd6c:6162:3600::/64"
GATEWAY6 = "fd6c:6162:3600::1"
A, B, WEB = "v6a", "v6b", "v6web"
WEB_PORT6 = 8086  # published on the host (0.0.0.0 and [::])

OUTSIDE6_NETNS = "ft6-outside"
OUTSIDE6_NETNS_PATH = f"/run/netns/{OUTSIDE6_NETNS}"
OUTSIDE6_IFNAME = "eth0"
UPLINK6 = "ft6-uplink"
UPLINK6_ALIAS = "flowtrace lab ipv6 uplink"
OUTSIDE6_NET = "2001:db8:f6::/64"
OUTSIDE6_PREFIXLEN = 64
OUTSIDE6_IP = "2001:db8:f6::2"
UPLINK6_IP = "2001:db8:f6::1"

#: Where the lab's engine reads its options (the "ip6tables" and "experimental" NAT66 needs).
DAEMON_JSON = own_engine.CONFIG
_SYSCTL = "/proc/sys/net/ipv6/conf/{}/{}"
_IFA_F_NODAD = 0x02


def _sysctl(ifname: str, knob: str, value: str | None = None) -> str:
    """Read (and with `value`, first write) net.ipv6.conf.IFNAME.KNOB in this thread's
    namespace (/proc/sys/net follows the namespace of the thread that opens it)."""
    path = _SYSCTL.format(ifname, knob)
    if value is not None:
        with open(path, "w") as knob_file:
            knob_file.write(value)
    with open(path) as knob_file:
        return knob_file.read().strip()


# --- looking ----------------------------------------------------------------------------


def _facts6(ipr: Any, ifname: str) -> dict[str, Any] | None:
    """index, kind, peer, alias, up and global IPv6 CIDRs of a link; None when absent."""
    return link_facts(ipr, ifname, socket.AF_INET6)


def _facts6_here(ifname: str) -> dict[str, Any] | None:
    return link_facts_here(ifname, socket.AF_INET6)


def _outside_links() -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    uplink = _facts6_here(UPLINK6)
    inside = None
    if netns_usable(OUTSIDE6_NETNS_PATH):
        inside = run_in_netns(OUTSIDE6_NETNS_PATH, _facts6_here, OUTSIDE6_IFNAME)
    return uplink, inside


def _paired(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    return bool(a and b and a["peer"] == b["index"] and b["peer"] == a["index"])


def nat66_rules(subnet: str = SUBNET6) -> list[str]:
    """The host's ip6tables nat rules that masquerade `subnet` (Docker's NAT66)."""
    from flowtrace.topology.netfilter import read_ruleset

    net = ipaddress.ip_network(subnet)
    found = []
    for rule in read_ruleset(HOST_NETNS, ipv6=True).rules("nat", family="ip6"):
        sources = [c for c in rule.criteria if c.kind == "source" and not c.negated]
        if rule.target == "MASQUERADE" and any(net in c.networks for c in sources):
            found.append(rule.text)
    return found


def daemon_options(info: dict[str, Any], config_path: str = DAEMON_JSON) -> str:
    """What the engine (`docker info`) and its configuration file say about the two
    options, in words."""
    experimental = bool(info.get("ExperimentalBuild"))
    try:
        with open(config_path) as config:
            ip6tables = bool(json.load(config).get("ip6tables"))
    except (OSError, ValueError, AttributeError):
        ip6tables = False
    missing = [
        name for name, on in (("ip6tables", ip6tables), ("experimental", experimental)) if not on
    ]
    if not missing:
        return (
            f'"ip6tables" and "experimental" are on in {config_path}, not in the running '
            "engine: `flowtrace lab down --scenario ipv6`, then up again"
        )
    wanted = " and ".join(f'"{name}": true' for name in missing)
    return (
        f"the lab's engine runs without {wanted} (Docker 20.10 needs both; the lab's "
        f"own engine reads them from {config_path}: `flowtrace lab down --scenario ipv6`, "
        "then up again)"
    )


def nat66_missing(client: Any) -> str | None:
    """Why the scenario cannot show NAT66, in words; None when Docker does it."""
    try:
        if nat66_rules():
            return None
    except FlowtraceError as exc:
        return f"Docker's IPv6 NAT (ip6tables cannot be read: {exc.message})"
    return (
        f"Docker's IPv6 NAT for {NETWORK} (no ip6tables MASQUERADE of {SUBNET6}): "
        f"{daemon_options(client.info())}; IPv6 between its containers works without it"
    )


def _member_addresses(client: Any) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for name in (A, B, WEB):
        container = owned(client, name)
        networks = (
            (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
            if container is not None
            else {}
        )
        on = networks.get(NETWORK) or {}
        rows.append((name, on.get("GlobalIPv6Address") or "-", on.get("IPAddress") or "-", NETWORK))
    return rows


def survey(client: Any) -> tuple[list[str], list[str]]:
    """The scenario's table (its IPv6 addresses, the outside host, NAT66) and what is
    missing, in words."""
    missing: list[str] = []
    network = get_network(client, NETWORK)
    if network is None or not is_lab_labelled(network.attrs.get("Labels")):
        missing.append(f"network {NETWORK}")
    uplink, inside = _outside_links()
    if not netns_usable(OUTSIDE6_NETNS_PATH):
        missing.append(f"namespace {OUTSIDE6_NETNS}")
    if uplink is None:
        missing.append(f"veth {UPLINK6}")
    elif not _paired(uplink, inside):
        missing.append(f"veth pair {UPLINK6} <-> {OUTSIDE6_NETNS}/{OUTSIDE6_IFNAME}")
    want_up, want_in = f"{UPLINK6_IP}/{OUTSIDE6_PREFIXLEN}", f"{OUTSIDE6_IP}/{OUTSIDE6_PREFIXLEN}"
    if uplink is not None and (want_up not in uplink["addresses"] or not uplink["up"]):
        missing.append(f"address {want_up} on {UPLINK6}, up")
    if inside is not None and (want_in not in inside["addresses"] or not inside["up"]):
        missing.append(f"address {want_in} on {OUTSIDE6_NETNS}/{OUTSIDE6_IFNAME}, up")
    nat = None if network is None else nat66_missing(client)
    if nat is not None:
        missing.append(nat)
    lines = table(("IPV6", "IPV6 ADDRESS", "IPV4 ADDRESS", "NETWORK"), _member_addresses(client))
    lines.append("")

    def cidrs(facts: dict[str, Any] | None) -> str:
        return ", ".join(facts["addresses"]) if facts and facts["addresses"] else "-"

    lines += table(
        ("OUTSIDE HOST (IPV6)", "NETNS", "INTERFACE", "ADDRESS", "HOST SIDE"),
        [
            (
                OUTSIDE6_NETNS,
                OUTSIDE6_NETNS_PATH if inside is not None else "missing",
                OUTSIDE6_IFNAME,
                cidrs(inside),
                f"{UPLINK6} {cidrs(uplink)}" if uplink is not None else f"{UPLINK6} missing",
            )
        ],
    )
    lines.append("")
    if network is not None and nat is None:
        lines += [f"NAT66 ({own_engine.NETNS} ip6tables nat): {rule}" for rule in nat66_rules()]
    else:
        lines.append("NAT66: off")
    return lines, missing


def machine_conflicts() -> list[str]:
    """Run on the machine's own namespace, before ft6-host is entered: the
    documentation range the outside host takes must not be routed or used here
    (2001:db8::/32 never is on a sound network; the lab would shadow it in ft6-host)."""
    return [
        f"{OUTSIDE6_NET} is in use on this machine ({use}): the IPv6 lab's outside host "
        "would shadow it"
        for use in host_range_conflicts(OUTSIDE6_NET, "")
    ]


def conflicts(client: Any) -> list[str]:
    """Names and addresses the scenario needs that something else holds."""
    found = foreign_netns_and_link(OUTSIDE6_NETNS, OUTSIDE6_NETNS_PATH, UPLINK6, UPLINK6_ALIAS)
    network = get_network(client, NETWORK)
    found += foreign_network(network, NETWORK)
    if network is None:  # once it is the lab's, the bridge holds the subnet
        found += [
            f"{SUBNET6} is already in use on this host ({use})"
            for use in host_range_conflicts(SUBNET6, "")
        ]
    found += [
        f"{OUTSIDE6_NET} is already in use on this host ({use})"
        for use in host_range_conflicts(OUTSIDE6_NET, UPLINK6)
    ]
    own = {OUTSIDE6_IP, UPLINK6_IP}
    others = [(ip, why) for ip, why in host_destinations() if ip not in own]
    for net in (SUBNET6, OUTSIDE6_NET):
        found += [
            f"{net} holds an address this host talks to, {use}: the scenario's route to it "
            "would cut it off"
            for use in destinations_inside(net, others)
        ]
    return found


# --- building -------------------------------------------------------------------------


def _ensure_network(client: Any) -> list[str]:
    from docker.types import IPAMConfig, IPAMPool

    if get_network(client, NETWORK) is not None:
        return []
    client.networks.create(
        NETWORK,
        driver="bridge",
        enable_ipv6=True,
        ipam=IPAMConfig(pool_configs=[IPAMPool(subnet=SUBNET6, gateway=GATEWAY6)]),
        labels={LAB_LABEL: LAB_LABEL_VALUE, SCENARIO_LABEL: SCENARIO},
        check_duplicate=True,
    )
    return [f"created network {NETWORK} (IPv6 {SUBNET6}, IPv4 from Docker's pool)"]


def _quiet_ipv6(ifname: str) -> None:
    """No router solicitations and no duplicate address detection delay: the lab's IPv6
    links are configured by hand."""
    _sysctl(ifname, "accept_ra", "0")
    _sysctl(ifname, "router_solicitations", "0")
    _sysctl(ifname, "disable_ipv6", "0")


def _configure_link(ipr: Any, ifname: str, ip: str, what: str) -> list[str]:
    facts = _facts6(ipr, ifname)
    if facts is None:
        raise FlowtraceError(f"{what} has no {ifname} after creating it")
    _quiet_ipv6(ifname)
    changes = []
    cidr = f"{ip}/{OUTSIDE6_PREFIXLEN}"
    if cidr not in facts["addresses"]:
        ipr.addr(
            "add",
            index=facts["index"],
            address=ip,
            prefixlen=OUTSIDE6_PREFIXLEN,
            family=socket.AF_INET6,
            flags=_IFA_F_NODAD,
        )
        changes.append(f"address {cidr} on {what}")
    if not facts["up"]:
        ipr.link("set", index=facts["index"], state="up")
        changes.append(f"{what} up")
    return changes


def _configure_inside(host_inode: int) -> list[str]:
    from pyroute2 import IPRoute

    if thread_is_in(host_inode):
        raise LabConflictError(f"{OUTSIDE6_NETNS_PATH} turned out to be this host's namespace")
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        facts = _facts6(ipr, OUTSIDE6_IFNAME)
        if facts is None or facts["kind"] != "veth":
            raise FlowtraceError(
                f"{OUTSIDE6_NETNS}/{OUTSIDE6_IFNAME} is not the lab's veth: run "
                f"`flowtrace lab down --scenario {SCENARIO}`"
            )
        return _configure_link(
            ipr, OUTSIDE6_IFNAME, OUTSIDE6_IP, f"{OUTSIDE6_NETNS}/{OUTSIDE6_IFNAME}"
        )


def _delete_inside_link() -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=OUTSIDE6_IFNAME):
            ipr.link("del", index=index)


def _ensure_outside() -> list[str]:
    from pyroute2 import IPRoute

    changes = ensure_netns(OUTSIDE6_NETNS, OUTSIDE6_NETNS_PATH)
    if names_the_host(OUTSIDE6_NETNS_PATH):
        raise LabConflictError(f"{OUTSIDE6_NETNS_PATH} names this host's own namespace")
    uplink, inside = _outside_links()
    with IPRoute() as ipr:
        if not _paired(uplink, inside):
            if uplink is not None:
                ipr.link("del", index=uplink["index"])
            if inside is not None:
                run_in_netns(OUTSIDE6_NETNS_PATH, _delete_inside_link)
            changes += add_veth_into(ipr, UPLINK6, OUTSIDE6_NETNS, OUTSIDE6_IFNAME)
        ipr.link("set", index=ipr.link_lookup(ifname=UPLINK6)[0], ifalias=UPLINK6_ALIAS)
        changes += _configure_link(ipr, UPLINK6, UPLINK6_IP, UPLINK6)
    changes += run_in_netns(OUTSIDE6_NETNS_PATH, _configure_inside, netns_inode(HOST_NETNS))
    return changes


def build(client: Any) -> list[str]:
    """Before the containers: the IPv6 network and the IPv6 outside host."""
    from pyroute2.netlink.exceptions import NetlinkError

    changes = _ensure_network(client)
    try:
        changes += _ensure_outside()
    except NetlinkError as exc:
        reason = os.strerror(exc.code) if exc.code else str(exc)
        raise FlowtraceError(f"the kernel refused to build {OUTSIDE6_NETNS}: {reason}") from None
    return changes


def attach(client: Any) -> list[str]:
    """After the containers: nothing to add (Docker gives them their IPv6 addresses)."""
    return []


# --- removing -------------------------------------------------------------------------


def remove(client: Any | None) -> tuple[list[str], list[str]]:
    """The network (`client`: the lab engine's, None once it is gone) and the IPv6
    outside host; the uplink goes with ft6-host when the engine stops."""
    from docker.errors import APIError
    from pyroute2 import netns

    removed: list[str] = []
    kept: list[str] = []
    network = get_network(client, NETWORK) if client is not None else None
    if network is not None and is_lab_labelled(network.attrs.get("Labels")):
        try:
            network.remove()
            removed.append(f"network {NETWORK}")
        except APIError as exc:
            kept.append(f"network {NETWORK} ({short(exc)})")
    if client is not None:
        uplink = _facts6_here(UPLINK6)
        if uplink is not None and uplink["alias"] == UPLINK6_ALIAS:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                ipr.link("del", index=uplink["index"])
            removed.append(f"veth {UPLINK6} <-> {OUTSIDE6_NETNS}/{OUTSIDE6_IFNAME}")
    if os.path.exists(OUTSIDE6_NETNS_PATH) and not names_the_host(OUTSIDE6_NETNS_PATH):
        netns.remove(OUTSIDE6_NETNS)
        removed.append(f"namespace {OUTSIDE6_NETNS}")
    return removed, kept

"""What a rule means in the terms of the engine that wrote it: Docker, Podman, firewalld.

A rule is recognised by the shape the engine gives it (sources: moby's generated rule
documents, integration/network/bridge/{iptables,nftables}doc/generated/*.md, and
netavark's src/firewall and test/), and the words say what the user did or can
change, not only what the rule says.  Each sentence names the engine versions whose
rules have that shape.  Pure: a rule and the packet in, words out (None when the rule
is no engine's).
"""

from __future__ import annotations

from flowtrace.topology.netfilter.firewall import BaseChain
from flowtrace.topology.netfilter.matching import PacketView, criteria_match
from flowtrace.topology.netfilter.rules import NFTABLES, Criterion, Rule

_DIRECT = (
    "Docker (28.0 and later) drops packets for a container's own address ({dst}) that "
    "arrive by any interface but its network's bridge {bridge}: published ports are "
    "reachable through the host's addresses, other container addresses are not reachable "
    "from other interfaces since Docker 28; publish the port (`docker run -p`) and use the "
    "host's address, connect the container to the sender's network (`docker network "
    "connect`), or give the network the gateway mode `nat-unprotected` or `routed`"
)
_LOOPBACK = (
    "Docker (28.0 and later) drops packets for a port published on 127.0.0.1 ({port}) that "
    "arrive by any interface but lo: such a port is reachable from the host itself only; "
    "publish it on another address (`-p {port}:...`) to reach it from elsewhere"
)
_UNPUBLISHED = (
    "Docker forwards into bridge {bridge} from other interfaces only what is published "
    "(`docker run -p`), and {what} is not (Docker 28.0 and later: a per-network DROP that "
    "does not depend on the FORWARD policy); publish the port, or connect both containers "
    "to one network"
)
_ISOLATION = (
    "Docker isolates its bridge networks from each other (DOCKER-ISOLATION-STAGE-2, Docker "
    "before 29.0): to let containers on two networks talk, connect one of them to the "
    "other network (`docker network connect`), or publish a port"
)
_INTERNAL = (
    "network of bridge {bridge} was created with `--internal`: Docker drops everything "
    "that enters or leaves its subnet ({chain}); drop `--internal` or connect the container "
    "to a second, non-internal network to reach beyond it"
)
_ICC = (
    "inter-container communication is disabled on bridge {bridge} "
    "(`com.docker.network.bridge.enable_icc=false`, or dockerd `--icc=false` for the "
    "default bridge): containers on that network cannot reach each other; publish a port "
    "and use the host's address, or create the network without that option"
)
_POLICY = (
    "no rule accepted it, so the chain's policy dropped it: Docker sets the FORWARD policy "
    "to DROP when it enables IP forwarding itself, so traffic of bridges Docker does not "
    "manage (Podman's, libvirt's) needs an ACCEPT in DOCKER-USER "
    "(`iptables -I DOCKER-USER -i BRIDGE -j ACCEPT`)"
)
_NETAVARK_ISOLATION = (
    "Podman's netavark isolates networks created with `--opt isolate=true` (or `strict`) "
    "from other networks: connect the container to both networks (`podman network "
    "connect`) or publish a port"
)
_INVALID = (
    "conntrack found the packet INVALID (it belongs to no connection it knows, such as a "
    "TCP packet of a connection it never saw open), and Podman's netavark drops those"
)
_FIREWALLD_NO_ZONE = (
    "firewalld {verb} it: no zone it is in accepts it; allow it there (`firewall-cmd "
    "--get-active-zones` says which zone has the interface, `--add-port=PORT/PROTO` or "
    "`--add-service=NAME` allows it)"
)
_FIREWALLD = (
    "firewalld's zone {zone} {verb} it: allow it in that zone (`firewall-cmd --zone={zone} "
    "--add-port=PORT/PROTO` or `--add-service=NAME`), or move the interface to a zone that "
    "accepts it; since Docker 28 Docker puts its bridges in firewalld's `docker` zone"
)


def drop_words(rule: Rule | None, base: BaseChain, packet: PacketView) -> str | None:
    """Why the engine that wrote `rule` (None: the chain's policy) drops this packet."""
    if base.table.source == NFTABLES:
        return _nft_drop(rule, base, packet)
    if rule is None:
        if base.chain.name == "FORWARD" and base.table.name == "filter":
            has_docker = "DOCKER-USER" in base.table.chains or "DOCKER" in base.table.chains
            if has_docker:
                return _POLICY
        return "no rule accepted it, so the chain's policy dropped it"
    chain, table = rule.chain, rule.table
    dst = _networks(rule, "destination")
    in_names = _names(rule, "in", negated=True)
    if table == "raw" and chain == "PREROUTING":
        if dst and dst[0].startswith("127.") and ("lo" in in_names):
            return _LOOPBACK.format(port=_port(rule) or "?")
        if dst and in_names:
            return _DIRECT.format(dst=dst[0].split("/")[0], bridge=in_names[0])
    if chain == "DOCKER" and _names(rule, "out") and in_names == _names(rule, "out"):
        return _UNPUBLISHED.format(bridge=in_names[0], what=_what(packet))
    if chain == "DOCKER-ISOLATION-STAGE-2":
        return _ISOLATION
    if chain in ("DOCKER-INTERNAL", "DOCKER-ISOLATION-STAGE-1") and _negated_networks(rule):
        bridge = (_names(rule, "out") or _names(rule, "in") or ["?"])[0]
        return _INTERNAL.format(bridge=bridge, chain=chain)
    same = _names(rule, "in") and _names(rule, "in") == _names(rule, "out")
    if chain in ("DOCKER-FORWARD", "FORWARD") and same:
        return _ICC.format(bridge=_names(rule, "in")[0])
    if chain == "DOCKER-USER":
        return (
            "a rule in DOCKER-USER, the chain Docker leaves to the host's administrator, dropped it"
        )
    if chain.startswith("NETAVARK_ISOLATION"):
        return _NETAVARK_ISOLATION
    if chain == "NETAVARK_FORWARD" and "INVALID" in _names(rule, "ctstate"):
        return _INVALID
    return None


def _nft_drop(rule: Rule | None, base: BaseChain, packet: PacketView) -> str | None:
    table = base.table.name
    if table == "firewalld" or (
        rule is not None and rule.chain.startswith(("filter_IN_", "filter_FWD_"))
    ):
        zone = _firewalld_zone(rule.chain if rule else base.chain.name)
        if zone == "?":  # the base chain's own reject, after the zones: the packet's zone
            zone = _zone_of_packet(base, packet)
        verb = "rejects" if rule is not None and rule.target == "REJECT" else "drops"
        if zone == "?":
            return _FIREWALLD_NO_ZONE.format(verb=verb)
        return _FIREWALLD.format(zone=zone, verb=verb)
    if rule is None:
        if table == "docker-bridges":
            return (
                "no rule accepted it, so the chain's policy dropped it: Docker's nftables "
                "backend sets filter-FORWARD's policy to drop when it enabled IP forwarding "
                "itself"
            )
        return "no rule accepted it, so the chain's policy dropped it"
    comment = (rule.comment or "").upper()
    bridge = _chain_bridge(rule.chain)
    if table == "docker-bridges":
        if comment == "DROP DIRECT ACCESS":
            dst = _networks(rule, "destination")
            return _DIRECT.format(dst=dst[0].split("/")[0] if dst else "?", bridge=_not_in(rule))
        if comment == "DROP REMOTE LOOPBACK":
            return _LOOPBACK.format(port=_port(rule) or "?")
        if comment == "UNPUBLISHED PORT DROP":
            return _UNPUBLISHED.format(bridge=bridge, what=_what(packet))
        if comment == "ICC":
            return _ICC.format(bridge=bridge)
        if comment.startswith("INTERNAL NETWORK"):
            return _INTERNAL.format(bridge=bridge, chain=f'"{rule.comment}" in {rule.chain}')
    if table == "netavark":
        if rule.chain.startswith("NETAVARK-ISOLATION"):
            return _NETAVARK_ISOLATION
        if "INVALID" in _names(rule, "ctstate"):
            return _INVALID
    return None


def accept_words(rule: Rule, base: BaseChain, packet: PacketView) -> str | None:
    """What an engine's ACCEPT that let this packet through stands for."""
    comment = (rule.comment or "").upper()
    out = _names(rule, "out")
    if base.table.source == NFTABLES and base.table.name == "docker-bridges":
        bridge = _chain_bridge(rule.chain)
        if comment == "ICC":
            return f"containers on bridge {bridge} may reach each other (ICC enabled)"
        if comment == "OUTGOING":
            return f"containers on bridge {bridge} may reach other networks"
        if comment == "UNPROTECTED":
            return _UNPROTECTED.format(bridge=bridge)
        if comment == "ICMP":
            return _ROUTED_ICMP.format(bridge=bridge)
        if _port(rule) is not None and _networks(rule, "destination"):
            return f"a port published by a container on bridge {bridge} (`docker run -p`)"
        return None
    if rule.chain == "DOCKER" and out and _port(rule) is not None:
        return f"a port published by a container on bridge {out[0]} (`docker run -p`)"
    if rule.chain == "DOCKER" and out and _names(rule, "in", negated=True) == out:
        return _UNPROTECTED.format(bridge=out[0])
    if rule.chain == "DOCKER" and out and 1 in _protos(rule):
        return _ROUTED_ICMP.format(bridge=out[0])
    if rule.chain in ("FORWARD", "DOCKER-FORWARD") and _names(rule, "in") and not out:
        return f"containers on bridge {_names(rule, 'in')[0]} may reach other networks"
    return None


_UNPROTECTED = (
    "bridge {bridge}'s network has the gateway mode `nat-unprotected`: every port of its "
    "containers is reachable from other interfaces, not only the published ones"
)
_ROUTED_ICMP = (
    "bridge {bridge}'s network has the gateway mode `routed`: its containers' addresses are "
    "reachable directly (ICMP always; published ports too), with no DNAT or MASQUERADE"
)


def nat_words(rule: Rule) -> str | None:
    """What an engine's NAT rule does, in its terms."""
    comment = (rule.comment or "").lower()
    target = rule.target
    if "netavark portfw masq mark" in comment or (
        target == "MASQUERADE"
        and any(c.kind == "mark" and c.mark and c.mark[1] == 0x2000 for c in rule.criteria)
    ):
        return (
            "netavark masquerades what it marked 0x2000 (a connection to a published port "
            "from the host or from the container's own network)"
        )
    if target == "MASQUERADE" and _names(rule, "out", negated=True):
        source = _networks(rule, "source")
        net = source[0] if source else "the network"
        return (
            f"Docker masquerades {net} leaving by any interface but its bridge: containers "
            "reach other networks with the host's address"
        )
    if target == "MASQUERADE" and _names(rule, "src-type"):
        return (
            "Docker with `--userland-proxy=false` masquerades the host's own connections "
            "into the bridge (no docker-proxy carries them)"
        )
    if target == "MASQUERADE" and comment == "masquerade from host":
        return _NOPROXY_MASQ
    if target == "MASQUERADE" and comment in ("masq to own port", "") and _hairpin(rule):
        return (
            "a container reaching its own published port through the host is masqueraded (hairpin)"
        )
    if target == "MASQUERADE" and comment == "masquerade":
        return (
            "Docker masquerades its network's containers leaving by any interface but their "
            "bridge: they reach other networks with the host's address"
        )
    if target == "DNAT" and (
        rule.chain in ("DOCKER", "nat-prerouting-and-output") or comment == "dnat"
    ):
        spec = rule.option("--to-destination") or "?"
        if not _names(rule, "in", negated=True):
            return (
                f"a port published by a container (to {spec}); with `--userland-proxy=false` "
                "Docker's DNAT takes every source, the host's own connections too"
            )
        return f"a port published by a container (`docker run -p`, to {spec})"
    if target == "DNAT" and (rule.chain.startswith("NETAVARK") or "_dnat" in rule.chain):
        return f"a port published by a Podman container (to {rule.option('--to-destination')})"
    return None


_NOPROXY_MASQ = (
    "Docker with `--userland-proxy=false` masquerades the host's own connections into the "
    "bridge (no docker-proxy carries them)"
)


def routed_words(source_ip: str, out_iface: str | None) -> str:
    """A container's packet leaves unmasqueraded: what routed gateway mode asks of the user."""
    return (
        f"no MASQUERADE rewrote {source_ip} on its way out{f' by {out_iface}' if out_iface else ''}"
        ": the network's gateway mode is `routed` (or nothing masquerades it): the reply "
        f"comes back to {source_ip} itself, so the other side needs a route back to the "
        "container's network via this host"
    )


# --- the shapes rules have -----------------------------------------------------------------


def _crit(rule: Rule, kind: str) -> list[Criterion]:
    return [c for c in rule.criteria if c.kind == kind]


def _names(rule: Rule, kind: str, negated: bool = False) -> list[str]:
    return [n for c in _crit(rule, kind) if c.negated == negated for n in c.names]


def _networks(rule: Rule, kind: str) -> list[str]:
    return [str(n) for c in _crit(rule, kind) if not c.negated for n in c.networks]


def _negated_networks(rule: Rule) -> bool:
    return any(c.negated for c in (*_crit(rule, "source"), *_crit(rule, "destination")))


def _protos(rule: Rule) -> list[int]:
    found = []
    for c in _crit(rule, "proto"):
        found += list(c.protos) or ([c.proto] if c.proto is not None else [])
    return found


def _port(rule: Rule) -> int | None:
    for c in _crit(rule, "dport"):
        if c.ports:
            return c.ports[0][0]
    return None


def _hairpin(rule: Rule) -> bool:
    source, dst = _networks(rule, "source"), _networks(rule, "destination")
    return bool(source) and source == dst


def _not_in(rule: Rule) -> str:
    names = _names(rule, "in", negated=True)
    return names[0] if names else "?"


def _chain_bridge(chain: str) -> str:
    """filter-forward-in__bridge1 -> bridge1 (Docker's nftables per-network chains)."""
    return chain.split("__", 1)[1] if "__" in chain else chain


def _zone_of_packet(base: BaseChain, packet: PacketView) -> str:
    """The zone firewalld's dispatch chain (filter_INPUT_ZONES, filter_FORWARD_ZONES or,
    before firewalld 1.0, filter_FORWARD_IN_ZONES) sends the packet to by its interface."""
    for name in ("filter_INPUT_ZONES", "filter_FORWARD_ZONES", "filter_FORWARD_IN_ZONES"):
        if name.startswith("filter_INPUT") != (base.hook == "input"):
            continue
        chain = base.table.chains.get(name)
        for rule in chain.rules if chain is not None else ():
            if rule.target and criteria_match(rule.criteria, packet) is True:
                return _firewalld_zone(rule.target)
    return "?"


def _firewalld_zone(chain: str) -> str:
    """filter_IN_public_deny -> public."""
    for prefix in ("filter_IN_", "filter_FWDI_", "filter_FWDO_", "filter_FWD_", "filter_OUT_"):
        if chain.startswith(prefix):
            rest = chain[len(prefix) :]
            for suffix in ("_pre", "_log", "_deny", "_allow", "_post", "_reject"):
                rest = rest.removesuffix(suffix)
            return rest or "?"
    return "?"


def _what(packet: PacketView) -> str:
    names = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
    proto = names.get(packet.proto, str(packet.proto))
    if packet.dport is not None and proto in ("tcp", "udp", "sctp"):
        return f"{packet.dst}:{packet.dport}/{proto}"
    return f"{proto} to {packet.dst}"

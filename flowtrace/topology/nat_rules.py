"""Which iptables rule rewrote (or dropped) a packet: a pure parser and matcher.

`parse_iptables_save` reads `iptables-save` output (the nat and filter tables
matter here) into chains of rules with their matches parsed.  `attribute` walks a
chain the way the kernel would for the first packet of a connection (nat rules
only see that one): DNAT in PREROUTING (OUTPUT for locally generated packets),
SNAT and MASQUERADE in POSTROUTING; it descends into jumps, honours RETURN and
ACCEPT, and names the first rule that matches the packet as it was before the
rewrite and whose target explains the values after it.  `find_drop_rule` does the
same for a packet that vanished, in the filter table.

Matches flowtrace cannot evaluate (marks, sets, limits...) count as "maybe": a
maybe-match can still be the answer when its target explains what was seen, but
never hides the rules after it (a RETURN or ACCEPT must match for certain).
`read_ruleset` is the only part that touches the system: it runs iptables-save
inside a namespace.
"""

from __future__ import annotations

import ipaddress
import shlex
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from flowtrace.errors import FlowtraceError, MissingToolError, NotRootError
from flowtrace.model import Address, NatEvent

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PortRange = tuple[int, int]

#: Protocol names iptables-save prints, and their numbers.
PROTOCOLS = {
    "all": 0,
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "icmp6": 58,
    "sctp": 132,
    "udplite": 136,
}

#: Targets that end the walk through a table when they fire.
_NAT_TARGETS = frozenset(("DNAT", "SNAT", "MASQUERADE", "REDIRECT", "NETMAP"))
_DROP_TARGETS = frozenset(("DROP", "REJECT"))
_BUILTIN_POLICIES = frozenset(("ACCEPT", "DROP"))

_NEW = "NEW"


@dataclass(frozen=True)
class Criterion:
    """One match of a rule, parsed into the field its kind uses.

    kinds: source/destination (networks), in/out (names: the interface pattern),
    proto, sport/dport/port (ports), dst-type/src-type and ctstate (names), and
    "unknown" for anything flowtrace does not evaluate (names: its arguments).
    """

    kind: str
    negated: bool = False
    networks: tuple[IPNetwork, ...] = ()
    ports: tuple[PortRange, ...] = ()
    names: tuple[str, ...] = ()
    proto: int | None = None
    text: str = ""  # as written: "! -o docker0"


@dataclass(frozen=True)
class Rule:
    """One rule as iptables-save printed it, with its matches and target parsed."""

    table: str
    chain: str
    text: str  # "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    criteria: tuple[Criterion, ...] = ()
    target: str | None = None  # "MASQUERADE", "DOCKER", "RETURN", None without -j
    target_options: tuple[tuple[str, str], ...] = ()
    goto: bool = False  # -g: the chain's end returns to the caller's caller
    comment: str | None = None

    def option(self, name: str) -> str | None:
        """The value of a target option (`--to-destination`), or None."""
        for key, value in self.target_options:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class Chain:
    name: str
    policy: str | None = None  # None for user chains ("-")
    rules: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Table:
    name: str
    chains: Mapping[str, Chain] = field(default_factory=dict)


@dataclass(frozen=True)
class NatRuleset:
    """The tables of one namespace's iptables-save output (nat and filter matter here)."""

    tables: Mapping[str, Table] = field(default_factory=dict)

    @property
    def nat(self) -> Table:
        return self.tables.get("nat") or Table("nat")

    @property
    def filter(self) -> Table:
        return self.tables.get("filter") or Table("filter")

    def rules(self, table: str = "nat") -> list[Rule]:
        """Every rule of a table, chain by chain, in file order."""
        t = self.tables.get(table)
        return [r for c in t.chains.values() for r in c.rules] if t else []


# --- parsing ------------------------------------------------------------------------------


class RulesetFormatError(FlowtraceError):
    """iptables-save output flowtrace cannot read."""


def parse_iptables_save(text: str) -> NatRuleset:
    """Tables, chains and rules of `iptables-save` output; comments and counters skipped."""
    tables: dict[str, Table] = {}
    table: str | None = None
    policies: dict[str, str | None] = {}
    rules: dict[str, list[Rule]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table, policies, rules = line[1:].strip(), {}, {}
        elif table is None:
            raise RulesetFormatError(f"iptables-save line {number}: {line!r} outside a table")
        elif line == "COMMIT":
            chains = {
                name: Chain(name, policies.get(name), tuple(rules.get(name, ())))
                for name in [*policies, *(n for n in rules if n not in policies)]
            }
            tables[table] = Table(table, chains)
            table = None
        elif line.startswith(":"):
            parts = line[1:].split()
            policies[parts[0]] = parts[1] if len(parts) > 1 and parts[1] != "-" else None
        elif line.startswith(("-A ", "[")):
            rule = parse_rule(line, table)
            rules.setdefault(rule.chain, []).append(rule)
        else:
            raise RulesetFormatError(f"iptables-save line {number}: cannot read {line!r}")
    return NatRuleset(tables)


def parse_rule(line: str, table: str = "nat") -> Rule:
    """One `-A CHAIN ...` line (optionally with `[packets:bytes]` counters in front)."""
    text = line.strip()
    if text.startswith("["):  # iptables-save -c
        text = text.split("]", 1)[1].strip()
    try:
        tokens = shlex.split(text)
    except ValueError as exc:
        raise RulesetFormatError(f"cannot read rule {text!r}: {exc}") from None
    if len(tokens) < 2 or tokens[0] not in ("-A", "--append"):
        raise RulesetFormatError(f"not a rule: {text!r}")
    chain = tokens[1]
    criteria: list[Criterion] = []
    target: str | None = None
    goto = False
    target_options: list[tuple[str, str]] = []
    comment: str | None = None
    module: str | None = None
    negated = False
    i = 2
    while i < len(tokens):
        token = tokens[i]
        if token == "!":
            negated = True
            i += 1
            continue
        values, i = _option_values(tokens, i + 1)
        if token in ("-j", "--jump", "-g", "--goto"):
            target = values[0] if values else None
            goto = token in ("-g", "--goto")
            target_options = _target_options(tokens[i:])
            break
        if token in ("-m", "--match"):
            module = values[0] if values else None
        elif token in ("-c", "--set-counters"):
            pass
        elif token == "--comment":
            comment = " ".join(values)
        else:
            criteria.append(_criterion(token, values, negated, module))
        negated = False
    return Rule(table, chain, text, tuple(criteria), target, tuple(target_options), goto, comment)


def _option_values(tokens: list[str], i: int) -> tuple[list[str], int]:
    """The arguments of an option: tokens up to the next option or `!`."""
    values = []
    while i < len(tokens) and not tokens[i].startswith("-") and tokens[i] != "!":
        values.append(tokens[i])
        i += 1
    return values, i


def _target_options(tokens: list[str]) -> list[tuple[str, str]]:
    options = []
    i = 0
    while i < len(tokens):
        if tokens[i].startswith("--"):
            values, j = _option_values(tokens, i + 1)
            options.append((tokens[i], " ".join(values)))
            i = j
        else:
            i += 1
    return options


def _criterion(option: str, values: list[str], negated: bool, module: str | None) -> Criterion:
    text = " ".join(["!", option, *values] if negated else [option, *values])
    value = values[0] if values else ""
    try:
        if option in ("-s", "--source", "-d", "--destination"):
            kind = "source" if option in ("-s", "--source") else "destination"
            networks = tuple(ipaddress.ip_network(v, strict=False) for v in value.split(","))
            return Criterion(kind, negated, networks=networks, text=text)
        if option in ("-i", "--in-interface", "-o", "--out-interface"):
            kind = "in" if option in ("-i", "--in-interface") else "out"
            return Criterion(kind, negated, names=(value,), text=text)
        if option in ("-p", "--protocol"):
            return Criterion("proto", negated, proto=_protocol_number(value), text=text)
        if option in _PORT_OPTIONS:
            ports = tuple(_port_range(v) for v in value.split(","))
            return Criterion(_PORT_OPTIONS[option], negated, ports=ports, text=text)
        if option in ("--dst-type", "--src-type") and module == "addrtype":
            kind = "dst-type" if option == "--dst-type" else "src-type"
            return Criterion(kind, negated, names=tuple(value.upper().split(",")), text=text)
        if option in ("--ctstate", "--state"):
            return Criterion("ctstate", negated, names=tuple(value.upper().split(",")), text=text)
    except ValueError:
        pass
    return Criterion("unknown", negated, names=tuple(values), text=text)


_PORT_OPTIONS = {
    "--sport": "sport",
    "--source-port": "sport",
    "--dport": "dport",
    "--destination-port": "dport",
    "--sports": "sport",  # -m multiport
    "--source-ports": "sport",
    "--dports": "dport",
    "--destination-ports": "dport",
    "--ports": "port",  # either port
}


def _protocol_number(name: str) -> int:
    name = name.lower()
    if name.isdigit():
        return int(name)
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    try:
        return socket.getprotobyname(name)
    except OSError:
        raise ValueError(name) from None


def _port_range(text: str) -> PortRange:
    low, colon, high = text.partition(":")
    first = int(low) if low else 0
    last = int(high) if high else (65535 if colon else first)
    return first, last


# --- matching -----------------------------------------------------------------------------

#: True: matches; False: does not; None: flowtrace cannot tell.
Tristate = bool | None


@dataclass(frozen=True)
class PacketView:
    """The packet as a chain sees it: None where a field is unknown.

    An interface of None means there is none at that hook (no input interface for
    locally generated packets, no output interface before routing), which is how
    the kernel matches `-i`/`-o` there.  An empty `local_addresses` means unknown.
    """

    proto: int
    src: str | None = None
    dst: str | None = None
    sport: int | None = None
    dport: int | None = None
    in_iface: str | None = None
    out_iface: str | None = None
    ctstate: str = _NEW
    local_addresses: frozenset[str] = frozenset()


def rule_matches(rule: Rule, packet: PacketView) -> Tristate:
    """Whether every match of the rule fits the packet (None: some cannot be told)."""
    result: Tristate = True
    for criterion in rule.criteria:
        fits = _fits(criterion, packet)
        if fits is not None and criterion.negated:
            fits = not fits
        if fits is False:
            return False
        if fits is None:
            result = None
    return result


def _fits(c: Criterion, p: PacketView) -> Tristate:
    kind = c.kind
    if kind == "source" or kind == "destination":
        address = p.src if kind == "source" else p.dst
        if address is None:
            return None
        ip = ipaddress.ip_address(address)
        return any(ip in net for net in c.networks)
    if kind == "in" or kind == "out":
        return _iface_fits(c.names[0], p.in_iface if kind == "in" else p.out_iface)
    if kind == "proto":
        return c.proto == 0 or c.proto == p.proto
    if kind == "sport" or kind == "dport" or kind == "port":
        ports = {"sport": (p.sport,), "dport": (p.dport,), "port": (p.sport, p.dport)}[kind]
        known = [port for port in ports if port is not None]
        if len(known) < len(ports):
            return None
        return any(low <= port <= high for port in known for low, high in c.ports)
    if kind == "dst-type" or kind == "src-type":
        return _address_type_fits(c.names, p.dst if kind == "dst-type" else p.src, p)
    if kind == "ctstate":
        return p.ctstate in c.names if p.ctstate else None
    return None


def _iface_fits(pattern: str, iface: str | None) -> bool:
    name = iface or ""
    if pattern.endswith("+"):
        return name.startswith(pattern[:-1])
    return name == pattern


def _address_type_fits(types: tuple[str, ...], address: str | None, p: PacketView) -> Tristate:
    if address is None:
        return None
    ip = ipaddress.ip_address(address)
    answers: list[Tristate] = []
    for kind in types:
        if kind == "LOCAL":
            if ip.is_loopback or address in p.local_addresses:
                answers.append(True)
            else:
                answers.append(False if p.local_addresses else None)
        elif kind == "MULTICAST":
            answers.append(ip.is_multicast)
        elif kind == "UNICAST":
            answers.append(None if not ip.is_multicast else False)
        else:
            answers.append(None)
    if True in answers:
        return True
    return None if None in answers else False


# --- walking chains -----------------------------------------------------------------------

Outcome = Literal["found", "stop", "continue"]
Decide = Callable[[Rule, bool], Outcome]
_MAX_DEPTH = 32


def walk(table: Table, chain: str, packet: PacketView, decide: Decide) -> Rule | None:
    """Walk `chain` as the kernel would; return the rule `decide` calls "found".

    decide(rule, certain) is asked about every rule whose matches fit (certainly or
    maybe) and whose target is not a chain: "found" ends the walk with that rule,
    "stop" ends it with nothing (an ACCEPT), "continue" goes on.
    """
    status, rule = _walk(table, chain, packet, decide, 0)
    if status == "found":
        return rule
    return None


def _walk(
    table: Table, name: str, packet: PacketView, decide: Decide, depth: int
) -> tuple[str, Rule | None]:
    chain = table.chains.get(name)
    if chain is None or depth > _MAX_DEPTH:
        return "fallthrough", None
    for rule in chain.rules:
        fits = rule_matches(rule, packet)
        if fits is False:
            continue
        certain = fits is True
        target = rule.target
        if target is not None and target in table.chains:
            status, found = _walk(table, target, packet, decide, depth + 1)
            if status == "found" or (status == "stop" and certain):
                return status, found
            if rule.goto and certain:
                return "return", None
            continue
        if target == "RETURN":
            if certain:
                return "return", None
            continue
        outcome = decide(rule, certain)
        if outcome == "found":
            return "found", rule
        if outcome == "stop":
            return "stop", None
    return "fallthrough", None


# --- NAT attribution ----------------------------------------------------------------------


def attribute(
    ruleset: NatRuleset,
    event: NatEvent,
    proto: str | int,
    in_iface: str | None,
    out_iface: str | None,
    local_addresses: Iterable[str] = frozenset(),
    *,
    peer: Address | None = None,
) -> str | None:
    """The text of the nat rule that made `event`, or None if none explains it.

    in_iface/out_iface: the packet's interfaces in the namespace that did the NAT
    (None: it has none there: locally generated, or not routed yet).  For DNAT the
    chain is PREROUTING, or OUTPUT when in_iface is None; for SNAT it is POSTROUTING,
    or INPUT when out_iface is None.  `local_addresses` are the namespace's own
    addresses (for MASQUERADE, REDIRECT and --dst-type LOCAL; empty: unknown).
    `peer` is the other end of the packet before the rewrite (the source for DNAT,
    the destination for SNAT), for rules that match on it.
    """
    number = proto if isinstance(proto, int) else _protocol_number_or_zero(proto)
    local = frozenset(local_addresses)
    before = event.before
    if event.kind == "DNAT":
        chain = "PREROUTING" if in_iface is not None else "OUTPUT"
        packet = PacketView(
            number,
            peer.ip if peer else None,
            before.ip,
            peer.port if peer else None,
            before.port,
            in_iface,
            out_iface if chain == "OUTPUT" else None,
            _NEW,
            local,
        )
    else:
        chain = "POSTROUTING" if out_iface is not None else "INPUT"
        packet = PacketView(
            number,
            before.ip,
            peer.ip if peer else None,
            before.port,
            peer.port if peer else None,
            in_iface if chain == "INPUT" else None,
            out_iface,
            _NEW,
            local,
        )

    def decide(rule: Rule, certain: bool) -> Outcome:
        if rule.target in _NAT_TARGETS:
            return "found" if explains(rule, event, local) else "continue"
        if rule.target == "ACCEPT" and certain:
            return "stop"
        return "continue"

    found = walk(ruleset.nat, chain, packet, decide)
    return found.text if found else None


def explains(rule: Rule, event: NatEvent, local_addresses: frozenset[str] = frozenset()) -> bool:
    """Whether the rule's target could have turned event.before into event.after."""
    target = rule.target
    before, after = event.before, event.after
    if target == "DNAT" and event.kind == "DNAT":
        spec = rule.option("--to-destination")
        return spec is not None and _within(spec, before, after, keep_port=True)
    if target == "SNAT" and event.kind == "SNAT":
        spec = rule.option("--to-source")
        return spec is not None and _within(spec, before, after, keep_port=False)
    if target == "MASQUERADE" and event.kind == "SNAT":
        if local_addresses and after.ip not in local_addresses:
            return False
        return _port_within(rule.option("--to-ports"), before, after, keep_port=False)
    if target == "REDIRECT" and event.kind == "DNAT":
        if local_addresses and after.ip not in local_addresses:
            return False
        return _port_within(rule.option("--to-ports"), before, after, keep_port=True)
    if target == "NETMAP":
        mapped = rule.option("--to")
        if mapped is None or (rule.chain == "POSTROUTING") != (event.kind == "SNAT"):
            return False
        try:
            return ipaddress.ip_address(after.ip) in ipaddress.ip_network(mapped, strict=False)
        except ValueError:
            return False
    return False


def _within(spec: str, before: Address, after: Address, keep_port: bool) -> bool:
    """Whether `after` fits a --to-destination/--to-source spec: ip[-ip][:port[-port]]."""
    for one in spec.split():
        addresses, ports = _split_nat_spec(one)
        if addresses and not _ip_in_range(after.ip, addresses):
            continue
        if not addresses and after.ip != before.ip:
            continue
        if _port_within(ports, before, after, keep_port):
            return True
    return False


def _split_nat_spec(spec: str) -> tuple[str, str | None]:
    if spec.startswith("["):  # [2001:db8::1]:80
        host, _, rest = spec[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") else None
    if spec.count(":") > 1:  # a bare IPv6 address
        return spec, None
    host, sep, ports = spec.partition(":")
    return host, ports if sep else None


def _ip_in_range(ip: str, spec: str) -> bool:
    low, _, high = spec.partition("-")
    try:
        value = ipaddress.ip_address(ip)
        first = ipaddress.ip_address(low)
        last = ipaddress.ip_address(high) if high else first
    except ValueError:
        return False
    return value.version == first.version and first <= value <= last  # type: ignore[operator]


def _port_within(spec: str | None, before: Address, after: Address, keep_port: bool) -> bool:
    """Ports: in the rule's range if it names one; else unchanged (DNAT) or anything (SNAT)."""
    if not spec:
        return not keep_port or after.port == before.port
    if after.port is None:
        return False
    low, _, high = spec.partition("-")
    try:
        return int(low) <= after.port <= int(high or low)
    except ValueError:
        return False


def _protocol_number_or_zero(name: str) -> int:
    try:
        return _protocol_number(name)
    except ValueError:
        return 0


# --- drop attribution ---------------------------------------------------------------------


def find_drop_rule(
    ruleset: NatRuleset,
    proto: str | int,
    src: str,
    dst: str,
    sport: int | None = None,
    dport: int | None = None,
    in_iface: str | None = None,
    out_iface: str | None = None,
    local_addresses: Iterable[str] = frozenset(),
    ctstate: str = _NEW,
) -> str | None:
    """The filter rule (or chain policy) that dropped a packet that vanished in a namespace.

    The chain is FORWARD when the packet has both interfaces there, INPUT when it
    has no output interface (delivered locally), OUTPUT when it has no input one.
    Since the packet is known to be gone, an ACCEPT that only maybe matches is
    passed over and a DROP or REJECT that maybe matches is the answer.  A chain
    policy is returned as `-P FORWARD DROP`.
    """
    if in_iface is not None and out_iface is not None:
        chain = "FORWARD"
    elif out_iface is None:
        chain = "INPUT"
    else:
        chain = "OUTPUT"
    number = proto if isinstance(proto, int) else _protocol_number_or_zero(proto)
    packet = PacketView(
        number, src, dst, sport, dport, in_iface, out_iface, ctstate, frozenset(local_addresses)
    )

    def decide(rule: Rule, certain: bool) -> Outcome:
        if rule.target in _DROP_TARGETS:
            return "found"
        if rule.target == "ACCEPT" and certain:
            return "stop"
        return "continue"

    table = ruleset.filter
    status, rule = _walk(table, chain, packet, decide, 0)
    if status == "found" and rule is not None:
        return rule.text
    builtin = table.chains.get(chain)
    if status in ("fallthrough", "return") and builtin and builtin.policy == "DROP":
        return f"-P {chain} DROP"
    return None


# --- reading a namespace's rules ----------------------------------------------------------


def read_ruleset(netns_path: str, ipv6: bool = False) -> NatRuleset:
    """The iptables rules of the namespace at `netns_path` (iptables-save run inside it)."""
    from flowtrace.endpoints.netns import run_in_netns

    program = "ip6tables-save" if ipv6 else "iptables-save"
    path = shutil.which(program)
    if path is None:
        raise MissingToolError(f"{program} is not installed (Debian: apt-get install iptables)")

    def run() -> subprocess.CompletedProcess[str]:
        # A child forked from this thread starts in the namespace the thread entered.
        return subprocess.run([path], capture_output=True, text=True, timeout=30, check=False)

    done = run_in_netns(netns_path, run)
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["failed"])[-1]
        if "denied" in message.lower() or "must be root" in message.lower():
            raise NotRootError(f"{program}: {message}: run flowtrace as root")
        raise FlowtraceError(f"{program} in {netns_path}: {message}")
    return parse_iptables_save(done.stdout)

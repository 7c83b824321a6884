"""The kernel's own word on a probe: nftables tracing, built and read (pure).

For `--rules kernel` flowtrace adds, in each namespace on the path, a table of its own
(`table inet flowtrace-trace-<pid>`) whose base chains run before every other chain on
their hook and `meta nftrace set 1` only for the probe's packets, matched by the probe's
mark (the ICMP/UDP payload's first 4 bytes, the TCP initial sequence numbers, a DNS
query's socket port) and for ICMP errors quoting them.  The kernel then reports every
rule and chain policy those packets meet (NFNLGRP_NFTRACE), which `nft monitor trace`
prints, one event a line; iptables-nft rules are among them, since they are nftables
rules.

Besides the two chains that set the trace flag (prerouting and output), the table has an
empty chain on input, forward and postrouting: its "policy accept" event is the kernel
saying the packet reached that hook in that namespace, even where no other table hooks
there.  Every hook's events therefore start with flowtrace's own chain, which is how the
events are cut into hook visits.

This module writes the table (as `nft -i` commands) and turns the printed events into
`HookVisit`s; it opens no socket and runs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

#: The tables flowtrace makes are named TABLE_PREFIX + the pid of the flowtrace process.
TABLE_PREFIX = "flowtrace-trace-"
#: Hooks of the ip/inet families, in the order a forwarded packet meets them.
HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
#: Where flowtrace's chains run when nothing runs earlier: before raw (-300), conntrack
#: (-200), mangle, nat and filter.
DEFAULT_PRIORITY = -350
#: ICMP errors that quote the packet they are about.
_ICMP_ERRORS = "icmp type { destination-unreachable, time-exceeded, parameter-problem }"
#: Bit offsets from the ICMP header of an error to fields of the packet it quotes, whose
#: IPv4 header (20 bytes: flowtrace's probes carry no options) starts 8 bytes in.
_QUOTED_PAYLOAD = (8 + 20 + 8) * 8  # an ICMP echo's or UDP datagram's first payload bytes
_QUOTED_TCP_SEQ = (8 + 20 + 4) * 8
_QUOTED_UDP_SPORT = (8 + 20) * 8


def table_name(pid: int) -> str:
    return f"{TABLE_PREFIX}{pid}"


def is_flowtraces(table: str) -> bool:
    """A table some flowtrace run made (this one's or another's): never shown."""
    return table.startswith(TABLE_PREFIX)


@dataclass(frozen=True)
class TraceMatch:
    """Which packets get the trace flag: the probes, their answers, ICMP errors about them."""

    kind: str  # icmp, tcp, udp, or socket (a UDP socket's packets: a DNS query)
    mark: int = 0
    #: TCP: the initial sequence number of each probe.
    isns: tuple[int, ...] = ()
    #: socket: the local port of the querying socket.
    port: int | None = None

    @classmethod
    def for_probes(cls, kind: str, mark: int, isns: Iterable[int] = ()) -> TraceMatch:
        return cls(kind, mark, tuple(isns) if kind == "tcp" else ())

    @classmethod
    def for_socket(cls, port: int) -> TraceMatch:
        return cls("socket", port=port)

    def rules(self) -> list[str]:
        """The matches (nft syntax) of the rules that set the trace flag."""
        if self.kind == "socket":
            return [
                f"meta l4proto udp udp sport {self.port}",
                f"meta l4proto udp udp dport {self.port}",
                f"meta l4proto icmp {_ICMP_ERRORS} @th,{_QUOTED_UDP_SPORT},16 {self.port}",
            ]
        if self.kind == "tcp":
            isns = sorted(set(self.isns))
            nexts = sorted({(isn + 1) & 0xFFFFFFFF for isn in isns})
            return [
                f"meta l4proto tcp tcp sequence {_nft_set(isns + nexts)}",
                f"meta l4proto tcp tcp ackseq {_nft_set(nexts)}",
                f"meta l4proto icmp {_ICMP_ERRORS} @th,{_QUOTED_TCP_SEQ},32 {_nft_set(isns)}",
            ]
        proto = "icmp" if self.kind == "icmp" else "udp"
        return [
            f"meta l4proto {proto} @th,64,32 {self.mark:#x}",
            f"meta l4proto icmp {_ICMP_ERRORS} @th,{_QUOTED_PAYLOAD},32 {self.mark:#x}",
        ]


def _nft_set(values: Iterable[int]) -> str:
    return "{ " + ", ".join(str(v) for v in values) + " }"


def lowest_priorities(chains_json: Mapping[str, object]) -> dict[str, int]:
    """Per hook, the lowest priority of any ip/inet base chain in `nft -j list chains`."""
    lowest: dict[str, int] = {}
    items = chains_json.get("nftables", [])
    for item in items if isinstance(items, list) else []:
        chain = item.get("chain") if isinstance(item, dict) else None
        if not isinstance(chain, dict) or chain.get("family") not in ("ip", "inet"):
            continue
        hook, prio = chain.get("hook"), chain.get("prio")
        if (
            isinstance(hook, str)
            and isinstance(prio, int)
            and not is_flowtraces(str(chain.get("table", "")))
        ):
            lowest[hook] = min(prio, lowest.get(hook, prio))
    return lowest


def table_commands(name: str, match: TraceMatch, lowest: Mapping[str, int]) -> list[str]:
    """The nft commands that make the tracing table.

    Each chain's priority is below every other base chain on its hook (`lowest`, from
    lowest_priorities), and at most DEFAULT_PRIORITY.  No `flags owner` (the kernel
    would delete the table with its nft): nft 1.0.6 prints a table's single flag as
    garbage in JSON, which would spoil `nft -j list ruleset` for every other program
    while the table exists.
    """
    commands = [f"add table inet {name}"]
    for hook in HOOKS:
        prio = min(DEFAULT_PRIORITY, lowest[hook] - 10) if hook in lowest else DEFAULT_PRIORITY
        commands.append(
            f"add chain inet {name} {hook} "
            f"{{ type filter hook {hook} priority {prio}; policy accept; }}"
        )
    for hook in ("prerouting", "output"):
        for rule in match.rules():
            commands.append(f"add rule inet {name} {hook} {rule} meta nftrace set 1")
    return commands


# --- the events, as `nft -a monitor trace` prints them ---------------------------------------

_EVENT = re.compile(
    r"^trace id (?P<id>[0-9a-f]+) (?P<family>\S+) (?P<table>\S+) (?P<chain>\S+) (?P<rest>.*)$"
)
_VERDICT = re.compile(r"^(?P<text>.*) \(verdict (?P<verdict>[^)]*)\)\s*$")
_HANDLE = re.compile(r"\s*# handle (?P<handle>\d+)\s*$")
_UNKNOWN = re.compile(r"^unknown rule handle (?P<handle>\d+)$")
_COUNTER = re.compile(r"counter packets \d+ bytes \d+")
_DEVICE = re.compile(r'\b(?P<key>iif|oif) "(?P<value>[^"]*)"')
_FIELD = re.compile(
    r"\b(?P<proto>ip|tcp|udp|icmp) (?P<key>saddr|daddr|id|protocol|ttl|sport|dport|sequence"
    r"|ackseq|type|code|flags) (?:== )?(?P<value>\S+)"
)
_RAW = re.compile(r"@th,(?P<offset>\d+),(?P<bits>\d+) 0x(?P<hex>[0-9a-f]+)")


@dataclass(frozen=True)
class TraceEvent:
    """One line of `nft -a monitor trace`, with the time flowtrace read it."""

    time_ns: int
    trace_id: str
    family: str
    table: str
    chain: str
    kind: str  # packet, rule, policy, return, conntrack
    #: rule: the rule as nft prints it (counters left out); policy/return: the verdict.
    text: str = ""
    handle: int | None = None
    verdict: str = ""
    #: packet: iif, oif, "ip saddr", "tcp sequence", "@th,64" (raw transport bytes) ...
    fields: Mapping[str, str] = field(default_factory=dict)


def parse_event(line: str, time_ns: int = 0) -> TraceEvent | None:
    """One printed trace event, or None for a line that is not one."""
    m = _EVENT.match(line.strip())
    if m is None:
        return None
    head = (time_ns, m["id"], m["family"], m["table"], m["chain"])
    rest = m["rest"].strip()
    if rest.startswith("packet:"):
        return TraceEvent(*head, "packet", fields=packet_fields(rest[len("packet:") :]))
    if rest.startswith("conntrack:"):
        return TraceEvent(*head, "conntrack", text=rest[len("conntrack:") :].strip())
    if rest.startswith("policy "):
        return TraceEvent(*head, "policy", verdict=_first_words(rest[len("policy ") :]))
    if rest.startswith("verdict "):
        return TraceEvent(*head, "return", verdict=_first_words(rest[len("verdict ") :]))
    v = _VERDICT.match(rest)
    if v is None:
        return None
    text, verdict = v["text"].strip(), v["verdict"].strip()
    unknown = _UNKNOWN.match(text)
    if unknown is not None:
        return TraceEvent(*head, "rule", handle=int(unknown["handle"]), verdict=verdict)
    if not text.startswith("rule "):
        return None
    text = text[len("rule ") :]
    handle = None
    h = _HANDLE.search(text)
    if h is not None:
        handle = int(h["handle"])
        text = text[: h.start()]
    text = " ".join(_COUNTER.sub("counter", text).split())
    return TraceEvent(*head, "rule", text=text, handle=handle, verdict=verdict)


def _first_words(text: str) -> str:
    """A verdict without the `meta mark` nft may print after it."""
    return text.split(" meta mark")[0].strip()


def packet_fields(text: str) -> dict[str, str]:
    """The fields of a `packet:` line that identify and describe the packet."""
    fields = {m["key"]: m["value"] for m in _DEVICE.finditer(text)}
    for m in _FIELD.finditer(text):
        fields.setdefault(f"{m['proto']} {m['key']}", m["value"])
    for m in _RAW.finditer(text):
        bits = int(m["bits"])
        fields[f"@th,{m['offset']}"] = m["hex"].rjust(bits // 4, "0")
    return fields


# --- events into hook visits --------------------------------------------------------------------


@dataclass(frozen=True)
class RuleMet:
    """A rule (or a chain's policy) a traced packet met, and the verdict it gave."""

    family: str
    table: str
    chain: str
    #: None for a chain's policy.
    handle: int | None
    #: The rule as nft prints it (counters left out); for a policy, "policy accept".
    text: str
    #: accept, drop, jump CHAIN, goto CHAIN, return, continue, queue ...
    verdict: str
    #: The rule as iptables-save prints it, when the table is iptables-nft's.
    iptables: str | None = None

    @property
    def is_policy(self) -> bool:
        return self.handle is None

    @property
    def shown(self) -> str:
        """The rule as the system prints it, as flowtrace's reading of the rules names it
        too: its iptables-save line, else nft's table, chain, handle and rule text
        (`table ip docker-bridges chain raw-PREROUTING handle 40: ip daddr ... drop`)."""
        if self.iptables:
            return self.iptables
        chain = f"table {self.family} {self.table} chain {self.chain}"
        if self.is_policy:
            return f"{chain}: {self.text}"
        return f"{chain} handle {self.handle}: {self.text or '(a rule nft could not print)'}"


@dataclass(frozen=True)
class ChainPass:
    """One base chain's evaluation of a packet: the rules it met, in the kernel's order."""

    family: str
    table: str
    chain: str
    rules: tuple[RuleMet, ...]

    @property
    def verdict(self) -> str:
        """How the base chain let the packet go: accept, drop, queue, ... (or unknown)."""
        if not self.rules:
            return "unknown"
        last = self.rules[-1].verdict
        return last.split()[0] if last.split() else "unknown"


@dataclass(frozen=True)
class HookVisit:
    """A packet at one hook of one namespace: every other table's base chain that saw it."""

    netns: str
    hook: str
    time_ns: int
    fields: Mapping[str, str]
    chains: tuple[ChainPass, ...] = ()
    trace_id: str = ""
    #: Base chains of nat type on this hook that did not see the packet: conntrack
    #: rewrites a flow's later packets without them ("ip nat PREROUTING").
    skipped: tuple[str, ...] = ()

    @property
    def iif(self) -> str | None:
        return self.fields.get("iif")

    @property
    def oif(self) -> str | None:
        return self.fields.get("oif")

    @property
    def dropped_by(self) -> RuleMet | None:
        """The rule or policy that dropped the packet here (its way ends at this hook)."""
        for chain in self.chains:
            if chain.verdict == "drop":
                return chain.rules[-1]
        return None


@dataclass
class _Building:
    time_ns: int
    trace_id: str
    family: str
    table: str
    chain: str
    fields: Mapping[str, str]
    rules: list[RuleMet]


def hook_visits(netns: str, events: Iterable[TraceEvent]) -> list[HookVisit]:
    """One namespace's events (in the order nft printed them) as hook visits.

    Every base chain's evaluation starts with a `packet:` event (the kernel dumps the
    packet once per base chain).  flowtrace's own chains run first on each hook, so each
    of their evaluations opens a visit, and the other tables' evaluations that follow
    belong to the latest visit of the same packet (same trace id, else same IP ID).
    """
    builds: list[_Building] = []
    open_by_id: dict[str, _Building] = {}
    for ev in events:
        if ev.kind == "packet":
            b = _Building(ev.time_ns, ev.trace_id, ev.family, ev.table, ev.chain, ev.fields, [])
        elif ev.kind in ("rule", "policy", "return"):
            known = open_by_id.get(ev.trace_id)
            if known is not None and _same_table(known, ev):
                known.rules.append(_rule_of(ev))
                continue
            b = _Building(ev.time_ns, ev.trace_id, ev.family, ev.table, ev.chain, {}, [])
            b.rules.append(_rule_of(ev))
        else:
            continue
        open_by_id[ev.trace_id] = b
        builds.append(b)

    visits: list[HookVisit] = []
    for b in builds:
        if is_flowtraces(b.table):
            hook = b.chain if b.chain in HOOKS else "?"
            visits.append(HookVisit(netns, hook, b.time_ns, b.fields, trace_id=b.trace_id))
            continue
        passed = ChainPass(b.family, b.table, b.chain, tuple(b.rules))
        target = _visit_for(visits, b)
        if target is None:  # no chain of flowtrace's saw it first: a hook of its own
            hook = _hook_guess(b.chain, b.fields)
            visits.append(HookVisit(netns, hook, b.time_ns, b.fields, (passed,), b.trace_id))
        else:
            visit = visits[target]
            visits[target] = replace(visit, chains=(*visit.chains, passed))
    return visits


def _same_table(b: _Building, ev: TraceEvent) -> bool:
    """An event of a chain jumped to from the base chain being evaluated."""
    return (b.family, b.table) == (ev.family, ev.table)


def _rule_of(ev: TraceEvent) -> RuleMet:
    if ev.kind == "policy":
        return RuleMet(ev.family, ev.table, ev.chain, None, f"policy {ev.verdict}", ev.verdict)
    if ev.kind == "return":
        return RuleMet(ev.family, ev.table, ev.chain, None, f"end of chain: {ev.verdict}", "return")
    return RuleMet(ev.family, ev.table, ev.chain, ev.handle, ev.text, ev.verdict)


def _visit_for(visits: list[HookVisit], b: _Building) -> int | None:
    """The latest visit of the same packet a base chain's evaluation belongs to: by the
    kernel's trace id, else (the id can change from hook to hook) by the IP ID."""
    for i in range(len(visits) - 1, -1, -1):
        if visits[i].trace_id == b.trace_id:
            return i
    ip_id = b.fields.get("ip id")
    for i in range(len(visits) - 1, -1, -1):
        if ip_id is not None and visits[i].fields.get("ip id") == ip_id:
            return i
    return None


def _hook_guess(chain: str, fields: Mapping[str, str]) -> str:
    """The hook of a base chain flowtrace's own chains did not see first (their table
    was gone): its name when it is one (iptables' PREROUTING), else by its devices."""
    if chain.lower() in HOOKS:
        return chain.lower()
    if "iif" in fields and "oif" in fields:
        return "forward"
    return "prerouting/input" if "iif" in fields else "output/postrouting"


# --- describing a traced packet -------------------------------------------------------------------

_TCP_FLAG_BITS = ((0x02, "SYN"), (0x10, "ACK"), (0x04, "RST"), (0x01, "FIN"), (0x08, "PSH"))


def describe_packet(fields: Mapping[str, str]) -> str:
    """What a traced packet is, in the words the hop tables use: 'icmp echo request seq=0'."""
    icmp_type = fields.get("icmp type")
    if icmp_type is not None:
        words = icmp_type.replace("-", " ")
        if icmp_type in ("echo-request", "echo-reply"):
            return f"icmp {words} seq={fields.get('icmp sequence', '?')}"
        code = fields.get("icmp code")
        return f"icmp {words}" + (f" ({code.replace('-', ' ')})" if code else "")
    if "tcp flags" in fields:
        return f"tcp {tcp_flags_text(fields['tcp flags'])}"
    if "udp sport" in fields or "udp dport" in fields:
        return f"udp {fields.get('udp sport', '?')} -> {fields.get('udp dport', '?')}"
    return fields.get("ip protocol", "ip")


def tcp_flags_text(value: str) -> str:
    """nft's `syn`, `0x14` or `syn | ack` as the hop tables write flags: SYN, ACK+RST."""
    try:
        bits = int(value, 16) if value.startswith("0x") else None
    except ValueError:
        bits = None
    if bits is None:
        names = [n.strip().upper() for n in re.split(r"[|,]", value) if n.strip()]
        return "+".join(names) or value
    return "+".join(name for bit, name in _TCP_FLAG_BITS if bits & bit) or "no flags"


def quoted_ip_id(fields: Mapping[str, str]) -> int | None:
    """The IP ID of the packet an ICMP error quotes (bytes 4-5 of the quoted header)."""
    raw = fields.get("@th,64")
    if raw is None or len(raw) < 12 or fields.get("icmp type") in ("echo-request", "echo-reply"):
        return None
    return int(raw[8:12], 16)


def int_field(fields: Mapping[str, str], key: str) -> int | None:
    value = fields.get(key)
    if value is None:
        return None
    try:
        return int(value, 0)
    except ValueError:
        return None

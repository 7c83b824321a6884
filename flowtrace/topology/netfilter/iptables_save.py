"""The parser of `iptables-save` output: tables, chains and rules with their matches parsed.

Pure: it reads text (the recorded output of `iptables-save`, or `read.read_firewall`'s).
Marks are parsed (`-m mark`, `-m connmark`, the MARK and CONNMARK targets) because
engines steer NAT by them (netavark's 0x2000 masquerade mark): a probe's packet
carries mark 0 until a rule sets one, so those matches can be decided.
"""

from __future__ import annotations

import ipaddress

from flowtrace.topology.netfilter.rules import (
    ALL_BITS,
    IPTABLES_NFT,
    Chain,
    Criterion,
    MarkEffect,
    NatRuleset,
    PortRange,
    Rule,
    RulesetFormatError,
    Table,
    parse_mark,
    protocol_number,
)


def parse_iptables_save(text: str, source: str = IPTABLES_NFT, family: str = "ip") -> NatRuleset:
    """Tables, chains and rules of `iptables-save` output; comments and counters skipped.

    `source` says which backend printed it (iptables-nft or iptables-legacy), `family`
    whether it was iptables-save (ip) or ip6tables-save (ip6).
    """
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
            tables[table] = Table(table, chains, family, source)
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
    import shlex  # here, not above: only a trace that reads rules pays for it

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
    effects = _mark_effects(target, target_options) if target in ("MARK", "CONNMARK") else ()
    return Rule(
        table, chain, text, tuple(criteria), target, tuple(target_options), goto, comment, effects
    )


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
    if module not in _PLAIN_MODULES:
        text = f"-m {module} {text}"  # the module says what the match is about
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
            return Criterion("proto", negated, proto=protocol_number(value), text=text)
        if option in _PORT_OPTIONS:
            ports = tuple(_port_range(v) for v in value.split(","))
            return Criterion(_PORT_OPTIONS[option], negated, ports=ports, text=text)
        if option in ("--dst-type", "--src-type") and module == "addrtype":
            kind = "dst-type" if option == "--dst-type" else "src-type"
            return Criterion(kind, negated, names=tuple(value.upper().split(",")), text=text)
        if option in ("--ctstate", "--state"):
            return Criterion("ctstate", negated, names=tuple(value.upper().split(",")), text=text)
        if option == "--ctstatus":
            return Criterion("ctstatus", negated, names=tuple(value.upper().split(",")), text=text)
        if option == "--mark" and module in ("mark", "connmark"):
            kind = "mark" if module == "mark" else "ctmark"
            return Criterion(kind, negated, mark=parse_mark(value), text=text)
        if option in ("--icmp-type", "--icmpv6-type"):
            return Criterion("icmp-type", negated, names=(value.lower(),), text=text)
    except ValueError:
        pass
    return Criterion("unknown", negated, names=tuple(values), text=text)


#: Modules whose options say enough on their own (`--dport 80`, `--dst-type LOCAL`).
_PLAIN_MODULES = (None, "tcp", "udp", "sctp", "icmp", "icmp6", "multiport", "addrtype", "state")

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


def _port_range(text: str) -> PortRange:
    low, colon, high = text.partition(":")
    first = int(low) if low else 0
    last = int(high) if high else (65535 if colon else first)
    return first, last


def _mark_effects(target: str | None, options: list[tuple[str, str]]) -> tuple[MarkEffect, ...]:
    """What MARK or CONNMARK does to the packet's or the connection's mark."""
    what = "mark" if target == "MARK" else "ctmark"
    given = dict(options)
    try:
        if "--set-xmark" in given or "--set-mark" in given:
            value, mask = parse_mark(given.get("--set-xmark") or given["--set-mark"])
            keep = ~mask & ALL_BITS
            if "--set-xmark" in given:
                return (MarkEffect(what, what, keep=keep, flip=value),)
            return (MarkEffect(what, what, keep=keep, bits=value),)
        if "--and-mark" in given:
            return (MarkEffect(what, what, keep=int(given["--and-mark"], 0)),)
        if "--or-mark" in given:
            return (MarkEffect(what, what, bits=int(given["--or-mark"], 0)),)
        if "--xor-mark" in given:
            return (MarkEffect(what, what, flip=int(given["--xor-mark"], 0)),)
        full = all(int(given.get(m, "0xffffffff"), 0) == ALL_BITS for m in ("--nfmask", "--ctmask"))
        if "--save-mark" in given:
            return (MarkEffect("ctmark", "mark", exact=full),)
        if "--restore-mark" in given:
            return (MarkEffect("mark", "ctmark", exact=full),)
    except ValueError:
        pass
    return (MarkEffect(what, None, exact=False),)  # a form flowtrace does not follow

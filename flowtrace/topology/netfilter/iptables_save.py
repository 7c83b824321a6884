"""The parser of `iptables-save` output: tables, chains and rules with their matches parsed.

Pure: it reads text (the recorded output of `iptables-save`, or `read.read_ruleset`'s).
"""

from __future__ import annotations

import ipaddress
import shlex

from flowtrace.topology.netfilter.rules import (
    Chain,
    Criterion,
    NatRuleset,
    PortRange,
    Rule,
    RulesetFormatError,
    Table,
    protocol_number,
)


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
            return Criterion("proto", negated, proto=protocol_number(value), text=text)
        if option in _PORT_OPTIONS:
            ports = tuple(_port_range(v) for v in value.split(","))
            return Criterion(_PORT_OPTIONS[option], negated, ports=ports, text=text)
        if option in ("--dst-type", "--src-type") and module == "addrtype":
            kind = "dst-type" if option == "--dst-type" else "src-type"
            return Criterion(kind, negated, names=tuple(value.upper().split(",")), text=text)
        if option in ("--ctstate", "--state"):
            return Criterion("ctstate", negated, names=tuple(value.upper().split(",")), text=text)
        if option == "--mark" and module == "mark":
            return Criterion("mark", negated, mark=parse_mark(value), text=text)
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


def parse_mark(text: str) -> tuple[int, int]:
    """`0x2000/0x2000` -> (0x2000, 0x2000); a value alone has the mask 0xffffffff."""
    value, _, mask = text.partition("/")
    return int(value, 0), int(mask, 0) if mask else 0xFFFFFFFF


def _port_range(text: str) -> PortRange:
    low, colon, high = text.partition(":")
    first = int(low) if low else 0
    last = int(high) if high else (65535 if colon else first)
    return first, last

"""Native nftables tables read structurally: `nft -j list ruleset` into the rule model.

Each rule's expressions become the model's matches (addresses, interfaces, protocols,
ports, conntrack state, marks, `fib daddr type local`), mark statements, a verdict or
NAT statement, or a verdict map whose elements act as the rule's target; named sets
and maps are resolved from the same document.  An expression flowtrace does not
follow becomes an "unknown" match, so the rule only ever maybe matches.  The rule's
text is the line `nft -a -s list ruleset` prints for its handle (`rule_texts`).
Tables iptables-nft manages (ip/ip6 raw, mangle, nat, filter, security, which
iptables-save prints too) are left to the iptables-save parser: nft shows their
iptables matches only as opaque `xt` expressions.  Pure.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from flowtrace.topology.netfilter.rules import (
    ALL_BITS,
    NFTABLES,
    Chain,
    Criterion,
    IPNetwork,
    MapEntry,
    MarkEffect,
    Rule,
    RulesetFormatError,
    Table,
    protocol_number,
)
from flowtrace.topology.nftrace import is_flowtraces

_VERDICTS = {"accept": "ACCEPT", "drop": "DROP", "reject": "REJECT", "return": "RETURN",
             "continue": "CONTINUE", "queue": "QUEUE"}  # fmt: skip
_L4 = ("tcp", "udp", "sctp", "udplite", "dccp")
_HANDLE = re.compile(r"\s*# handle (\d+)\s*$")
_OPENS = re.compile(r"\{(\s*# handle \d+)?\s*$")


def parse_nft_json(
    text: str,
    texts: Mapping[tuple[str, str, str, int], str] | None = None,
    skip: Iterable[tuple[str, str]] = (),
) -> tuple[list[Table], list[str]]:
    """The native tables of a `nft -j list ruleset` document, and notes on what was odd.

    `texts` maps (family, table, chain, handle) to the rule's printed text; `skip`
    names (family, table) pairs that belong to another reader (iptables-nft's).  The
    tracing tables of `--rules kernel` runs are left out: they only mark packets.
    """
    try:
        doc = json.loads(text) if text.strip() else {"nftables": []}
    except json.JSONDecodeError as exc:
        raise RulesetFormatError(f"nft -j printed what is not JSON: {exc}") from None
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise RulesetFormatError("nft -j printed no `nftables` list")
    skipped = set(skip)
    order: list[tuple[str, str]] = []
    chains: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    rules: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    sets: dict[tuple[str, str, str], dict[str, Any]] = {}
    for item in items:
        if not isinstance(item, dict) or len(item) != 1:
            continue
        ((kind, body),) = item.items()
        if not isinstance(body, dict):
            continue
        key = (str(body.get("family", "")), str(body.get("table", body.get("name", ""))))
        if kind == "table":
            key = (str(body.get("family", "")), str(body.get("name", "")))
            if is_flowtraces(key[1]):  # a --rules kernel run's tracing table: no verdicts
                skipped.add(key)
            if key not in skipped and key not in order:
                order.append(key)
        elif key in skipped:
            continue
        elif kind == "chain":
            chains.setdefault(key, {})[str(body.get("name"))] = body
        elif kind == "rule":
            rules.setdefault((*key, str(body.get("chain"))), []).append(body)
        elif kind in ("set", "map"):
            sets[(*key, str(body.get("name")))] = body
    tables, notes = [], []
    for family, name in order:
        if family not in ("ip", "ip6", "inet"):
            if any(rules.get((family, name, c)) for c in chains.get((family, name), {})):
                notes.append(
                    f"table {family} {name} is not modelled: flowtrace follows the ip, ip6 "
                    "and inet families (the ones routed packets meet)"
                )
            continue
        reader = _TableReader(family, name, sets, texts or {})
        built = {}
        for chain_name, body in chains.get((family, name), {}).items():
            parsed = tuple(reader.rule(r) for r in rules.get((family, name, chain_name), []))
            built[chain_name] = _chain(body, parsed)
        tables.append(Table(name, built, family, NFTABLES))
        notes.extend(reader.notes)
    return tables, notes


def rule_texts(listing: str) -> dict[tuple[str, str, str, int], str]:
    """(family, table, chain, handle) -> the rule as `nft -a -s list ruleset` prints it."""
    found: dict[tuple[str, str, str, int], str] = {}
    family = table = chain = ""
    for raw in listing.splitlines():
        line = raw.strip()
        if _OPENS.search(line):  # a table, chain, set, map... header: `chain X { # handle 3`
            parts = line.split()
            if parts[0] == "table" and len(parts) >= 3:
                family, table, chain = parts[1], parts[2], ""
            else:
                chain = parts[1] if parts[0] == "chain" and len(parts) > 1 else ""
            continue
        if line == "}":
            chain = ""
            continue
        match = _HANDLE.search(line)
        if match and chain:
            found[(family, table, chain, int(match[1]))] = line[: match.start()].rstrip()
    return found


def _chain(body: dict[str, Any], rules: tuple[Rule, ...]) -> Chain:
    hook = body.get("hook")
    policy = body.get("policy")
    prio = body.get("prio")
    return Chain(
        str(body.get("name")),
        str(policy).upper() if hook and policy else ("ACCEPT" if hook else None),
        rules,
        str(hook) if hook else None,
        int(prio) if isinstance(prio, int) else (0 if hook else None),
        str(body.get("type", "filter")) if hook else None,
    )


class _TableReader:
    """Turns one table's rules into the model, with its named sets at hand."""

    def __init__(
        self,
        family: str,
        table: str,
        sets: Mapping[tuple[str, str, str], dict[str, Any]],
        texts: Mapping[tuple[str, str, str, int], str],
    ) -> None:
        self.family, self.table = family, table
        self.sets, self.texts = sets, texts
        self.notes: list[str] = []

    def rule(self, body: dict[str, Any]) -> Rule:
        chain = str(body.get("chain"))
        handle = body.get("handle") if isinstance(body.get("handle"), int) else None
        comment = body.get("comment") if isinstance(body.get("comment"), str) else None
        criteria: list[Criterion] = []
        effects: list[MarkEffect] = []
        target: str | None = None
        goto = False
        options: list[tuple[str, str]] = []
        vmap: tuple[MapEntry, ...] = ()
        exprs = body.get("expr")
        for expr in exprs if isinstance(exprs, list) else []:
            if not isinstance(expr, dict) or len(expr) != 1:
                continue
            ((kind, value),) = expr.items()
            if kind == "match" and isinstance(value, dict):
                criteria.extend(self.match(value))
            elif kind in _VERDICTS and target is None:
                target = _VERDICTS[kind]
            elif kind in ("jump", "goto") and isinstance(value, dict):
                target, goto = str(value.get("target")), kind == "goto"
            elif kind in ("masquerade", "snat", "dnat", "redirect"):
                target, options = _nat(kind, value)
            elif kind == "mangle" and isinstance(value, dict):
                effects.append(_mark_effect(value))
            elif kind == "vmap" and isinstance(value, dict):
                vmap = self.vmap(value)
            elif kind == "xt" and isinstance(value, dict) and value.get("type") == "target":
                target = _xt_target(value, criteria)
            elif kind in ("limit", "quota", "xt", "meter", "synproxy", "tproxy", "fwd", "dup"):
                criteria.append(Criterion("unknown", text=_short(kind, value)))
            # counter, log, notrack, ct helper/zone, set updates: no effect on the walk
        key = (self.family, self.table, chain, handle if handle is not None else -1)
        text = self.texts.get(key) or _fallback_text(criteria, target, comment)
        return Rule(
            self.table, chain, text, tuple(criteria), target, tuple(options), goto, comment,
            tuple(effects), vmap, self.family, handle,
        )  # fmt: skip

    def match(self, m: dict[str, Any]) -> list[Criterion]:
        op, left, right = m.get("op", "=="), m.get("left"), m.get("right")
        negated = op == "!="
        text = f"{_expr_text(left)} {'!= ' if negated else ''}{_expr_text(right)}".strip()
        try:
            found = self._match(left, right, negated, op, text)
        except (ValueError, TypeError, KeyError):
            found = None
        return found if found is not None else [Criterion("unknown", text=text)]

    def _match(
        self, left: Any, right: Any, negated: bool, op: str, text: str
    ) -> list[Criterion] | None:
        if op not in ("==", "!=", "in"):
            return None
        values = self.values(right)
        if isinstance(left, dict) and "payload" in left:
            proto, field = left["payload"].get("protocol"), left["payload"].get("field")
            # `ip ...` matches only IPv4 packets and `ip6 ...` only IPv6 ones (in an inet
            # table nft adds that test itself): the family first, then the field.
            family = Criterion("family", names=("4" if proto == "ip" else "6",), text=proto)
            if proto in ("ip", "ip6") and field in ("saddr", "daddr"):
                kind = "source" if field == "saddr" else "destination"
                networks = tuple(n for v in values for n in _networks(v))
                return [family, Criterion(kind, negated, networks=networks, text=text)]
            if (proto, field) in (("ip", "protocol"), ("ip6", "nexthdr")):
                return [family, _protos(values, negated, text)]
            if field in ("sport", "dport") and (proto in _L4 or proto == "th"):
                ports = tuple(_port_range(v) for v in values)
                port = Criterion(field, negated, ports=ports, text=text)
                if proto == "th":
                    return [port]
                return [Criterion("proto", proto=protocol_number(proto), text=proto), port]
            if proto in ("icmp", "icmpv6") and field == "type":
                names = tuple(str(v) for v in values)
                number = 1 if proto == "icmp" else 58
                return [Criterion("proto", proto=number, text=proto),
                        Criterion("icmp-type", negated, names=names, text=text)]  # fmt: skip
            return None
        if isinstance(left, dict) and "meta" in left:
            key = left["meta"].get("key")
            if key in ("iifname", "oifname", "iif", "oif"):
                kind = "in" if key.startswith("i") else "out"
                names = tuple(_ifname(str(v)) for v in values)
                return [Criterion(kind, negated, names=names, text=text)]
            if key == "l4proto":
                return [_protos(values, negated, text)]
            if key in ("nfproto", "protocol"):
                names = tuple("4" if str(v) in ("ipv4", "ip") else "6" for v in values)
                return [Criterion("family", negated, names=names, text=text)]
            if key == "mark":
                return [_mark_match("mark", ALL_BITS, values, negated, text)]
            return None
        if isinstance(left, dict) and "ct" in left:
            key = left["ct"].get("key")
            if key == "state":
                names = tuple(str(v).upper() for v in values)
                return [Criterion("ctstate", negated, names=names, text=text)]
            if key == "status":
                names = tuple(str(v).upper() for v in values)
                return [Criterion("ctstatus", negated, names=names, text=text)]
            if key == "mark":
                return [_mark_match("ctmark", ALL_BITS, values, negated, text)]
            return None
        if isinstance(left, dict) and "&" in left:
            inner, mask = left["&"]
            if isinstance(inner, dict) and isinstance(mask, int):
                what = "mark" if inner.get("meta", {}).get("key") == "mark" else None
                if what is None and inner.get("ct", {}).get("key") == "mark":
                    what = "ctmark"
                if what is not None:
                    return [_mark_match(what, mask, values, negated, text)]
            return None
        if isinstance(left, dict) and "fib" in left:
            fib = left["fib"]
            flags = fib.get("flags")
            flags = [flags] if isinstance(flags, str) else list(flags or [])
            if fib.get("result") == "type" and flags in (["daddr"], ["saddr"]):
                kind = "dst-type" if flags == ["daddr"] else "src-type"
                names = tuple(str(v).upper() for v in values)
                return [Criterion(kind, negated, names=names, text=text)]
        return None

    def values(self, right: Any) -> list[Any]:
        """The values a match compares with: one, an anonymous set, or a named set's."""
        if isinstance(right, str) and right.startswith("@"):
            body = self.sets.get((self.family, self.table, right[1:]))
            if body is None:
                raise KeyError(right)
            return [_element(e) for e in body.get("elem", [])]
        if isinstance(right, dict) and "set" in right:
            return [_element(e) for e in right["set"]]
        if isinstance(right, list):
            return right
        return [right]

    def vmap(self, value: dict[str, Any]) -> tuple[MapEntry, ...]:
        key, data = value.get("key"), value.get("data")
        if isinstance(data, str) and data.startswith("@"):
            body = self.sets.get((self.family, self.table, data[1:]))
            pairs = body.get("elem", []) if body else []
        elif isinstance(data, dict) and "set" in data:
            pairs = data["set"]
        else:
            pairs = []
        entries = []
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[1], dict):
                continue
            element, verdict = _element(pair[0]), pair[1]
            ((word, detail),) = verdict.items()
            if word in ("jump", "goto") and isinstance(detail, dict):
                target, goto = str(detail.get("target")), word == "goto"
            elif word in _VERDICTS:
                target, goto = _VERDICTS[word], False
            else:
                continue
            text = f"{_expr_text(key)} {_expr_text(element)}"
            found = self.match({"op": "==", "left": key, "right": element})
            match = found[-1] if len(found) == 1 else Criterion("unknown", text=text)
            entries.append(MapEntry(match, target, goto))
        return tuple(entries)


def _nat(kind: str, value: Any) -> tuple[str, list[tuple[str, str]]]:
    spec = value if isinstance(value, dict) else {}
    addr, port = spec.get("addr"), spec.get("port")
    if kind == "masquerade":
        return "MASQUERADE", ([("--to-ports", str(port))] if isinstance(port, int) else [])
    if kind == "redirect":
        return "REDIRECT", ([("--to-ports", str(port))] if isinstance(port, int) else [])
    option = "--to-destination" if kind == "dnat" else "--to-source"
    target = "DNAT" if kind == "dnat" else "SNAT"
    if not isinstance(addr, str):
        return target, []  # a map or an expression: the new address cannot be told
    host = f"[{addr}]" if ":" in addr and isinstance(port, int) else addr
    return target, [(option, f"{host}:{port}" if isinstance(port, int) else host)]


def _xt_target(value: dict[str, Any], criteria: list[Criterion]) -> str | None:
    """An iptables target inside an nftables rule (iptables-nft's, read without
    iptables-save): its name is known, its options are not (nft shows none)."""
    name = str(value.get("name", ""))
    if name in ("MASQUERADE", "ACCEPT", "DROP", "REJECT", "RETURN"):
        return name
    if name in ("DNAT", "SNAT", "REDIRECT", "NETMAP", "MARK", "CONNMARK"):
        # where it sends the packet, or what mark it sets, cannot be told
        criteria.append(Criterion("unknown", text=f'xt target "{name}"'))
        return name if name not in ("MARK", "CONNMARK") else None
    return None


def _mark_effect(value: dict[str, Any]) -> MarkEffect:
    key = value.get("key", {})
    target = "ctmark" if isinstance(key, dict) and "ct" in key else "mark"
    new = value.get("value")
    if isinstance(new, int):
        return MarkEffect(target, None, keep=0, bits=new)
    if isinstance(new, dict) and len(new) == 1:
        ((op, args),) = new.items()
        if op in ("|", "&", "^") and isinstance(args, list) and len(args) == 2:
            base, number = args
            source = _mark_source(base)
            if source is not None and isinstance(number, int):
                if op == "|":
                    return MarkEffect(target, source, bits=number)
                if op == "&":
                    return MarkEffect(target, source, keep=number)
                return MarkEffect(target, source, flip=number)
        source = _mark_source(new)
        if source is not None:
            return MarkEffect(target, source)
    return MarkEffect(target, None, exact=False)


def _mark_source(expr: Any) -> str | None:
    if isinstance(expr, dict) and expr.get("meta", {}).get("key") == "mark":
        return "mark"
    if isinstance(expr, dict) and expr.get("ct", {}).get("key") == "mark":
        return "ctmark"
    return None


def _mark_match(what: str, mask: int, values: list[Any], negated: bool, text: str) -> Criterion:
    if len(values) != 1 or not isinstance(values[0], int):
        raise ValueError(text)
    return Criterion(what, negated, mark=(values[0] & mask, mask), text=text)


def _protos(values: list[Any], negated: bool, text: str) -> Criterion:
    numbers = tuple(v if isinstance(v, int) else protocol_number(str(v)) for v in values)
    return Criterion("proto", negated, protos=numbers, text=text)


def _element(e: Any) -> Any:
    if isinstance(e, dict) and "elem" in e and isinstance(e["elem"], dict):
        return e["elem"].get("val")
    return e


def _networks(value: Any) -> list[IPNetwork]:
    if isinstance(value, str):
        return [ipaddress.ip_network(value, strict=False)]
    if isinstance(value, dict) and "prefix" in value:
        prefix = value["prefix"]
        return [ipaddress.ip_network(f"{prefix['addr']}/{prefix['len']}", strict=False)]
    if isinstance(value, dict) and "range" in value:
        low, high = (ipaddress.ip_address(v) for v in value["range"])
        return list(ipaddress.summarize_address_range(low, high))
    raise ValueError(value)


def _port_range(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict) and "range" in value:
        low, high = value["range"]
        return int(low), int(high)
    raise ValueError(value)


def _ifname(name: str) -> str:
    """nft's `eth*` wildcard as the model writes it (iptables' `eth+`)."""
    return name[:-1] + "+" if name.endswith("*") and not name.endswith("\\*") else name


def _expr_text(expr: Any) -> str:
    """A short rendering of an expression, for words about a match (not nft's own)."""
    if isinstance(expr, dict) and len(expr) == 1:
        ((kind, value),) = expr.items()
        if kind == "payload" and isinstance(value, dict):
            return f"{value.get('protocol')} {value.get('field')}"
        if kind in ("meta", "ct") and isinstance(value, dict):
            return f"{kind} {value.get('key')}"
        if kind == "fib" and isinstance(value, dict):
            flags = value.get("flags")
            flags = [flags] if isinstance(flags, str) else list(flags or [])
            return f"fib {' . '.join(flags)} {value.get('result')}"
        if kind == "prefix" and isinstance(value, dict):
            return f"{value.get('addr')}/{value.get('len')}"
        if kind == "range" and isinstance(value, list):
            return "-".join(str(v) for v in value)
        if kind == "set" and isinstance(value, list):
            return "{ " + ", ".join(_expr_text(_element(v)) for v in value) + " }"
        if kind in ("&", "|", "^") and isinstance(value, list):
            return f" {kind} ".join(hex(v) if isinstance(v, int) else _expr_text(v) for v in value)
        return kind
    if isinstance(expr, list):
        return ",".join(_expr_text(v) for v in expr)
    return json.dumps(expr) if isinstance(expr, str) and " " in expr else str(expr)


def _short(kind: str, value: Any) -> str:
    if kind == "xt" and isinstance(value, dict):
        return f'xt {value.get("type", "match")} "{value.get("name", "?")}"'
    return kind


def _fallback_text(criteria: list[Criterion], target: str | None, comment: str | None) -> str:
    words = [c.text for c in criteria if c.text]
    if target:
        words.append(target.lower())
    if comment:
        words.append(f'comment "{comment}"')
    return " ".join(words) or "(rule text not read)"

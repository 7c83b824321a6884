"""`flowtrace rules` for a person: the document (topology.rulesdoc) as text, hook by hook.

For each namespace on the way: how the packet crosses it, then each hook with the
packet as it arrives there, each base chain in priority order with the rules whose
matches fit (indented under the jump that reached them, `maybe` where a match could
not be evaluated) and how the chain ended, and the rewrites.  What iptables -vnL or
nft list ruleset made people read by hand, for one packet.
"""

from __future__ import annotations

from typing import Any

_WAYS = {"forward": "forwarded", "input": "delivered", "output": "sent"}


def render_rules(doc: dict[str, Any]) -> list[str]:
    """The lines `flowtrace rules` prints."""
    dst = doc["dst_ip"] + (f":{doc['dst_port']}" if doc.get("dst_port") is not None else "")
    lines = [f"flowtrace rules {doc['src']} -> {doc['dst']} ({dst}), {doc['kind']}"]
    if doc["path"]:
        lines.append("path: " + " -> ".join(doc["path"]))
    lines.append("")
    lines += _direction("request", doc["request"])
    lines.append("")
    if doc["reply"] is None:
        lines.append("reply: none (the request does not arrive where it is answered)")
    else:
        lines += _direction("reply", doc["reply"])
    if doc["notes"]:
        lines.append("")
        lines += [f"note: {note}" for note in doc["notes"]]
    return lines


def _direction(name: str, direction: dict[str, Any]) -> list[str]:
    lines = [f"{name}: {_packet(direction['packet'])}"]
    for ns in direction["namespaces"]:
        lines += _namespace(ns)
    outcome = direction["outcome"]
    lines.append(f"=> {name} {outcome['text']}")
    if outcome.get("explanation"):
        lines.append(f"   {outcome['explanation']}")
    return lines


def _namespace(ns: dict[str, Any]) -> list[str]:
    way = _WAYS.get(ns["way"], ns["way"])
    where = []
    if ns["in_iface"]:
        where.append(f"in {ns['in_iface']}")
    if ns["out_iface"]:
        where.append(f"out {ns['out_iface']}")
    backends = ", ".join(ns["backends"]) or "none"
    head = f"  {ns['netns']}: {way}" + (f" ({', '.join(where)})" if where else "")
    lines = [f"{head}; rules from: {backends}"]
    lines += [f"    note: {note}" for note in ns["notes"]]
    chains = [c for h in ns["hooks"] for c in h["chains"]]
    if not chains:
        hooks = ", ".join(h["hook"] for h in ns["hooks"])
        lines.append(f"    {hooks}: no chains, accepted")
        return lines
    for hook in ns["hooks"]:
        lines += _hook(hook)
    return lines


def _hook(hook: dict[str, Any]) -> list[str]:
    lines = [f"    {hook['hook']}: {_packet(hook['packet'], short=True)}"]
    if not hook["chains"]:
        lines.append("      no chains")
    for chain in hook["chains"]:
        lines += _chain(chain)
    for rewrite in hook["rewrites"]:
        before, after = rewrite["before"], rewrite["after"]
        by = "conntrack (the reply's side of the request's binding)"
        if rewrite["by"] == "rule":
            by = f"`{rewrite['rule']}`"
        lines.append(f"      {rewrite['kind']} {_address(before)} -> {_address(after)} by {by}")
        if rewrite.get("explanation"):
            lines.append(f"        {rewrite['explanation']}")
    lines += [f"      note: {note}" for note in hook["notes"]]
    return lines


def _chain(chain: dict[str, Any]) -> list[str]:
    label = f"{chain['chain']}, priority {chain['priority']}"
    if chain["skipped"]:
        return [f"      {label}: not run ({chain['skipped']})"]
    lines = [f"      {label}: {_ending(chain)}"]
    for step in chain["steps"]:
        indent = "  " * (step["depth"] + 4)
        maybe = "" if step["certain"] else " (maybe: " + _unknown(step["unknown"]) + ")"
        handle = step["handle"]
        rule = step["rule"] if handle is None else f"handle {handle}: {step['text']}"
        lines.append(f"{indent}{rule}  -> {step['action']}{maybe}")
    if chain.get("explanation") and chain["ending"] in ("accept", "policy"):
        lines.append(f"        {chain['explanation']}")
    return lines


def _ending(chain: dict[str, Any]) -> str:
    verdict = (chain["verdict"] or "").upper()
    if chain["ending"] == "policy":
        text = f"{verdict} by the chain's policy"
        if not chain["steps"]:
            text += " (no rule matched)"
    elif chain["ending"] == "nat":
        text = "NAT by the rule below, accepted"
    else:
        text = f"{verdict} by the rule below"
    if not chain["certain"]:
        text += ", unless a rule marked maybe matched"
    return text


def _unknown(unknown: list[str]) -> str:
    if not unknown:
        return "inside a jump that may not have happened"
    return "cannot evaluate " + ", ".join(f"`{u}`" for u in unknown)


def _packet(p: dict[str, Any], short: bool = False) -> str:
    src = _address({"ip": p["src"], "port": p["sport"]})
    dst = _address({"ip": p["dst"], "port": p["dport"]})
    text = f"{p['proto']} {src} -> {dst}"
    if not short:
        text += f" ({p['ctstate'].lower()})"
    marks = [f"{name} {_hex(p[name])}" for name in ("mark", "ctmark") if p[name] != 0]
    extra = ", ".join(marks)
    return f"{text} [{extra}]" if extra else text


def _hex(value: int | None) -> str:
    return "unknown" if value is None else hex(value)


def _address(a: dict[str, Any]) -> str:
    ip = a.get("ip") or "?"
    port = a.get("port")
    if port is None:
        return ip
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"

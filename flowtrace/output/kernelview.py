"""`--rules kernel` in the terminal: the hooks and rules each probe's packets met, as the
kernel's own trace reported them, the checks against flowtrace's reading of the rules,
and the drop reasons seen while each probe was out.  Renders the `kernel` section of a
trace or lookup (topology.kernel_report), so a recorded set's manifest renders alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Probes whose packets are shown hook by hook; later ones are compared with these.
FULL_PROBES = 3
_FINAL = ("accept", "drop", "queue", "stolen", "reject")

NO_DROPS = "no drop reported by the kernel (skb:kfree_skb) while the probes were out"

Line = tuple[str, str]  # text, rich style


def kernel_lines(kernel: Mapping[str, Any]) -> list[Line]:
    """The section as (text, style) lines."""
    lines: list[Line] = []
    traced = [t["netns"] for t in kernel.get("tables", []) if t.get("traced")]
    where = ", ".join(traced) if traced else "no namespace"
    lines.append((f"the kernel's word (nftables trace in {where}; --rules kernel):", "bold"))
    for table in kernel.get("tables", []):
        if table.get("problem"):
            lines.append((f"note: {table['problem']}", "red"))
    for note in kernel.get("notes", []):
        lines.append((f"note: {note}", "yellow"))
    packets = kernel.get("packets", [])
    checks = kernel.get("checks", [])
    drops = kernel.get("drops")
    lookup = kernel.get("subject") == "lookup"
    probes = sorted({p["probe"] for p in packets if p.get("probe") is not None})
    probes += sorted({c.get("probe") for c in checks} - set(probes) - {None})
    shown: dict[tuple[str, str], set[tuple[object, ...]]] = {}
    same: list[int] = []
    for probe in probes:
        mine = [p for p in packets if p.get("probe") == probe]
        if (
            probe >= FULL_PROBES
            and mine
            and all(_signature(p) in shown.get(_kind(p), set()) for p in mine)
        ):
            same.append(probe)
            lines += _check_lines([c for c in checks if c["probe"] == probe and not c["agree"]])
            continue
        for pkt in mine:
            shown.setdefault(_kind(pkt), set()).add(_signature(pkt))
            lines += packet_lines(pkt, lookup)
        lines += _check_lines([c for c in checks if c["probe"] == probe])
        if drops is not None:
            lines += drop_lines([probe], [d for d in drops if d["probe"] == probe], lookup)
    if same:
        lines.append((f"{_probe_list(same)}: the same hooks and rules as the probes above", ""))
        if drops is not None:
            lines += drop_lines(same, [d for d in drops if d["probe"] in same], lookup)
    unmatched = [p for p in packets if p.get("probe") is None]
    for pkt in unmatched:
        lines += packet_lines(pkt, lookup)
    if drops is None:
        lines.append((f"drop reasons: not read ({kernel.get('tracefs')})", "dim"))
    elif not drops:
        lines.append(
            (
                NO_DROPS.replace(
                    "the probes were", "the query was" if lookup else "the probes were"
                ),
                "",
            )
        )
    return lines


def packet_lines(pkt: Mapping[str, Any], lookup: bool = False) -> list[Line]:
    probe = pkt.get("probe")
    if lookup:
        head = f"the {'query' if pkt['direction'] == 'request' else 'answer'}: {pkt['what']}"
    elif probe is None:
        head = f"a packet of no probe, {pkt['direction']}: {pkt['what']}"
    else:
        head = f"probe {probe + 1}, {pkt['direction']}: {pkt['what']}"
    lines: list[Line] = [(head, "bold")]
    for hook in pkt.get("hooks", []):
        lines += hook_lines(hook)
    return lines


def hook_lines(hook: Mapping[str, Any]) -> list[Line]:
    head = f"  {hook['netns']} {hook['hook']}{_devices(hook)}"
    chains = hook.get("chains", [])
    skipped = hook.get("nat_skipped", [])
    if skipped:
        names = ", ".join(skipped)
        skipped_line: Line = (
            f"    {names}: not evaluated (nat chains see a connection's first packet, once; "
            "conntrack applies their decision to the rest)",
            "dim",
        )
    if not chains:
        if skipped:
            return [(f"{head}:", ""), skipped_line]
        return [(f"{head}: no chain of {hook['netns']}'s on this hook", "dim")]
    lines: list[Line] = [(f"{head}:", "")]
    if skipped:
        lines.append(skipped_line)
    for chain in chains:
        rules = chain.get("rules", [])
        name = f"    {chain['table']} {chain['chain']}"
        if len(rules) == 1 and rules[0]["handle"] is None:
            policy = rules[0]["nft"]
            lines.append((f"{name}: {policy}", "red" if rules[0]["verdict"] == "drop" else ""))
            continue
        lines.append((f"{name}:", ""))
        for rule in rules:
            lines.append(rule_line(rule, chain["chain"]))
    return lines


def rule_line(rule: Mapping[str, Any], base: str | None = None) -> Line:
    """One rule met, under its base chain `base`: an iptables-nft rule as iptables-save
    prints it, a native one as `handle N: text` (`chain C handle N: text` when a jump
    took the packet to another chain)."""
    verdict = rule["verdict"]
    text = rule["rule"] if rule["handle"] is not None else rule["nft"]
    if rule["handle"] is not None and not rule.get("iptables"):
        where = "" if rule["chain"] == base else f"chain {rule['chain']} "
        text = f"{where}handle {rule['handle']}: {rule['nft'] or rule['rule']}"
    if rule["handle"] is None:
        suffix = ""  # "policy drop" says it
    elif rule.get("iptables") and verdict.split()[0] not in _FINAL:
        suffix = ""  # `-j CHAIN` / `-j RETURN` says it
    elif verdict == "continue":
        suffix = ""
    else:
        suffix = f"   => {verdict}"
    return (f"      {text}{suffix}", "red" if verdict == "drop" else "")


def _devices(hook: Mapping[str, Any]) -> str:
    iif, oif = hook.get("iif"), hook.get("oif")
    if iif and oif:
        return f" ({iif} -> {oif})"
    if iif:
        return f" (in {iif})"
    if oif:
        return f" (out {oif})"
    return ""


def _check_lines(checks: Sequence[Mapping[str, Any]]) -> list[Line]:
    lines: list[Line] = []
    for check in checks:
        style = "green" if check["agree"] else ("yellow" if check["agree"] is None else "red")
        lines.append((f"  {check['text']}", style))
    return lines


def drop_lines(
    probes: Sequence[int], drops: Sequence[Mapping[str, Any]], lookup: bool = False
) -> list[Line]:
    """Probes' drop reasons, alike ones counted, each marked as matched by time only."""
    if not drops:
        return []
    were = "was" if len(probes) == 1 else "were"
    who = "the query was" if lookup else f"{_probe_list(probes)} {were}"
    lines: list[Line] = [
        (
            f"  drops the kernel reported while {who} out "
            "(skb:kfree_skb, matched by time and protocol only):",
            "",
        )
    ]
    alike: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for drop in drops:
        alike.setdefault((drop["reason"], drop["location"]), []).append(drop)
    for (reason, location), group in alike.items():
        first = group[0]
        count = f" x{len(group)}" if len(group) > 1 else ""
        meaning = f": {first['meaning']}" if first.get("meaning") else ""
        after = f", {first['after_us']:,.1f} µs after sending" if len(probes) == 1 else ""
        lines.append(
            (
                f"    {reason}{count} at {location}{after}{meaning}",
                "red" if reason == "NETFILTER_DROP" else "",
            )
        )
    return lines


def _kind(pkt: Mapping[str, Any]) -> tuple[str, str]:
    """A packet's place in a probe, whatever the probe (its sequence number left out)."""
    return pkt["direction"], str(pkt["what"]).split(" seq=")[0]


def _signature(pkt: Mapping[str, Any]) -> tuple[object, ...]:
    return tuple(
        (
            h["netns"],
            h["hook"],
            tuple(h.get("nat_skipped", ())),
            tuple(
                (c["table"], c["chain"], tuple((r["rule"], r["verdict"]) for r in c["rules"]))
                for c in h["chains"]
            ),
        )
        for h in pkt.get("hooks", [])
    )


def _probe_list(probes: Sequence[int]) -> str:
    numbers = [p + 1 for p in probes]
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 1:
        return f"probes {numbers[0]}-{numbers[-1]}"
    return ("probe " if len(numbers) == 1 else "probes ") + ", ".join(map(str, numbers))

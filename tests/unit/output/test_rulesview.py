"""`flowtrace rules` as text: the document rendered hook by hook."""

from __future__ import annotations

from typing import Any

from flowtrace.output.rulesview import render_rules


def _chain(**fields: Any) -> dict[str, Any]:
    base = {"chain": "raw PREROUTING (iptables-nft)", "priority": -300, "skipped": None,
            "steps": [], "ending": "policy", "verdict": "accept", "certain": True,
            "explanation": None}  # fmt: skip
    return {**base, **fields}


def _packet(src: str, dst: str, **more: Any) -> dict[str, Any]:
    return {"proto": "icmp", "src": src, "dst": dst, "sport": None, "dport": None,
            "ctstate": "NEW", "mark": 0, "ctmark": 0, **more}  # fmt: skip


def test_each_namespace_hook_and_chain_with_its_rules() -> None:
    step = {"rule": "-A PREROUTING -d 10.0.1.2/32 ! -i br1 -j DROP", "text": "", "handle": None,
            "action": "DROP", "certain": True, "unknown": [], "depth": 0}  # fmt: skip
    maybe = {"rule": "x", "text": "ip saddr @vips accept", "handle": 7, "action": "ACCEPT",
             "certain": False, "unknown": ["ip saddr @vips"], "depth": 1}  # fmt: skip
    doc = {
        "src": "c1", "dst": "c3", "dst_ip": "10.0.1.2", "dst_port": None, "kind": "icmp",
        "path": ["c1/eth0", "host/br0"],
        "request": {
            "packet": _packet("10.0.0.2", "10.0.1.2"),
            "namespaces": [{
                "netns": "host", "way": "forward", "in_iface": "br0", "out_iface": "br1",
                "backends": ["iptables-nft"], "notes": [],
                "hooks": [{
                    "hook": "prerouting", "packet": _packet("10.0.0.2", "10.0.1.2", mark=None),
                    "rewrites": [], "notes": [],
                    "chains": [
                        _chain(steps=[maybe, step], ending="drop", verdict="drop", certain=False),
                        _chain(chain="nat PREROUTING (iptables-nft)", priority=-100,
                               skipped="an earlier nat chain made the binding"),
                    ],
                }],
            }],
            "outcome": {"text": "dropped in host at prerouting by `...`", "explanation": "why"},
        },
        "reply": None,
        "notes": ["a note"],
    }  # fmt: skip
    lines = render_rules(doc)
    assert lines[0] == "flowtrace rules c1 -> c3 (10.0.1.2), icmp"
    assert "  host: forwarded (in br0, out br1); rules from: iptables-nft" in lines
    assert "    prerouting: icmp 10.0.0.2 -> 10.0.1.2 [mark unknown]" in lines
    assert (
        "      raw PREROUTING (iptables-nft), priority -300: DROP by the rule below, "
        "unless a rule marked maybe matched"
    ) in lines
    assert (
        "          handle 7: ip saddr @vips accept  -> ACCEPT "
        "(maybe: cannot evaluate `ip saddr @vips`)"
    ) in lines
    assert "        -A PREROUTING -d 10.0.1.2/32 ! -i br1 -j DROP  -> DROP" in lines
    assert (
        "      nat PREROUTING (iptables-nft), priority -100: not run (an earlier nat chain made "
        "the binding)"
    ) in lines
    assert "=> request dropped in host at prerouting by `...`" in lines
    assert "reply: none (the request does not arrive where it is answered)" in lines
    assert lines[-1] == "note: a note"

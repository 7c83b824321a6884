"""Real packets through the datapath of each engine flowtrace cannot install here.

Each engine's replica (flowtrace.lab.replica: namespaces ftfw-h, ftfw-c1..ftfw-c8,
ftfw-out, and exactly the rules that engine writes for that layout, from
flowtrace/lab/replicas/<engine>/) is built once, several traces go through it, and each
asserts the verdict, the rule named and the explanation; `flowtrace rules` (which sends
nothing) must tell the same story.  The layouts: the default bridge with a published
port, two user bridges, an internal network, ICC off, routed gateway mode,
userland-proxy off (a rules variant), for Docker 20.10, 28.5, 29.7 with iptables and
with nftables, and Podman's netavark with iptables and with nftables.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from flowtrace import api
from flowtrace.lab import replica
from flowtrace.model import Trace

pytestmark = pytest.mark.integration

OUT = "netns:ftfw-out"
HOST_PORT = "198.51.100.233:8080"


def nft(chain: str, text: str, table: str = "ip docker-bridges") -> tuple[str, str]:
    """An nftables rule as flowtrace shows it: table, chain, a handle that varies, the text."""
    return f"table {table} chain {chain} handle ", f": {text}"


@dataclass(frozen=True)
class Case:
    name: str
    src: str
    dst: str
    outcome: str  # the trace's verdict: lost, replied, refused
    #: The rule named: the drop's (outcome lost), else the `nat` rewrite's; None: no rewrite.
    rule: str | tuple[str, str] | None
    words: str  # in the drop's words or the rewrite's meaning
    nat: str | None = None  # DNAT or SNAT: whose rule `rule` is
    variant: str | None = None
    kind: str = "icmp"


def _docker_cases(engine: str) -> list[Case]:
    old = engine == "docker-20.10"
    is_nft = engine.endswith("nftables")
    v29 = engine.startswith("docker-29")
    if old:
        cross = "-A DOCKER-ISOLATION-STAGE-2 -o ftfw-b1 -j DROP"
        cross_words = "Docker isolates its bridge networks from each other"
    elif is_nft:
        cross = nft(
            "raw-PREROUTING",
            'ip daddr 10.247.1.2 iifname != "ftfw-b1" counter drop comment "DROP DIRECT ACCESS"',
        )
        cross_words = "Docker (28.0 and later) drops packets for a container's own address"
    else:
        cross = "-A PREROUTING -d 10.247.1.2/32 ! -i ftfw-b1 -j DROP"
        cross_words = "Docker (28.0 and later) drops packets for a container's own address"
    dnat: str | tuple[str, str] = (
        "-A DOCKER ! -i ftfw-d0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.247.0.2:80"
    )
    masq: str | tuple[str, str] = "-A POSTROUTING -s 10.247.0.0/24 ! -o ftfw-d0 -j MASQUERADE"
    internal: str | tuple[str, str] = (
        "-A DOCKER-ISOLATION-STAGE-1 ! -s 10.247.3.0/24 -o ftfw-int -j DROP"
    )
    icc: str | tuple[str, str] = "-A DOCKER-FORWARD -i ftfw-b2 -o ftfw-b2 -j DROP"
    noproxy: str | tuple[str, str] = (
        "-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.247.0.2:80"
    )
    direct = cross
    if is_nft:
        dnat = nft(
            "nat-prerouting-and-output",
            'iifname != "ftfw-d0" tcp dport 8080 counter dnat to 10.247.0.2:80 comment "DNAT"',
        )
        masq = nft(
            "nat-postrouting-out__ftfw-d0",
            'oifname != "ftfw-d0" ip saddr 10.247.0.0/24 counter masquerade comment "MASQUERADE"',
        )
        internal = nft(
            "filter-forward-in__ftfw-int",
            'iifname != "ftfw-int" counter drop comment "INTERNAL NETWORK INGRESS"',
        )
        icc = nft("filter-forward-in__ftfw-b2", 'iifname "ftfw-b2" counter drop comment "ICC"')
        noproxy = nft(
            "nat-prerouting-and-output",
            'tcp dport 8080 counter dnat to 10.247.0.2:80 comment "DNAT"',
        )
        direct = nft(
            "raw-PREROUTING",
            'ip daddr 10.247.0.2 iifname != "ftfw-d0" counter drop comment "DROP DIRECT ACCESS"',
        )
    elif v29:
        internal = "-A DOCKER-INTERNAL ! -s 10.247.3.0/24 -o ftfw-int -j DROP"
    elif not old:
        direct = "-A PREROUTING -d 10.247.0.2/32 ! -i ftfw-d0 -j DROP"
    if old:
        icc = "-A FORWARD -i ftfw-b2 -o ftfw-b2 -j DROP"
    if engine in ("docker-28.5", "docker-29.7-iptables"):
        direct = "-A PREROUTING -d 10.247.0.2/32 ! -i ftfw-d0 -j DROP"
    cases = [
        Case("cross-bridge", "netns:ftfw-c1", "netns:ftfw-c3", "lost", cross, cross_words),
        Case(
            "published-port",
            OUT,
            HOST_PORT,
            "refused",
            dnat,
            "a port published by a container",
            nat="DNAT",
            kind="tcp",
        ),
        Case("masquerade-out", "netns:ftfw-c1", OUT, "replied", masq, "masquerades", nat="SNAT"),
        Case(
            "internal",
            "netns:ftfw-c3",
            "netns:ftfw-c7",
            "lost",
            internal,
            "was created with `--internal`",
        ),
        Case(
            "icc-off",
            "netns:ftfw-c5",
            "netns:ftfw-c6",
            "lost",
            icc,
            "inter-container communication is disabled on bridge ftfw-b2",
        ),
        Case(
            "userland-proxy-off",
            "netns:ftfw-c2",
            "10.247.0.1:8080",
            "refused",
            noproxy,
            "`--userland-proxy=false`",
            nat="DNAT",
            variant="noproxy",
            kind="tcp",
        ),
    ]
    if old:  # 20.10 has no direct-access drops: a neighbour routing to it reaches the port
        cases.append(Case("direct-access", OUT, "10.247.0.2:80", "refused", None, "", kind="tcp"))
    else:
        cases += [
            Case(
                "direct-access",
                OUT,
                "10.247.0.2:80",
                "lost",
                direct,
                "other container addresses are not reachable from other interfaces since Docker 28",
                kind="tcp",
            ),
            Case("routed-in", OUT, "netns:ftfw-c8", "replied", None, ""),
            Case("routed-out", "netns:ftfw-c8", OUT, "replied", None, ""),
        ]
    return cases


def _podman_cases(engine: str) -> list[Case]:
    if engine.endswith("nftables"):
        table = "inet netavark"
        dnat = nft(
            "nv_2f259bab_10_247_0_0_nm24_dnat",
            "tcp dport 8080 ct mark set meta mark | 0x00001000 dnat ip to 10.247.0.2:80",
            table,
        )
        masq = nft("nv_2f259bab_10_247_0_0_nm24", "ip daddr != 224.0.0.0/4 masquerade", table)
        isolation = nft("NETAVARK-ISOLATION-2", 'oifname "ftfw-b2" drop', table)
        hairpin = nft("POSTROUTING", "meta mark & 0x00002000 == 0x00002000 masquerade", table)
    else:
        dnat = (
            "-A NETAVARK-DN-1D8721804F16F -p tcp -m tcp --dport 8080 -j DNAT "
            "--to-destination 10.247.0.2:80"
        )
        masq = "-A NETAVARK-1D8721804F16F ! -d 224.0.0.0/4 -j MASQUERADE"
        isolation = "-A NETAVARK_ISOLATION_2 -o ftfw-b2 -j DROP"
        hairpin = (
            '-A NETAVARK-HOSTPORT-MASQ -m comment --comment "netavark portfw masq mark" '
            "-m mark --mark 0x2000/0x2000 -j MASQUERADE"
        )
    return [
        Case(
            "published-port",
            OUT,
            HOST_PORT,
            "refused",
            dnat,
            "a port published by a Podman",
            nat="DNAT",
            kind="tcp",
        ),
        Case("masquerade-out", "netns:ftfw-c1", OUT, "replied", masq, "", nat="SNAT"),
        Case(
            "isolated-networks",
            "netns:ftfw-c3",
            "netns:ftfw-c5",
            "lost",
            isolation,
            "netavark isolates networks created with `--opt isolate=true`",
        ),
        Case(
            "hairpin-mark",
            "netns:ftfw-c2",
            HOST_PORT,
            "refused",
            hairpin,
            "netavark masquerades what it marked 0x2000",
            nat="SNAT",
            kind="tcp",
        ),
    ]


CASES = [
    (engine, case)
    for engine in replica.ENGINES
    for case in (_podman_cases(engine) if engine.startswith("netavark") else _docker_cases(engine))
]


@pytest.fixture(scope="module")
def built(request: pytest.FixtureRequest, root: None) -> Iterator[replica.Replica]:
    """One replica per engine, for every case of that engine (pytest groups them)."""
    with replica.locked():
        try:
            yield replica.build(request.param)
        finally:
            replica.remove()
            assert replica.present() == [], "a replica namespace was left behind"


def _same(rule: str | None, expected: str | tuple[str, str] | None) -> bool:
    if isinstance(expected, tuple):
        return rule is not None and rule.startswith(expected[0]) and rule.endswith(expected[1])
    return rule == expected


def _rewrite(trace: Trace, kind: str) -> tuple[str | None, str | None, str | None]:
    events = [ev for p in trace.packets for ev in p.nat if ev.kind == kind and not ev.reverse_of]
    assert events, f"no {kind} in the trace"
    return events[0].rule, events[0].explanation, events[0].rule_doubt


@pytest.mark.parametrize(
    ("built", "case"), CASES, indirect=["built"], ids=[f"{e}-{c.name}" for e, c in CASES]
)
def test_a_packet_through_the_engines_rules(built: replica.Replica, case: Case) -> None:
    engine = built.engine
    if case.variant:
        replica.load_rules(engine, case.variant)
    try:
        kind: Any = case.kind
        trace = api.trace(case.src, case.dst, kind, count=1, timeout=0.5, record=False)
        doc = api.rules(case.src, case.dst, kind)
    finally:
        if case.variant:
            replica.load_rules(engine)
    (verdict,) = trace.verdicts
    assert verdict.outcome == case.outcome, verdict
    request = doc["request"]["outcome"]
    if case.outcome == "lost":
        assert _same(verdict.rule, case.rule), verdict.rule
        assert case.words in verdict.detail
        assert "maybe" not in verdict.detail
        # `flowtrace rules` names the same rule, without sending anything
        assert request["outcome"] == "dropped" and request["certain"], request
        assert _same(request["rule"], case.rule)
        assert case.words in (request["explanation"] or "")
        return
    assert request["outcome"] == "delivered", request
    assert doc["reply"] is not None and doc["reply"]["outcome"]["outcome"] == "delivered"
    if case.name == "routed-out":  # no MASQUERADE: the other side needs a route back
        assert any(
            "no MASQUERADE rewrote 10.247.4.2" in n and "route back" in n for n in doc["notes"]
        ), doc["notes"]
    if case.name == "routed-in":
        assert "gateway mode `routed`" in " ".join(_explanations(doc)), _explanations(doc)
    if case.nat is None:
        assert not [ev for p in trace.packets for ev in p.nat if not ev.reverse_of], trace.packets
        return
    rule, meaning, doubt = _rewrite(trace, case.nat)
    assert _same(rule, case.rule), rule
    assert doubt is None, doubt
    assert case.words in (meaning or ""), meaning
    rewrites = [
        r
        for ns in doc["request"]["namespaces"]
        for h in ns["hooks"]
        for r in h["rewrites"]
        if r["kind"] == case.nat
    ]
    assert rewrites and _same(rewrites[0]["rule"], case.rule), rewrites


def _explanations(doc: dict[str, Any]) -> list[str]:
    return [
        c["explanation"]
        for ns in doc["request"]["namespaces"]
        for h in ns["hooks"]
        for c in h["chains"]
        if c["explanation"]
    ]

"""`--rules kernel`'s tracing tables are no part of the firewall flowtrace reads."""

from __future__ import annotations

import json

from flowtrace.topology.netfilter.nft_json import parse_nft_json
from flowtrace.topology.netfilter.watch import without_tracing_tables

RULESET = """table inet filter {
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t}
}
table inet flowtrace-trace-4242 {
\tchain prerouting {
\t\ttype filter hook prerouting priority -350; policy accept;
\t\tmeta mark 0x5eed0000 meta nftrace set 1
\t}
}
table ip nat {
}"""


def test_the_fingerprint_leaves_the_tracing_tables_out() -> None:
    assert without_tracing_tables(RULESET) == (
        "table inet filter {\n\tchain input {\n"
        "\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n"
        "table ip nat {\n}"
    )


def test_the_nft_reader_leaves_them_out() -> None:
    doc = {
        "nftables": [
            {"table": {"family": "inet", "name": "flowtrace-trace-4242", "handle": 1}},
            {"chain": {"family": "inet", "table": "flowtrace-trace-4242", "name": "prerouting",
                       "handle": 1, "type": "filter", "hook": "prerouting", "prio": -350,
                       "policy": "accept"}},
            {"table": {"family": "inet", "name": "mine", "handle": 2}},
        ]
    }  # fmt: skip
    tables, _ = parse_nft_json(json.dumps(doc))
    assert [t.name for t in tables] == ["mine"]

"""The tracing table flowtrace adds for `--rules kernel`, and `nft -a monitor trace`'s
events read back into hook visits, on lines recorded from real runs."""

from __future__ import annotations

import json

from sample_kernel import record, replay

from flowtrace.topology.nftrace import (
    DEFAULT_PRIORITY,
    HOOKS,
    TraceMatch,
    describe_packet,
    hook_visits,
    is_flowtraces,
    lowest_priorities,
    parse_event,
    quoted_ip_id,
    table_commands,
    table_name,
    tcp_flags_text,
)


def test_each_probe_kind_marks_its_packets_and_the_icmp_errors_about_them() -> None:
    assert TraceMatch.for_probes("icmp", 0xDA9ECF97).rules() == [
        "meta l4proto icmp @th,64,32 0xda9ecf97",
        "meta l4proto icmp icmp type { destination-unreachable, time-exceeded, "
        "parameter-problem } @th,288,32 0xda9ecf97",
    ]
    assert TraceMatch.for_probes("udp", 0x10).rules()[0] == "meta l4proto udp @th,64,32 0x10"
    tcp = TraceMatch.for_probes("tcp", 0, [100, 200]).rules()
    assert tcp[0] == "meta l4proto tcp tcp sequence { 100, 200, 101, 201 }"
    assert tcp[1] == "meta l4proto tcp tcp ackseq { 101, 201 }"
    assert tcp[2].endswith("@th,256,32 { 100, 200 }")  # the quoted segment's sequence
    dns = TraceMatch.for_socket(41234).rules()
    assert dns[:2] == ["meta l4proto udp udp sport 41234", "meta l4proto udp udp dport 41234"]
    assert dns[2].endswith("@th,224,16 41234")  # the quoted datagram's source port


def test_the_table_runs_first_on_every_hook() -> None:
    chains = {
        "nftables": [
            {"chain": {"family": "ip", "table": "raw", "name": "PREROUTING",
                       "hook": "prerouting", "prio": -300}},
            {"chain": {"family": "inet", "table": "early", "name": "in",
                       "hook": "input", "prio": -400}},
            {"chain": {"family": "bridge", "table": "b", "name": "f",
                       "hook": "forward", "prio": -900}},
            {"chain": {"family": "inet", "table": table_name(7), "name": "output",
                       "hook": "output", "prio": -999}},
        ]
    }  # fmt: skip
    lowest = lowest_priorities(chains)
    assert lowest == {"prerouting": -300, "input": -400}  # bridge and flowtrace's own left out
    commands = table_commands(table_name(42), TraceMatch.for_probes("icmp", 1), lowest)
    assert commands[0] == "add table inet flowtrace-trace-42"  # no flags (see table_commands)
    prios = {c.split()[4]: int(c.split("priority ")[1].split(";")[0]) for c in commands[1:6]}
    assert list(prios) == list(HOOKS)
    assert prios == {
        "prerouting": DEFAULT_PRIORITY,
        "input": -410,
        "forward": DEFAULT_PRIORITY,
        "output": DEFAULT_PRIORITY,
        "postrouting": DEFAULT_PRIORITY,
    }
    rules = commands[6:]
    assert len(rules) == 4 and all(r.endswith(" meta nftrace set 1") for r in rules)
    assert {r.split()[4] for r in rules} == {"prerouting", "output"}
    assert is_flowtraces("flowtrace-trace-42") and not is_flowtraces("filter")


def _line(name: str, netns: str, needle: str) -> str:
    return next(line for _, line in record(name)["lines"][netns] if needle in line)


def test_a_packet_line_gives_the_fields_that_identify_the_packet() -> None:
    ev = parse_event(_line("isolated", "host", "filter FORWARD packet:"), 5)
    assert ev is not None and ev.kind == "packet" and ev.time_ns == 5
    assert (ev.family, ev.table, ev.chain) == ("ip", "filter", "FORWARD")
    f = ev.fields
    assert f["iif"] == "docker0" and f["oif"].startswith("br-")
    assert f["icmp type"] == "echo-request" and f["icmp sequence"] == "0"
    assert f["ip saddr"] == "172.17.0.2" and f["ip id"] == "45927"
    assert describe_packet(f) == "icmp echo request seq=0"


def test_a_rule_line_gives_the_rule_without_counters_its_handle_and_verdict() -> None:
    ev = parse_event(_line("isolated", "host", "DOCKER-ISOLATION-STAGE-2 rule"))
    assert ev is not None and ev.kind == "rule"
    assert ev.text == 'oifname "br-030eed382933" counter drop'
    assert (ev.handle, ev.verdict) == (537, "drop")
    jump = parse_event(_line("isolated", "host", "FORWARD rule counter packets 9"))
    assert jump is not None and jump.verdict == "jump DOCKER-USER"


def test_policy_return_unknown_and_foreign_lines() -> None:
    policy = parse_event("trace id 2a318d96 ip nat PREROUTING policy accept ")
    assert policy is not None and (policy.kind, policy.verdict) == ("policy", "accept")
    marked = parse_event("trace id 2a318d96 ip nat PREROUTING policy drop meta mark 0x00002000 ")
    assert marked is not None and marked.verdict == "drop"
    ret = parse_event("trace id 2a318d96 ip filter DOCKER verdict continue ")
    assert ret is not None and (ret.kind, ret.verdict) == ("return", "continue")
    unknown = parse_event(
        "trace id 2a318d96 ip filter FORWARD unknown rule handle 77 (verdict drop)"
    )
    assert unknown is not None and (unknown.handle, unknown.text) == (77, "")
    assert parse_event("# Warning: table ip filter is managed by iptables-nft") is None
    assert parse_event("") is None


def test_the_events_of_one_namespace_become_hook_visits_with_their_chains() -> None:
    events = [ev for t, line in record("isolated")["lines"]["host"] if (ev := parse_event(line, t))]
    visits = hook_visits("host", events)
    assert [(v.netns, v.hook) for v in visits] == [("host", "prerouting"), ("host", "forward")]
    pre, fwd = visits
    assert [(c.table, c.chain, c.verdict) for c in pre.chains] == [("nat", "PREROUTING", "accept")]
    (chain,) = fwd.chains
    assert [r.chain for r in chain.rules] == [
        "FORWARD",
        "DOCKER-USER",
        "FORWARD",
        "DOCKER-ISOLATION-STAGE-1",
        "DOCKER-ISOLATION-STAGE-2",
    ]
    assert chain.verdict == "drop"
    assert fwd.dropped_by is not None and fwd.dropped_by.handle == 537
    assert (fwd.iif, fwd.oif) == ("docker0", "br-030eed382933")


def test_a_base_chain_without_flowtraces_own_before_it_gets_a_hook_of_its_own() -> None:
    lines = [
        'trace id 1 ip filter INPUT packet: iif "eth0" ip saddr 1.2.3.4 ip id 9 ',
        "trace id 1 ip filter INPUT policy drop ",
    ]
    (visit,) = hook_visits("c2", [ev for line in lines if (ev := parse_event(line))])
    assert visit.hook == "input" and visit.dropped_by is not None
    assert visit.dropped_by.shown == "table ip filter chain INPUT: policy drop"


def test_what_a_traced_packet_is() -> None:
    udp = replay("udp-dnat")
    error = next(p for p in udp.packets if p.direction == "reply").visits[0].fields
    assert describe_packet(error) == "icmp destination unreachable (port unreachable)"
    request_ip_id = int(next(iter(udp.record["ip_ids"])))
    assert quoted_ip_id(error) == request_ip_id  # the error quotes the probe's IP header
    tcp = {p.what for p in replay("dnat").packets}
    assert tcp == {"tcp SYN", "tcp SYN+ACK", "tcp RST"}
    assert tcp_flags_text("0x14") == "ACK+RST" and tcp_flags_text("syn | ack") == "SYN+ACK"
    assert describe_packet({"udp sport": "1", "udp dport": "2"}) == "udp 1 -> 2"
    assert json.dumps(describe_packet({})) == '"ip"'

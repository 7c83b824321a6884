"""A rule the kernel's trace names by handle, shown as iptables-save prints it, on the
rules of real runs."""

from __future__ import annotations

from sample_kernel import record

from flowtrace.topology.nftrace import ChainPass, HookVisit, RuleMet
from flowtrace.topology.nftrules import RuleBook, legacy_tables, parse_iptables_save


def _host_book() -> RuleBook:
    book = record("isolated")["books"]["host"]
    return RuleBook.read(book["tables"], book["iptables_save"])


def test_an_iptables_nft_rule_is_its_iptables_save_line_at_the_same_place() -> None:
    book = _host_book()
    drop = RuleMet("ip", "filter", "DOCKER-ISOLATION-STAGE-2", 537, 'oifname "x" drop', "drop")
    assert book.iptables_line(drop) == "-A DOCKER-ISOLATION-STAGE-2 -o br-030eed382933 -j DROP"
    jump = RuleMet("ip", "filter", "FORWARD", 538, "counter jump DOCKER-USER", "jump DOCKER-USER")
    assert book.iptables_line(jump) == "-A FORWARD -j DOCKER-USER"
    policy = RuleMet("ip", "filter", "FORWARD", None, "policy drop", "drop")
    assert book.iptables_line(policy) == "-P FORWARD DROP"
    assert book.hooks[("ip", "nat", "PREROUTING")] == ("prerouting", "nat")


def test_nothing_is_guessed_where_the_listings_do_not_line_up() -> None:
    book = _host_book()
    assert book.iptables_line(RuleMet("ip", "filter", "FORWARD", 99999, "", "drop")) is None
    native = RuleMet("inet", "filter", "FORWARD", 538, "", "drop")
    assert book.iptables_line(native) is None  # not an iptables table
    short = RuleBook.read(
        record("isolated")["books"]["host"]["tables"], "*filter\n-A FORWARD -j X\nCOMMIT\n"
    )
    assert short.iptables_line(RuleMet("ip", "filter", "FORWARD", 538, "", "x")) is None
    tables = record("isolated")["books"]["host"]["tables"]
    changed = RuleBook.read(tables, record("isolated")["books"]["host"]["iptables_save"], [])
    drop = RuleMet("ip", "filter", "DOCKER-ISOLATION-STAGE-2", 537, "", "drop")
    assert changed.iptables_line(drop) is None  # the rules changed while they were read
    assert RuleBook.read(["not json"]).handles == {}


def test_a_nat_chain_that_did_not_see_a_packet_is_named() -> None:
    book = _host_book()
    visit = book.resolve(HookVisit("host", "prerouting", 0, {}))
    assert visit.skipped == ("ip nat PREROUTING",)
    assert book.priorities[("ip", "nat", "PREROUTING")] == -100


def test_a_nat_chain_after_the_drop_was_not_skipped_but_never_reached() -> None:
    """Docker 28's raw drop (priority -300) comes before nat PREROUTING (-100)."""
    book = _host_book()
    raw = ChainPass("ip", "raw", "PREROUTING", (RuleMet("ip", "raw", "PREROUTING", 7, "", "drop"),))
    early = RuleBook(
        book.handles, book.hooks, priorities={**book.priorities, ("ip", "raw", "PREROUTING"): -300}
    )
    assert early.resolve(HookVisit("host", "prerouting", 0, {}, (raw,))).skipped == ()
    late = RuleBook(
        book.handles, book.hooks, priorities={**book.priorities, ("ip", "raw", "PREROUTING"): 0}
    )
    visit = late.resolve(HookVisit("host", "prerouting", 0, {}, (raw,)))
    assert visit.skipped == ("ip nat PREROUTING",)


def test_iptables_save_and_legacy_tables() -> None:
    rules, policies = parse_iptables_save(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\n"
        "-A DOCKER -i docker0 -j RETURN\nCOMMIT\n"
    )
    assert rules[("nat", "DOCKER")] == ("-A DOCKER -i docker0 -j RETURN",)
    assert policies == {("nat", "PREROUTING"): "ACCEPT"}
    assert legacy_tables("filter\nnat\n") == ["filter", "nat"] and legacy_tables("") == []

"""Reading a namespace's firewall from the kernel: the one part of netfilter that touches it.

In the namespace it runs iptables-nft-save (iptables' tables in nftables),
iptables-legacy-save when the namespace has x_tables tables registered
(/proc/net/ip_tables_names: a host may hold rules in both), and `nft -j list ruleset`
with `nft -a -s list ruleset` for the native nftables tables and their rule texts.
What is missing or unreadable becomes a note on the Firewall, never a guess: only
with no reader at all is it an error.  Nothing is cached here: rules change (engines
add them as containers start), and a namespace's inode may be reused by a new one;
callers that read one namespace many times at one moment keep what they read.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import MissingToolError, NotRootError
from flowtrace.topology.netfilter.firewall import Firewall
from flowtrace.topology.netfilter.iptables_save import parse_iptables_save
from flowtrace.topology.netfilter.nft_json import parse_nft_json, rule_texts
from flowtrace.topology.netfilter.rules import (
    IPTABLES_LEGACY,
    IPTABLES_NFT,
    RulesetFormatError,
    Table,
)


@dataclass(frozen=True)
class Outputs:
    """What the commands printed in the namespace (None: not run, or it failed)."""

    iptables: str | None = None
    iptables_program: str | None = None
    legacy: str | None = None
    nft_json: str | None = None
    nft_text: str | None = None
    errors: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def read_firewall(netns_path: str, ipv6: bool = False) -> Firewall:
    """Every table of every backend in the namespace at `netns_path`."""
    return firewall_from(run_in_netns(netns_path, run_readers, ipv6), ipv6)


def read_ruleset(netns_path: str, ipv6: bool = False) -> Firewall:
    """The older name of read_firewall."""
    return read_firewall(netns_path, ipv6)


def firewall_from(out: Outputs, ipv6: bool = False) -> Firewall:
    """The Firewall the commands' output describes, with notes on what is missing (pure)."""
    family = "ip6" if ipv6 else "ip"
    notes = list(out.errors)
    unread = [m if m == "iptables" else "nftables" for m in out.missing]
    tables: list[Table] = []
    iptables_names: set[tuple[str, str]] = set()
    if out.iptables is not None:
        source = IPTABLES_LEGACY if "(legacy)" in out.iptables[:300] else IPTABLES_NFT
        try:
            parsed = parse_iptables_save(out.iptables, source, family)
            tables.extend(parsed.tables.values())
            if source == IPTABLES_NFT:
                iptables_names = {(family, name) for name in parsed.tables}
        except RulesetFormatError as exc:
            notes.append(f"{out.iptables_program}: {exc.message}: its rules are left out")
            unread.append("iptables")
    if out.legacy is not None and out.legacy.strip():
        try:
            tables.extend(parse_iptables_save(out.legacy, IPTABLES_LEGACY, family).tables.values())
        except RulesetFormatError as exc:
            notes.append(f"iptables-legacy-save: {exc.message}: its rules are left out")
            unread.append("iptables-legacy")
    if out.nft_json is not None:
        texts = rule_texts(out.nft_text or "")
        try:
            native, nft_notes = parse_nft_json(out.nft_json, texts, iptables_names)
            tables.extend(native)
            notes.extend(nft_notes)
        except RulesetFormatError as exc:
            notes.append(f"nft: {exc.message}: native nftables tables are left out")
            unread.append("nftables")
    notes.extend(_missing_notes(out))
    if out.iptables is None and "iptables" not in unread and out.iptables_program:
        unread.append("iptables")  # it ran and failed (the error is among the notes)
    if out.nft_json is None and "nftables" not in unread:
        unread.append("nftables")
    firewall = Firewall(tuple(tables), tuple(notes), tuple(unread))
    if len(set(firewall.backends()) & {IPTABLES_NFT, IPTABLES_LEGACY}) == 2:
        firewall = Firewall(
            firewall.tables,
            (
                *firewall.notes,
                "iptables-legacy and iptables-nft both hold rules here: the kernel runs both "
                "(each table at its hook), and `iptables` shows only one of them",
            ),
            firewall.unread,
        )
    return firewall


def _missing_notes(out: Outputs) -> list[str]:
    notes = []
    if "iptables" in out.missing:
        notes.append(
            "iptables-save is not installed: iptables rules are not read "
            "(Debian: apt-get install iptables)"
        )
    if "nft" in out.missing:
        notes.append(
            "nft is not installed: native nftables tables (Docker's nftables backend, "
            "netavark's, firewalld's) are not read (Debian: apt-get install nftables)"
        )
    return notes


def run_readers(ipv6: bool = False) -> Outputs:
    """Run the readers in the calling thread's namespace (run_in_netns puts it there)."""
    six = "6" if ipv6 else ""
    missing: list[str] = []
    errors: list[str] = []
    program = shutil.which(f"ip{six}tables-nft-save") or shutil.which(f"ip{six}tables-save")
    iptables = None
    if program is None:
        missing.append("iptables")
    else:
        iptables = _run([program], errors)
    legacy = None
    legacy_program = shutil.which(f"ip{six}tables-legacy-save")
    if legacy_program and _has_legacy_tables(ipv6) and not _same(program, legacy_program):
        legacy = _run([legacy_program], errors)
    nft = shutil.which("nft")
    nft_json = nft_text = None
    if nft is None:
        missing.append("nft")
    else:
        for _ in range(3):  # the ruleset may change between the two listings: read again
            nft_json = _run([nft, "-j", "list", "ruleset"], errors)
            nft_text = _run([nft, "-a", "-s", "list", "ruleset"], errors)
            if nft_json is None or nft_text is None or _agree(nft_json, nft_text):
                break
        else:
            errors.append("nft: the ruleset kept changing while it was read: rule texts may lag")
    if program is None and nft is None:
        raise MissingToolError(
            "neither iptables-save nor nft is installed: flowtrace cannot read the firewall "
            "(Debian: apt-get install iptables nftables)"
        )
    return Outputs(
        iptables, program and program.rsplit("/", 1)[-1], legacy, nft_json, nft_text,
        tuple(errors), tuple(missing),
    )  # fmt: skip


def _run(argv: list[str], errors: list[str]) -> str | None:
    # A child forked from this thread starts in the namespace the thread entered.
    name = argv[0].rsplit("/", 1)[-1]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        errors.append(f"{name}: {exc}")
        return None
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["failed"])[-1]
        if "denied" in message.lower() or "must be root" in message.lower():
            raise NotRootError(f"{name}: {message}: run flowtrace as root")
        errors.append(f"{name} failed: {message}")
        return None
    return done.stdout


def _has_legacy_tables(ipv6: bool) -> bool:
    """x_tables tables registered in this thread's namespace (iptables-legacy's)."""
    name = "ip6_tables_names" if ipv6 else "ip_tables_names"
    try:
        with open(f"/proc/thread-self/net/{name}") as listing:
            return bool(listing.read().split())
    except OSError:
        return False


def _same(one: str | None, other: str) -> bool:
    return one is not None and os.path.realpath(one) == os.path.realpath(other)


def _agree(nft_json: str, nft_text: str) -> bool:
    """Both listings show the same rule handles (nothing changed in between)."""
    try:
        items = json.loads(nft_json).get("nftables", [])
    except (ValueError, AttributeError):
        return True  # the parser will say what is wrong
    handles = {
        (r.get("family"), r.get("table"), r.get("chain"), r.get("handle"))
        for item in items
        if isinstance(item, dict) and isinstance(r := item.get("rule"), dict)
    }
    return handles == set(rule_texts(nft_text))

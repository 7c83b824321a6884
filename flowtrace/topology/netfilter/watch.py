"""Whether a namespace's firewall changed while a trace's probes were out.

The rules a trace names are read after the probes (the verdicts and rewrites are
explained at the end); an engine that adds or removes rules meanwhile (a container
starting, a network created) would make those readings describe rules the probes
never met.  So the ruleset's text is fingerprinted in each namespace on the path
before the first probe and again after the last, and a change becomes a note.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError
from flowtrace.model import Namespace

_COUNTERS = re.compile(r"\[\d+:\d+\]")


def fingerprint() -> str | None:
    """The ruleset of the calling thread's namespace, hashed (None: nothing can read it).

    `nft -s list ruleset` shows iptables-nft's tables too; iptables-legacy's are added
    from iptables-legacy-save when the namespace has x_tables tables.
    """
    texts = []
    nft = shutil.which("nft")
    if nft is not None:
        texts.append(_output([nft, "-s", "list", "ruleset"]))
    else:
        save = shutil.which("iptables-save")
        texts.append(_output([save]) if save else None)
    legacy = shutil.which("iptables-legacy-save")
    if legacy is not None and _legacy_tables():
        texts.append(_output([legacy]))
    known = [t for t in texts if t is not None]
    if not known:
        return None
    lines = [
        _COUNTERS.sub("", line)
        for t in known
        for line in t.splitlines()
        if not line.startswith("#")
    ]  # iptables-save's policy counters move with every packet
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _legacy_tables() -> bool:
    try:
        with open("/proc/thread-self/net/ip_tables_names") as names:
            return bool(names.read().split())
    except OSError:
        return False


@dataclass
class RulesWatch:
    """Fingerprints of the namespaces on a path, taken before the probes."""

    before: dict[str, tuple[Namespace, str | None]] = field(default_factory=dict)

    @classmethod
    def start(cls, namespaces: Iterable[Namespace]) -> RulesWatch:
        watch = cls()
        for ns in namespaces:
            if ns.path not in watch.before:
                watch.before[ns.path] = (ns, _read(ns))
        return watch

    def changes(self) -> list[str]:
        """A note for each namespace whose rules differ now from before the probes."""
        notes = []
        for ns, first in self.before.values():
            if first is None:
                continue
            now = _read(ns)
            if now is not None and now != first:
                notes.append(
                    f"the firewall rules of {ns.label} changed while the probes were out: the "
                    "rules named for it were read afterwards and may not be the ones the "
                    "probes met"
                )
        return notes


def _read(ns: Namespace) -> str | None:
    try:
        return run_in_netns(ns.path, fingerprint)
    except (FlowtraceError, OSError):
        return None  # the namespace vanished: nothing to compare

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
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError
from flowtrace.model import Namespace
from flowtrace.topology.nftrace import is_flowtraces

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
        for line in without_tracing_tables(t).splitlines()
        if not line.startswith("#")
    ]  # iptables-save's policy counters move with every packet
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def without_tracing_tables(text: str) -> str:
    """`nft list ruleset` without the tables `--rules kernel` runs make and remove (this
    run's own come after the first fingerprint and go before the second; another run's
    come and go at any time): they change no packet's way."""
    kept, inside = [], False
    for line in text.splitlines():
        words = line.split()
        if not inside and len(words) >= 3 and words[0] == "table" and is_flowtraces(words[2]):
            inside = not line.rstrip().endswith("}")
            continue
        if inside:
            inside = line != "}"
            continue
        kept.append(line)
    return "\n".join(kept)


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
    _reading: threading.Thread | None = field(default=None, repr=False)
    _failed: list[BaseException] = field(default_factory=list, repr=False)

    @classmethod
    def start(cls, namespaces: Iterable[Namespace]) -> RulesWatch:
        """The fingerprints, read now."""
        watch = cls.begin(namespaces)
        watch.ready()
        return watch

    @classmethod
    def begin(cls, namespaces: Iterable[Namespace]) -> RulesWatch:
        """Start reading the fingerprints in the background (while the capture starts);
        `ready()` waits for them, and must come before the first probe."""
        watch = cls()
        unique = {ns.path: ns for ns in namespaces}

        def read() -> None:
            try:
                for path, found in _read_all(list(unique.values())).items():
                    watch.before[path] = (unique[path], found)
            except BaseException as exc:  # raised by ready(), in the caller
                watch._failed.append(exc)

        watch._reading = threading.Thread(target=read, name="rules-watch", daemon=True)
        watch._reading.start()
        return watch

    def ready(self) -> None:
        """Wait for the fingerprints `begin()` started reading."""
        if self._reading is not None:
            self._reading.join()
            self._reading = None
        if self._failed:
            raise self._failed[0]

    def changes(self) -> list[str]:
        """A note for each namespace whose rules differ now from before the probes."""
        self.ready()
        notes = []
        asked = [ns for ns, first in self.before.values() if first is not None]
        again = _read_all(asked)
        for ns, first in self.before.values():
            if first is None:
                continue
            now = again[ns.path]
            if now is not None and now != first:
                notes.append(
                    f"the firewall rules of {ns.label} changed while the probes were out: the "
                    "rules named for it were read afterwards and may not be the ones the "
                    "probes met"
                )
        return notes


def _read_all(namespaces: list[Namespace]) -> dict[str, str | None]:
    """Each namespace's fingerprint, read side by side (one reader process each, 7-10 ms
    on the 2-core VM: one after the other they were 40 ms of a one-probe trace)."""
    found: dict[str, str | None] = {}
    failed: list[BaseException] = []

    def one(ns: Namespace) -> None:
        try:
            found[ns.path] = _read(ns)
        except BaseException as exc:  # raised in the caller, as one after the other did
            failed.append(exc)

    threads = [threading.Thread(target=one, args=(ns,), daemon=True) for ns in namespaces[1:]]
    for thread in threads:
        thread.start()
    if namespaces:
        one(namespaces[0])
    for thread in threads:
        thread.join()
    if failed:
        raise failed[0]
    return found


def _read(ns: Namespace) -> str | None:
    try:
        return run_in_netns(ns.path, fingerprint)
    except (FlowtraceError, OSError):
        return None  # the namespace vanished: nothing to compare

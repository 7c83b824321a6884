"""The resolver's files, parsed: /etc/hosts and /etc/resolv.conf (pure text in, values out).

One parser per format, shared by `flowtrace dns` (what a container's resolver would
do) and the lab (which host addresses a new network must not cover).
"""

from __future__ import annotations


def hosts_entries(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """(address, names) of each entry of an /etc/hosts text, in file order."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) >= 2:
            found.append((words[0], tuple(words[1:])))
    return found


def hosts_lookup(text: str, name: str, family: int = 4) -> str | None:
    """The address /etc/hosts gives `name` (case-insensitive), or None: one of `family`
    (4 for an A lookup, 6 for AAAA), as the C resolver answers from the file."""
    wanted = name.rstrip(".").lower()
    found = [ip for ip, names in hosts_entries(text) if wanted in (n.lower() for n in names)]
    found = [ip for ip in found if (":" in ip) == (family == 6)]
    return found[0] if found else None


def resolv_nameservers(text: str) -> tuple[str, ...]:
    """The `nameserver` addresses of a resolv.conf text, in order, as dnspython reads them
    (it skips what is not an address, as the C resolver does)."""
    import io

    import dns.resolver

    resolver = dns.resolver.Resolver(configure=False)
    try:
        resolver.read_resolv_conf(io.StringIO(text))
    except dns.resolver.NoResolverConfiguration:
        return ()
    return tuple(str(ns) for ns in resolver.nameservers)

"""Reading a namespace's rules from the kernel: the one part of netfilter that touches it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError, MissingToolError, NotRootError
from flowtrace.topology.netfilter.iptables_save import parse_iptables_save
from flowtrace.topology.netfilter.rules import NatRuleset

if TYPE_CHECKING:
    import subprocess


def read_ruleset(netns_path: str, ipv6: bool = False) -> NatRuleset:
    """The iptables rules of the namespace at `netns_path` (iptables-save run inside it)."""
    import shutil
    import subprocess  # here, not above: a ping that reads no rules does not pay for them

    program = "ip6tables-save" if ipv6 else "iptables-save"
    path = shutil.which(program)
    if path is None:
        raise MissingToolError(f"{program} is not installed (Debian: apt-get install iptables)")

    def run() -> subprocess.CompletedProcess[str]:
        # A child forked from this thread starts in the namespace the thread entered.
        return subprocess.run([path], capture_output=True, text=True, timeout=30, check=False)

    done = run_in_netns(netns_path, run)
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or ["failed"])[-1]
        if "denied" in message.lower() or "must be root" in message.lower():
            raise NotRootError(f"{program}: {message}: run flowtrace as root")
        raise FlowtraceError(f"{program} in {netns_path}: {message}")
    return parse_iptables_save(done.stdout)

"""Reading a namespace's rules from the kernel: the one part of netfilter that touches it."""

from __future__ import annotations

import shutil
import subprocess

from flowtrace.endpoints.netns import run_in_netns
from flowtrace.errors import FlowtraceError, MissingToolError, NotRootError
from flowtrace.topology.netfilter.iptables_save import parse_iptables_save
from flowtrace.topology.netfilter.rules import NatRuleset


def save_rules(program: str) -> tuple[int, str, str]:
    """(status, output, errors) of iptables-save or ip6tables-save run here.

    Run through run_in_netns: a child forked from that thread starts in the namespace
    the thread entered (on another host, the agent there runs it, from its image).
    """
    path = shutil.which(program)
    if path is None:
        raise MissingToolError(f"{program} is not installed (Debian: apt-get install iptables)")
    done = subprocess.run([path], capture_output=True, text=True, timeout=30, check=False)
    return done.returncode, done.stdout, done.stderr


def read_ruleset(netns_path: str, ipv6: bool = False) -> NatRuleset:
    """The iptables rules of the namespace at `netns_path` (iptables-save run inside it)."""
    program = "ip6tables-save" if ipv6 else "iptables-save"
    status, output, errors = run_in_netns(netns_path, save_rules, program)
    if status != 0:
        message = (errors.strip().splitlines() or ["failed"])[-1]
        if "denied" in message.lower() or "must be root" in message.lower():
            raise NotRootError(f"{program}: {message}: run flowtrace as root")
        raise FlowtraceError(f"{program} in {netns_path}: {message}")
    return parse_iptables_save(output)

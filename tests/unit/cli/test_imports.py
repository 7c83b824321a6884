"""What loading the CLI and a trace's modules imports: behaviour, not timing.

A one-probe trace is meant to answer in a third of a second, and a third of that went
into imports nobody used (pyroute2's whole package, the Docker SDK with requests and
urllib3, scapy...).  These tests run a fresh interpreter, do what a command does up to
the point named, and list the heavy packages that got imported.  When one of them
fails, import the heavy thing inside the function that needs it (see
flowtrace/topology/netlink.py for pyroute2, flowtrace/endpoints/engine_http.py for
the engine), or say here why the command needs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

#: Never imported by --help, a usage error, or the modules a ping/tcp/udp/path run uses.
#: (ssl is: http.client, which reads the engine's socket, imports it for HTTPS.)
HEAVY = (
    "docker",
    "requests",
    "urllib3",
    "scapy",
    "pandas",
    "matplotlib",
    "numpy",
    "asyncio",
    "pyroute2.ipdb",
    "pyroute2.ndb",
    "pyroute2.iproute",
    "pyroute2.nftables",
    "pyroute2.netlink.nfnetlink.nftsocket",
    "dns",
)


def imported_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter; the HEAVY packages it left in sys.modules."""
    body = textwrap.indent(textwrap.dedent(code).strip(), "    ")
    script = (
        "import json, sys\n"
        f"heavy = {HEAVY!r}\n"
        "try:\n"
        f"{body}\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m in heavy)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_help_imports_nothing_heavy() -> None:
    code = """
    import io, contextlib
    from flowtrace.cli import cli
    with contextlib.redirect_stdout(io.StringIO()):
        cli(["--help"], prog_name="flowtrace")
    """
    assert imported_after(code) == []


def test_a_command_parse_imports_nothing_heavy() -> None:
    # A usage mistake is parsed and refused before the command runs.
    code = """
    import io, contextlib
    from flowtrace.cli import cli
    with contextlib.redirect_stderr(io.StringIO()):
        cli(["ping", "c1", "c2", "--count", "0"], prog_name="flowtrace")
    """
    assert imported_after(code) == []
    code = """
    import io, contextlib
    from flowtrace.cli import cli
    with contextlib.redirect_stdout(io.StringIO()):
        cli(["ping", "--help"], prog_name="flowtrace")
    """
    assert imported_after(code) == []


def test_the_modules_of_a_trace_import_nothing_heavy() -> None:
    # Everything `flowtrace ping/tcp/udp/path` loads before it talks to the kernel, plus
    # pyroute2's message classes as the netlink reads load them.
    code = """
    import flowtrace.api, flowtrace.run.trace, flowtrace.output.terminal, flowtrace.output.jsonout
    import flowtrace.topology.route, flowtrace.endpoints.docker, flowtrace.endpoints.engine_http
    from flowtrace.topology import netlink
    netlink._message_classes()
    netlink.netlink_error()
    """
    assert imported_after(code) == []


def test_a_ping_leaves_ports_proxies_rules_and_the_reader_unloaded() -> None:
    # Published ports, docker-proxy's legs and the firewall's rule model are read only
    # when a destination port, a rewrite or a lost probe asks for them (15 ms of imports);
    # a live run writes its set and never reads one.
    code = """
    import sys, json
    import flowtrace.api, flowtrace.run.trace, flowtrace.output.terminal
    own = ("flowtrace.topology.netfilter", "flowtrace.topology.proxy",
           "flowtrace.topology.published", "flowtrace.run.legs", "flowtrace.pcap.reader",
           "flowtrace.pcap.records", "flowtrace.analyze")
    print(json.dumps(sorted(m for m in sys.modules if m.startswith(own))))
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout) == []

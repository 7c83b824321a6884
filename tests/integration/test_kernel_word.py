"""`--rules kernel` on the real kernel: the probes' nftables trace in every namespace on
the path, the kernel's drop reasons, and nothing left behind on any way out.

Most tests use a private topology of their own, where nobody else changes the rules, so
the ruleset afterwards must equal the ruleset before byte for byte:

    ns s: s0 203.0.113.98/29 ── r0 .97 ┐ ns r: routes, iptables-nft rules
                                    └ r1 .105 ── ns d: d0 203.0.113.106/29

The lab's tests (Docker 20.10's isolation drop, a replied ping, a container killed
mid-run, Docker's embedded DNS) compare the containers' rulesets exactly and look for
tracing tables on the host (other sessions' engines change the host's rules and tables
at any moment).

What the tests make carries the pytest process's pid (namespaces `ftkw-PID-...`, the
victim container's label): a session killed outright (SIGKILL: its finally blocks never
run) leaves them, and the next session removes those whose pid is gone. SIGTERM (a
`timeout`) becomes a KeyboardInterrupt while this module runs, so its fixtures' teardown
runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from test_trace import run_cli

from flowtrace import api
from flowtrace import lab as lab_module
from flowtrace.errors import ExitStatus
from flowtrace.lab import LabState
from flowtrace.run.kernel_word import OWNER_ENV
from flowtrace.topology.kfree import INSTANCE_PREFIX
from flowtrace.topology.nftrace import TABLE_PREFIX

pytestmark = pytest.mark.integration

#: What this module makes is named or labelled with this session's pid.
MINE = f"ftkw-{os.getpid()}"
_MADE_BY = re.compile(r"^ftkw-(\d+)-")
VICTIM_LABEL = "flowtrace.test.ftkw"

S_IP, R_IN, R_OUT, D_IP = "203.0.113.98", "203.0.113.97", "203.0.113.105", "203.0.113.106"
DROPPED_PORT = 9


def sh(command: str) -> str:
    return subprocess.run(command, shell=True, check=True, capture_output=True, text=True).stdout


def ruleset(netns_path: str) -> str:
    """`nft -s list ruleset` in a namespace (counters left out: traffic changes them)."""
    return subprocess.run(
        ["nsenter", f"--net={netns_path}", "nft", "-s", "list", "ruleset"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def tables(netns_path: str) -> list[str]:
    return [line for line in ruleset(netns_path).splitlines() if line.startswith("table ")]


def owners() -> list[int]:
    """Processes flowtrace started to trace (its tracing nft), still alive."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                env = Path(f"/proc/{entry}/environ").read_bytes()
            except OSError:
                continue
            if OWNER_ENV.encode() + b"=" in env:
                found.append(int(entry))
    return found


def instances() -> list[str]:
    """tracefs instances named as flowtrace names its own (seen from a private mount)."""
    listed = sh(
        "unshare --mount --propagation private sh -c "
        "'mount -t tracefs nodev /sys/kernel/tracing && ls /sys/kernel/tracing/instances'"
    )
    return [name for name in listed.split() if name.startswith("flowtrace-")]


def tracefs_holders() -> list[tuple[int, int]]:
    """(pid, owner's pid) of the shells that keep flowtrace's tracefs instances."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"flowtrace-tracefs" in argv and argv[-2].isdigit():
                found.append((int(entry), int(argv[-2])))
    return found


def assert_nothing_left(pid: int | None = None) -> None:
    assert owners() == [], "a tracing nft of flowtrace's is still running"
    for holder, owner in tracefs_holders():
        assert owner != pid and os.path.exists(f"/proc/{owner}"), f"tracefs holder {holder} left"
    left = instances()
    if pid is not None:
        assert f"{INSTANCE_PREFIX}{pid}" not in left
    for name in left:  # another session's run may be under way: only a dead one's is stale
        assert os.path.exists(f"/proc/{name.split('-')[1]}"), f"stale tracefs instance {name}"


def _gone(pid: int) -> bool:
    """No pytest of that pid runs (a pid reused by another program is gone too)."""
    try:
        return b"pytest" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def reap_stale() -> None:
    """Namespaces and containers of earlier sessions of this module that were killed."""
    for line in sh("ip netns list").splitlines():
        name = line.split()[0] if line.split() else ""
        made = _MADE_BY.match(name)
        if made and int(made.group(1)) != os.getpid() and _gone(int(made.group(1))):
            subprocess.run(["ip", "netns", "del", name], check=False)
    if shutil.which("docker") is None:
        return
    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={VICTIM_LABEL}",
         "--format", f'{{{{.ID}}}} {{{{.Label "{VICTIM_LABEL}"}}}}'],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    for line in listed.stdout.splitlines():
        cid, _, owner = line.partition(" ")
        if not owner.isdigit() or (int(owner) != os.getpid() and _gone(int(owner))):
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)


@pytest.fixture(scope="module", autouse=True)
def _teardown_on_sigterm() -> Iterator[None]:
    """SIGTERM (a `timeout` around pytest) ends the session the way Ctrl-C does: the
    fixtures' finally blocks run and remove the namespaces and the container."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Routed:
    s: str
    r: str
    d: str

    def path(self, name: str) -> str:
        return f"/run/netns/{name}"

    @property
    def paths(self) -> list[str]:
        return [self.path(n) for n in (self.s, self.r, self.d)]

    def rulesets(self) -> dict[str, str]:
        return {p: ruleset(p) for p in self.paths}


@pytest.fixture(scope="module")
def routed(root: None) -> Iterator[Routed]:
    if "203.0.113.96" in sh("ip -4 route") or "203.0.113.104" in sh("ip -4 route"):
        pytest.skip("203.0.113.96/28 is routed on this host")
    reap_stale()
    tag = uuid.uuid4().hex[:5]
    t = Routed(f"{MINE}-{tag}-s", f"{MINE}-{tag}-r", f"{MINE}-{tag}-d")
    made: list[str] = []
    try:
        for ns in (t.s, t.r, t.d):
            sh(f"ip netns add {ns}")
            made.append(ns)
            sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
            sh(f"ip -n {ns} link set lo up")
        sh(f"ip -n {t.s} link add s0 type veth peer name r0 netns {t.r}")
        sh(f"ip -n {t.r} link add r1 type veth peer name d0 netns {t.d}")
        for ns, dev, ip in ((t.s, "s0", S_IP), (t.r, "r0", R_IN), (t.r, "r1", R_OUT),
                            (t.d, "d0", D_IP)):  # fmt: skip
            sh(f"ip -n {ns} addr add {ip}/29 dev {dev}")
            sh(f"ip -n {ns} link set {dev} up")
        mac = json.loads(sh(f"ip -n {t.r} -j link show r0"))[0]["address"]
        # ARP is checked against rp_filter too: a strict router would not answer it
        sh(f"ip -n {t.s} neigh replace {R_IN} lladdr {mac} dev s0 nud permanent")
        sh(f"ip -n {t.s} route add default via {R_IN}")
        sh(f"ip -n {t.d} route add default via {R_OUT}")
        sh(f"ip netns exec {t.r} sysctl -qw net.ipv4.ip_forward=1")
        ipt = f"ip netns exec {t.r} iptables-nft"
        sh(f"{ipt} -A FORWARD -p udp --dport {DROPPED_PORT} -m comment --comment ftkw -j DROP")
        sh(f"{ipt} -A FORWARD -p icmp -j ACCEPT")
        yield t
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False)


@contextlib.contextmanager
def monitoring(paths: list[str]) -> Iterator[list[str]]:
    """`nft monitor` in each namespace while the block runs: every table, chain and rule
    added or deleted there (the list is filled with each one's output when it ends)."""
    monitors = [
        subprocess.Popen(
            ["nsenter", f"--net={path}", "nft", "monitor"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for path in paths
    ]
    seen: list[str] = []
    try:
        time.sleep(0.3)  # until they listen
        yield seen
    finally:
        for monitor in monitors:
            monitor.terminate()
            seen.append(monitor.communicate(timeout=10)[0])


def test_without_the_option_nothing_changes_and_with_it_everything_is_put_back(
    routed: Routed,
) -> None:
    before = routed.rulesets()
    with monitoring(routed.paths) as seen:
        plain = run_cli("ping", f"netns:{routed.s}", f"netns:{routed.d}", "--no-record")
    assert plain.returncode == 0, plain.stderr
    assert seen == ["", "", ""]  # not one change, anywhere

    with monitoring([routed.path(routed.r)]) as seen:
        shown = run_cli(
            "ping", f"netns:{routed.s}", f"netns:{routed.d}", "--no-record", "--rules", "kernel"
        )
    assert shown.returncode == 0, shown.stderr
    assert f"add table inet {TABLE_PREFIX}" in seen[0]  # the positive control
    assert f"delete table inet {TABLE_PREFIX}" in seen[0]
    lines = shown.stdout.splitlines()
    assert f"the kernel's word (nftables trace in {routed.s}, {routed.r}, {routed.d}; " in (
        shown.stdout
    )
    assert f"  {routed.r} forward (r0 -> r1):" in lines
    assert "      -A FORWARD -p icmp -j ACCEPT   => accept" in lines
    assert routed.rulesets() == before
    assert_nothing_left()


def test_a_rule_drop_is_the_kernels_own_and_agrees_with_the_verdict(
    routed: Routed, tmp_path: Path
) -> None:
    before = routed.rulesets()
    result = run_cli(
        "udp", f"netns:{routed.s}", f"netns:{routed.d}:{DROPPED_PORT}",
        "-o", str(tmp_path / "set"), "--rules", "kernel", "--timeout", "0.5", "--json",
    )  # fmt: skip
    assert result.returncode == ExitStatus.NO_REPLY, result.stderr
    doc = json.loads(result.stdout)
    rule = f"-A FORWARD -p udp -m udp --dport {DROPPED_PORT} -m comment --comment ftkw -j DROP"
    assert doc["verdict"]["probes"][0]["rule"] == rule
    kernel = doc["meta"]["kernel"]
    (request,) = [p for p in kernel["packets"] if p["direction"] == "request"]
    forward = next(h for h in request["hooks"] if (h["netns"], h["hook"]) == (routed.r, "forward"))
    assert forward["dropped_by"] == rule
    (check,) = kernel["checks"]
    assert check["agree"] is True and check["kernel"] == rule
    assert "NETFILTER_DROP" in {d["reason"] for d in kernel["drops"]}
    assert api.load(tmp_path / "set").meta["kernel"] == kernel  # the manifest keeps it
    assert routed.rulesets() == before


def test_ctrl_c_and_an_error_leave_the_rules_as_they_were(routed: Routed, tmp_path: Path) -> None:
    before = routed.rulesets()
    command = [
        str(Path(__file__).parents[2] / ".venv/bin/flowtrace"),
        "ping", f"netns:{routed.s}", f"netns:{routed.d}",
        "-c", "50", "-i", "0.1", "--no-record", "--rules", "kernel",
    ]  # fmt: skip
    running = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while not owners() and time.monotonic() < deadline:  # until it traces
        time.sleep(0.05)
    time.sleep(0.5)
    running.send_signal(signal.SIGINT)
    out, err = running.communicate(timeout=30)
    assert running.returncode == ExitStatus.INTERRUPTED, err
    assert "the kernel's word" in out  # what was traced before Ctrl-C is shown
    assert routed.rulesets() == before
    assert_nothing_left(running.pid)

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "manifest.json").write_text("{}")
    failed = run_cli(
        "ping", f"netns:{routed.s}", f"netns:{routed.d}", "-o", str(taken), "--rules", "kernel"
    )
    assert failed.returncode == ExitStatus.ERROR, failed.stderr  # raised inside the run
    assert failed.stderr.startswith("flowtrace: ") and "already holds" in failed.stderr
    assert routed.rulesets() == before
    assert_nothing_left()


def test_a_drop_no_rule_makes_is_told_from_the_kernels_state(routed: Routed) -> None:
    """The router's route back to the source leaves by the other side, rp_filter strict."""
    r = f"ip netns exec {routed.r}"
    sh(f"ip -n {routed.r} route add {S_IP}/32 via {D_IP} dev r1")
    sh(f"{r} sysctl -qw net.ipv4.conf.r0.rp_filter=1")
    try:
        plain = run_cli("ping", f"netns:{routed.s}", f"netns:{routed.d}", "--no-record",
                        "--timeout", "0.5")  # fmt: skip
        assert plain.returncode == ExitStatus.NO_REPLY, plain.stderr
        lost = f"probe 1: lost after {routed.r}/r0 (dropped in {routed.r}, by no rule: the "
        assert lost + "reverse-path filter refused it" in plain.stdout
        assert "net.ipv4.conf.r0.rp_filter = 1" in plain.stdout
        kernel = api.trace(
            f"netns:{routed.s}", f"netns:{routed.d}", timeout=0.5, record=False, rules="kernel"
        ).meta["kernel"]
        assert isinstance(kernel, dict)
        reasons = {d["reason"] for d in kernel["drops"] if d["probe"] == 0}
        assert "IP_RPFILTER" in reasons
        assert kernel["checks"][0]["where"] == f"{routed.r} prerouting"
    finally:
        sh(f"{r} sysctl -qw net.ipv4.conf.r0.rp_filter=0")
        sh(f"ip -n {routed.r} route del {S_IP}/32")


def test_forwarding_off_is_the_kernels_own_drop(routed: Routed) -> None:
    sh(f"ip netns exec {routed.r} sysctl -qw net.ipv4.ip_forward=0")
    try:
        shown = run_cli("ping", f"netns:{routed.s}", f"netns:{routed.d}", "--no-record",
                        "--timeout", "0.5", "--rules", "kernel")  # fmt: skip
    finally:
        sh(f"ip netns exec {routed.r} sysctl -qw net.ipv4.ip_forward=1")
    assert shown.returncode == ExitStatus.NO_REPLY, shown.stderr
    assert (
        f"probe 1: lost after {routed.r}/r0 (dropped in {routed.r}, by no rule: forwarding is "
        "off on r0 (net.ipv4.conf.r0.forwarding = 0)" in shown.stdout
    )
    assert (
        f"the kernel's trace of the request ends at {routed.r} prerouting, where no rule or "
        "policy dropped it: the kernel did, by itself" in shown.stdout
    )
    assert "    IP_INADDRERRORS at ip_error+" in shown.stdout
    assert_nothing_left()


def test_a_blackhole_route_is_not_taken_for_the_reverse_path_filter(routed: Routed) -> None:
    """The input lookup refuses a blackhole with EINVAL, as it refuses rp_filter (on)."""
    sh(f"ip -n {routed.r} route add blackhole {D_IP}/32")
    sh(f"ip netns exec {routed.r} sysctl -qw net.ipv4.conf.r0.rp_filter=1")
    try:
        shown = run_cli("ping", f"netns:{routed.s}", f"netns:{routed.d}", "--no-record",
                        "--timeout", "0.5", "--rules", "kernel")  # fmt: skip
    finally:
        sh(f"ip netns exec {routed.r} sysctl -qw net.ipv4.conf.r0.rp_filter=0")
        sh(f"ip -n {routed.r} route del blackhole {D_IP}/32")
    assert shown.returncode == ExitStatus.NO_REPLY, shown.stderr
    assert (
        f"probe 1: lost after {routed.r}/r0 (dropped in {routed.r}, by no rule: its route to "
        f"{D_IP} is a blackhole route, which drops silently)" in shown.stdout
    )
    assert "    NOT_SPECIFIED at ip_error+" in shown.stdout and "a blackhole route" in shown.stdout
    assert_nothing_left()


def test_a_next_hop_that_does_not_answer_arp(routed: Routed) -> None:
    sh(f"ip -n {routed.d} link set d0 arp off")
    sh(f"ip -n {routed.r} neigh flush dev r1")  # an entry from earlier tests: ask again
    try:
        plain = run_cli("ping", f"netns:{routed.s}", f"netns:{routed.d}", "--no-record",
                        "--timeout", "0.5")  # fmt: skip
    finally:
        sh(f"ip -n {routed.d} link set d0 arp on")
        sh(f"ip -n {routed.r} neigh flush dev r1")
    assert plain.returncode == ExitStatus.NO_REPLY, plain.stderr
    assert (
        f"probe 1: lost after {routed.r}/r0 (not sent on in {routed.r}, by no rule: the next "
        f"hop {D_IP} on r1 does not answer ARP (its neighbour entry is INCOMPLETE)" in plain.stdout
    )


def test_flowtrace_killed_outright_leaves_nothing(routed: Routed) -> None:
    """SIGKILL: no handler, no finally; the holders see their stdin close and clean up."""
    before = routed.rulesets()
    command = [
        str(Path(__file__).parents[2] / ".venv/bin/flowtrace"),
        "ping", f"netns:{routed.s}", f"netns:{routed.d}",
        "-c", "50", "-i", "0.1", "--no-record", "--rules", "kernel",
    ]  # fmt: skip
    running = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not owners() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert owners(), "flowtrace did not start tracing"
    time.sleep(0.5)
    running.kill()
    running.wait(timeout=10)
    deadline = time.monotonic() + 10
    while (owners() or any(o == running.pid for _, o in tracefs_holders())) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert routed.rulesets() == before
    assert_nothing_left(running.pid)


def test_without_nft_the_option_is_one_line_and_changes_nothing(routed: Routed) -> None:
    before = routed.rulesets()
    result = run_cli(
        "ping", f"netns:{routed.s}", f"netns:{routed.d}", "--rules", "kernel", "--no-record",
        env={"PATH": "/usr/bin:/bin"},  # nft lives in /usr/sbin
    )  # fmt: skip
    assert result.returncode == ExitStatus.MISSING_TOOL
    assert result.stderr.strip() == (
        "flowtrace: --rules kernel needs nft (Debian: apt-get install nftables)"
    )
    assert routed.rulesets() == before


# --- the lab: Docker 20.10 ----------------------------------------------------------------


def _lab_state(lab: LabState) -> tuple[dict[str, str], list[str]]:
    """The containers' rulesets, and the host's tables of flowtrace's tracing (other
    sessions' engines add and remove the host's other tables at any moment: netavark's
    `inet netavark` comes and goes with a Podman lab)."""
    containers = {
        name: ruleset(lab.container(name).netns or "") for name in ("c1", "c2", "c3", "c4")
    }
    return containers, [t for t in tables("/proc/self/ns/net") if TABLE_PREFIX in t]


def test_the_kernel_names_dockers_isolation_drop(lab_now: LabState) -> None:
    before = _lab_state(lab_now)
    ftlab = lab_now.network(lab_module.LAB_NETWORK).bridge
    rule = f"-A DOCKER-ISOLATION-STAGE-2 -o {ftlab} -j DROP"
    shown = run_cli("ping", "c1", "c3", "--timeout", "0.5", "--no-record", "--rules", "kernel")
    assert shown.returncode == ExitStatus.NO_REPLY, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"  host forward (docker0 -> {ftlab}):" in lines
    assert f"      {rule}   => drop" in lines
    assert f"  the kernel agrees: dropped in host forward by `{rule}`" in lines
    assert any(line.strip().startswith("NETFILTER_DROP at ") for line in lines)
    assert _lab_state(lab_now) == before
    assert not [t for t in before[1] if TABLE_PREFIX in t]
    assert_nothing_left()


def test_a_replied_ping_shows_the_accepts_in_a_container_without_nft(lab_now: LabState) -> None:
    c1 = lab_now.container("c1")
    no_nft = subprocess.run(["docker", "exec", "c1", "which", "nft"], capture_output=True)
    assert no_nft.returncode != 0  # the host's nft traces inside it
    trace = api.trace("c1", "c2", record=False, rules="kernel")
    assert trace.verdicts[0].outcome == "replied"
    kernel = trace.meta["kernel"]
    assert isinstance(kernel, dict)
    by_way = {p["direction"]: p for p in kernel["packets"] if p["probe"] == 0}
    request_forward = next(h for h in by_way["request"]["hooks"] if h["hook"] == "forward")
    last = request_forward["chains"][-1]["rules"][-1]
    assert (last["rule"], last["verdict"]) == ("-A FORWARD -i docker0 -o docker0 -j ACCEPT",
                                               "accept")  # fmt: skip
    reply_forward = next(h for h in by_way["reply"]["hooks"] if h["hook"] == "forward")
    assert (
        "--ctstate RELATED,ESTABLISHED -j ACCEPT"
        in reply_forward["chains"][-1]["rules"][-1]["rule"]
    )
    assert [h["netns"] for h in by_way["request"]["hooks"]][:2] == ["c1", "c1"]
    assert not kernel["checks"] or all(c["agree"] is not False for c in kernel["checks"])
    assert c1.netns and TABLE_PREFIX not in ruleset(c1.netns)


def test_a_container_killed_mid_run_leaves_nothing(lab_now: LabState) -> None:
    reap_stale()
    client = docker.from_env()
    name = f"{MINE}-victim-{uuid.uuid4().hex[:5]}"
    victim = client.containers.run(
        lab_module.IMAGE, ["sleep", "infinity"], name=name, detach=True,
        labels={"flowtrace.test": "ftkw", VICTIM_LABEL: str(os.getpid())},
    )  # fmt: skip
    try:
        before = _lab_state(lab_now)
        command = [
            str(Path(__file__).parents[2] / ".venv/bin/flowtrace"),
            "ping", "c1", name, "-c", "30", "-i", "0.1", "--timeout", "0.3",
            "--no-record", "--rules", "kernel",
        ]  # fmt: skip
        running = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 15
        while not owners() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        victim.kill()
        _, err = running.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert running.returncode in (ExitStatus.NO_REPLY, ExitStatus.OK, ExitStatus.ERROR), err
        assert _lab_state(lab_now) == before
        assert_nothing_left(running.pid)
    finally:
        victim.remove(force=True)


def test_dockers_embedded_dns_rewrite_is_the_kernels_too(lab_now: LabState) -> None:
    result = run_cli("dns", "c3", "c4", "--no-record", "--rules", "kernel", "--json")
    assert result.returncode == 0, result.stderr
    kernel = json.loads(result.stdout)["kernel"]
    (check,) = kernel["checks"]
    assert check["about"] == "DNAT" and check["agree"] is True and check["where"] == "c3 output"
    assert [p["direction"] for p in kernel["packets"]] == ["request", "reply"]
    assert_nothing_left()


# --- the replicas: Docker 29's rules, nftables and iptables backends --------------------


@pytest.fixture(params=["docker-29.7-nftables", "docker-29.7-iptables"])
def docker29(request: pytest.FixtureRequest, root: None) -> Iterator[str]:
    from flowtrace.lab import replica

    with replica.locked():
        try:
            replica.build(request.param)
            yield request.param
        finally:
            replica.remove()
            assert replica.present() == [], "a replica namespace was left behind"


def test_docker_29s_direct_access_drop_is_the_kernels_own(docker29: str) -> None:
    """A cross-bridge ping: the model names Docker 28's raw drop, the kernel agrees, in
    nftables' terms (table, chain, handle) or iptables-save's; every namespace's ruleset
    is the same afterwards."""
    paths = [f"/run/netns/{ns}" for ns in ("ftfw-h", "ftfw-c1", "ftfw-c3")]
    before = {p: ruleset(p) for p in paths}
    shown = run_cli("ping", "netns:ftfw-c1", "netns:ftfw-c3", "--no-record", "--timeout", "0.5",
                    "--rules", "kernel")  # fmt: skip
    assert shown.returncode == ExitStatus.NO_REPLY, shown.stderr
    lines = shown.stdout.splitlines()
    if docker29.endswith("nftables"):  # a handle is the kernel's to give
        text = 'ip daddr 10.247.1.2 iifname != "ftfw-b1" counter drop comment "DROP DIRECT ACCESS"'
        chain = "table ip docker-bridges chain raw-PREROUTING"
        named = re.search(rf"by `({chain} handle (\d+): [^`]*)`", shown.stdout)
        assert named is not None and named.group(1).endswith(text), shown.stdout
        rule, handle = named.group(1), named.group(2)
        met = f"      handle {handle}: {text}   => drop"
    else:
        rule = "-A PREROUTING -d 10.247.1.2/32 ! -i ftfw-b1 -j DROP"
        met = f"      {rule}   => drop"
    assert f"probe 1: lost after ftfw-h/vethc1 (dropped in ftfw-h by `{rule}`" in shown.stdout
    assert "  ftfw-h prerouting (in ftfw-d0):" in lines
    assert met in lines
    assert f"  the kernel agrees: dropped in ftfw-h prerouting by `{rule}`" in lines
    assert not any("not evaluated" in line for line in lines)  # nat comes after raw's drop
    assert {p: ruleset(p) for p in paths} == before
    assert_nothing_left()

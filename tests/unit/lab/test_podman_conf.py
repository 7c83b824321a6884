"""The containers.conf flowtrace hands the lab's podman commands in a sandbox whose hard
limits are below Podman's defaults: the machine's files merged, plus default_ulimits."""

from __future__ import annotations

import tomllib

from flowtrace.lab.podman_conf import dumps, merge, needed_ulimits, with_ulimits

#: /usr/share/containers/containers.conf of Debian 12's golang-github-containers-common,
#: its settings (comments left out), and an /etc override.
DEBIAN = """
[containers]
default_capabilities = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL",
  "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"]
default_sysctls = ["net.ipv4.ping_group_range=0 0"]
[secrets]
[secrets.opts]
[network]
[engine]
[engine.runtimes]
"""
OVERRIDE = """
[containers]
default_ulimits = ["nofile=2048:4096", "core=0:0"]
log_size_max = -1
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
"""


def test_ulimits_only_where_podmans_defaults_do_not_fit() -> None:
    assert needed_ulimits(1048576, 4194304) is None
    assert needed_ulimits(-1, -1) is None  # RLIM_INFINITY
    assert needed_ulimits(20000, 96363) == ["nofile=20000:20000", "nproc=32768:32768"]
    assert needed_ulimits(2_000_000, 1000) == ["nofile=1048576:1048576", "nproc=1000:1000"]


def test_the_machines_files_merged_in_order_with_the_limits_added() -> None:
    merged = merge([tomllib.loads(DEBIAN), tomllib.loads(OVERRIDE)])
    assert merged["engine"] == {
        "runtimes": {},
        "cgroup_manager": "cgroupfs",
        "events_logger": "file",
    }
    limited = with_ulimits(merged, ["nofile=20000:20000", "nproc=32768:32768"])
    containers = limited["containers"]
    assert containers["default_ulimits"] == ["core=0:0", "nofile=20000:20000", "nproc=32768:32768"]
    assert containers["default_sysctls"] == ["net.ipv4.ping_group_range=0 0"]
    assert merged["containers"]["default_ulimits"] == [
        "nofile=2048:4096",
        "core=0:0",
    ]  # not changed


def test_written_toml_reads_back_the_same() -> None:
    config = with_ulimits(merge([tomllib.loads(DEBIAN), tomllib.loads(OVERRIDE)]), ["nproc=1:1"])
    config["engine"]["env"] = ['A="quoted"', "back\\slash"]
    config["engine"]["enabled"] = True
    assert tomllib.loads(dumps(config)) == config
    assert dumps({"containers": {"x": 1}}).startswith("[containers]\nx = 1\n")

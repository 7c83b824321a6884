"""Podman's ulimits inside a sandbox whose hard limits are lower than Podman's defaults.

Rootful Podman gives every container RLIMIT_NOFILE 1048576; where flowtrace's own hard
limit is lower and it lacks CAP_SYS_RESOURCE (containers in a sandbox), runc fails
with "error setting rlimit".  A container takes `--ulimit`, but a pod's infra
container takes no such option in Podman 4.3, only containers.conf's
`default_ulimits`.  So the lab's podman commands run with CONTAINERS_CONF naming a
file of flowtrace's own (under /run/flowtrace, removed after the command): the
machine's containers.conf files merged in Podman's order, plus `default_ulimits`
within the hard limits.  Nothing of the machine's configuration is changed.  Where
the limits suffice, nothing is written and Podman reads its own files.
"""

from __future__ import annotations

import os
import resource
import tempfile
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Podman 4.3's rootful defaults (libpod/define.RLimitDefaultValue; nproc likewise).
PODMAN_NOFILE = 1048576
PODMAN_NPROC = 4194304
#: A container's process count needs no more than this.
LAB_NPROC = 32768
#: Where Podman 4.3 (containers/common 0.50) reads containers.conf, in order.
SYSTEM_FILES = ("/usr/share/containers/containers.conf", "/etc/containers/containers.conf")
DROP_IN_DIR = "/etc/containers/containers.conf.d"
RUN_DIR = "/run/flowtrace"


def needed_ulimits(nofile_hard: int, nproc_hard: int) -> list[str] | None:
    """`default_ulimits` values within the hard limits, None when Podman's defaults fit.
    A limit of RLIM_INFINITY (or below 0) has no bound."""
    nofile_hard = PODMAN_NOFILE if _unbounded(nofile_hard) else nofile_hard
    nproc_hard = PODMAN_NPROC if _unbounded(nproc_hard) else nproc_hard
    if nofile_hard >= PODMAN_NOFILE and nproc_hard >= PODMAN_NPROC:
        return None
    nofile = min(nofile_hard, PODMAN_NOFILE)
    nproc = min(nproc_hard, LAB_NPROC)
    return [f"nofile={nofile}:{nofile}", f"nproc={nproc}:{nproc}"]


def _unbounded(limit: int) -> bool:
    return limit < 0 or limit == resource.RLIM_INFINITY


def merge(configs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """containers.conf files merged as Podman reads them: a later file's keys win."""
    merged: dict[str, Any] = {}
    for config in configs:
        _merge_into(merged, config)
    return merged


def _merge_into(into: dict[str, Any], more: Mapping[str, Any]) -> None:
    for key, value in more.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge_into(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _merge_into(into[key], value)
        else:
            into[key] = value


def with_ulimits(config: Mapping[str, Any], ulimits: Sequence[str]) -> dict[str, Any]:
    """`config` with [containers] default_ulimits set (the machine's own, if it has some,
    with nofile and nproc put within the limits)."""
    merged = merge([config])
    containers = merged.setdefault("containers", {})
    own = [
        u for u in containers.get("default_ulimits", []) if not u.startswith(("nofile=", "nproc="))
    ]
    containers["default_ulimits"] = own + list(ulimits)
    return merged


def dumps(config: Mapping[str, Any]) -> str:
    """TOML for containers.conf's kinds of values: tables of strings, numbers, booleans
    and lists of them (tomllib reads, the standard library writes no TOML)."""
    lines: list[str] = []
    _dump_table(config, [], lines)
    return "\n".join(lines).strip() + "\n"


def _dump_table(table: Mapping[str, Any], path: list[str], lines: list[str]) -> None:
    plain = {k: v for k, v in table.items() if not isinstance(v, Mapping)}
    tables = {k: v for k, v in table.items() if isinstance(v, Mapping)}
    if path and (plain or not tables):
        lines.append(f"[{'.'.join(_key(p) for p in path)}]")
    for key, value in plain.items():
        lines.append(f"{_key(key)} = {_value(value)}")
    if plain:
        lines.append("")
    for key, value in tables.items():
        _dump_table(value, [*path, key], lines)


def _key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "").isalnum()
    return key if bare else _string(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} as containers.conf TOML")


def _string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def machine_configs() -> list[dict[str, Any]]:
    """The machine's containers.conf files, parsed, in the order Podman reads them."""
    paths = [Path(p) for p in SYSTEM_FILES]
    drop_ins = Path(DROP_IN_DIR)
    if drop_ins.is_dir():
        paths += sorted(p for p in drop_ins.iterdir() if p.suffix == ".conf")
    configs = []
    for path in paths:
        try:
            configs.append(tomllib.loads(path.read_text()))
        except (OSError, tomllib.TOMLDecodeError):
            continue
    return configs


def _remove_stale() -> None:
    """Files of lab commands that were killed before they could remove theirs."""
    for path in Path(RUN_DIR).glob("lab-containers-*-*.conf"):
        pid = path.name.split("-")[2]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            path.unlink(missing_ok=True)


@contextmanager
def podman_env() -> Iterator[dict[str, str]]:
    """The environment for the lab's podman commands (CONTAINERS_CONF when needed)."""
    env = dict(os.environ)
    ulimits = needed_ulimits(
        resource.getrlimit(resource.RLIMIT_NOFILE)[1], resource.getrlimit(resource.RLIMIT_NPROC)[1]
    )
    if ulimits is None or os.environ.get("CONTAINERS_CONF"):
        yield env
        return
    os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
    _remove_stale()
    text = dumps(with_ulimits(merge(machine_configs()), ulimits))
    with tempfile.NamedTemporaryFile(
        "w", dir=RUN_DIR, prefix=f"lab-containers-{os.getpid()}-", suffix=".conf"
    ) as conf:
        conf.write(text)
        conf.flush()
        env["CONTAINERS_CONF"] = conf.name
        yield env

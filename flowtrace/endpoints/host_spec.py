"""How a trace names other hosts: `NAME@HOST` endpoints and `--host ALIAS=URL`.

Pure parsing, apart from endpoints.hosts (which connects to the hosts and runs their
helpers): every trace asks whether its endpoints name a host, and a trace on this host
alone should not load what connecting to others takes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from flowtrace.errors import ExitStatus, FlowtraceError

#: Host names as endpoints write them (and Docker contexts are named).
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class HostSpec:
    """How to reach one host's engine."""

    name: str
    url: str
    #: The Docker SDK's TLSConfig for tcp:// with TLS (from the context), else None.
    tls: Any = None
    #: In words: "--host hostb=unix:///..." or "docker context hostb".
    selected_by: str = ""

    @property
    def local_socket(self) -> bool:
        return self.url.startswith("unix://")


def split_host(spec: str) -> tuple[str, str | None]:
    """`c2@hostb` -> ("c2", "hostb"); `c2` -> ("c2", None).  A port stays with the name
    part's caller (`split_port` runs first)."""
    name, sep, host = spec.rpartition("@")
    if not sep:
        return spec, None
    if not host or not _HOST_NAME.match(host):
        raise FlowtraceError(
            f"bad host {host!r} in {spec!r}: write NAME@HOST with HOST a Docker context or a "
            "--host alias",
            ExitStatus.USAGE,
        )
    if not name:
        raise FlowtraceError(
            f"{spec!r} names no endpoint before @: write NAME@HOST (c2@{host}, host@{host})",
            ExitStatus.USAGE,
        )
    return name, host


def parse_host_option(text: str) -> HostSpec:
    """`--host ALIAS=URL`: a URL the Docker SDK takes (unix://, tcp://, ssh://) or a path."""
    alias, sep, url = text.partition("=")
    alias, url = alias.strip(), url.strip()
    if not sep or not alias or not url:
        raise FlowtraceError(
            f"bad --host {text!r}: write ALIAS=URL, e.g. hostb=unix:///run/hostb/docker.sock "
            "or hostb=ssh://root@hostb",
            ExitStatus.USAGE,
        )
    if not _HOST_NAME.match(alias):
        raise FlowtraceError(
            f"bad host alias {alias!r}: letters, digits, '.', '_' and '-' only", ExitStatus.USAGE
        )
    if url.startswith("/"):
        url = f"unix://{url}"
    if not re.match(r"^(unix|tcp|ssh|http|https)://", url):
        raise FlowtraceError(
            f"bad URL {url!r} for host {alias}: give unix://PATH, tcp://HOST:PORT or "
            "ssh://USER@HOST (or a socket's path)",
            ExitStatus.USAGE,
        )
    return HostSpec(alias, url, None, f"--host {alias}={url}")

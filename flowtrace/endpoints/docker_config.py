"""The docker CLI's configuration, read as the CLI and the Docker SDK read it, without
importing the SDK (its import, with requests and urllib3, is 0.11-0.15 s of a trace).

config.json (`currentContext`) and each context's meta.json are small JSON files; what
this costs is the 60 lines below, kept equal to the SDK's readers by tests
(tests/unit/endpoints/test_docker_config.py).  A context with TLS material, or one that
skips TLS verification, is read by the SDK's ContextAPI, which builds its TLSConfig.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

DOCKER_SOCKET = "unix:///var/run/docker.sock"


def docker_config_file(environ: Mapping[str, str] | None = None) -> str | None:
    """The docker CLI's config file, where the Docker SDK looks for it: $DOCKER_CONFIG/
    config.json, ~/.docker/config.json, ~/.dockercfg (None when there is none)."""
    environ = os.environ if environ is None else environ
    home = os.path.expanduser("~")
    named = environ.get("DOCKER_CONFIG")
    paths = [
        os.path.join(named, "config.json") if named else "",
        os.path.join(home, ".docker", "config.json"),
        os.path.join(home, ".dockercfg"),
    ]
    return next((path for path in paths if path and os.path.exists(path)), None)


def current_context_name() -> str | None:
    """The config's currentContext, as docker.context.config reads it ("default" when the
    file is missing or unreadable)."""
    path = docker_config_file()
    if path is None:
        return "default"
    try:
        with open(path) as f:
            return str(json.load(f).get("currentContext", "default"))
    except Exception:
        return "default"


def docker_context(name: str) -> tuple[str, Any] | None:
    """A context's (host, TLS settings), None when there is none: its meta.json read here,
    as docker.context.Context reads it; one with TLS material through the SDK."""
    if name == "default":
        return DOCKER_SOCKET, None
    # the docker CLI's contexts dir (the SDK looks beside config.json, so not at all
    # when there is no config.json; the CLI makes contexts without one)
    contexts = os.path.join(
        os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker"),
        "contexts",
    )
    key = hashlib.sha256(name.encode()).hexdigest()
    if os.path.isdir(os.path.join(contexts, "tls", key)):
        return _sdk_context(name)
    try:
        with open(os.path.join(contexts, "meta", key, "meta.json")) as f:
            meta = json.load(f)
        endpoints = meta.get("Endpoints") or {}
        orchestrator = (meta.get("Metadata") or {}).get("StackOrchestrator")
        endpoint = endpoints.get("docker" if orchestrator in (None, "", "swarm") else orchestrator)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        return _sdk_context(name)  # the SDK's error says what is wrong with it
    if not isinstance(endpoint, Mapping):
        return "", None
    if endpoint.get("SkipTLSVerify"):
        return _sdk_context(name)
    return str(endpoint.get("Host") or ""), None


def _sdk_context(name: str) -> tuple[str, Any] | None:
    from docker.context import ContextAPI

    ctx = ContextAPI.get_context(name)
    if ctx is None:
        return None
    return ctx.Host or "", ctx.TLSConfig

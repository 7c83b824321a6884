"""Docker contexts as the docker CLI keeps them: ~/.docker/contexts (or $DOCKER_CONFIG's).

`docker context create NAME --docker host=URL` writes
contexts/meta/<sha256 of NAME>/meta.json ({"Name", "Metadata": {"Description"},
"Endpoints": {"docker": {"Host", "SkipTLSVerify"}}}) and, for TLS, the certificates
under contexts/tls/<sha256 of NAME>/docker/.  The Docker SDK's ContextAPI reads the
same files, but finds the folder through ~/.docker/config.json and, on a machine where
that file does not exist (no one ever ran `docker login`), looks in ./contexts of the
current directory instead (docker/context/config.py get_context_dir): so flowtrace
reads and writes the CLI's folder itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DockerContext:
    name: str
    host: str
    description: str = ""
    #: The Docker SDK's TLSConfig when the context keeps certificates, else None.
    tls: Any = None


def config_dir() -> str:
    return os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _meta_file(name: str) -> str:
    return os.path.join(config_dir(), "contexts", "meta", _digest(name), "meta.json")


def _tls_dir(name: str) -> str:
    return os.path.join(config_dir(), "contexts", "tls", _digest(name), "docker")


def _tls(name: str, skip_verify: bool) -> Any:
    folder = _tls_dir(name)
    if not os.path.isdir(folder):
        return None
    from docker.tls import TLSConfig

    files = {n: os.path.join(folder, n) for n in ("ca.pem", "cert.pem", "key.pem")}
    cert = (files["cert.pem"], files["key.pem"]) if os.path.exists(files["cert.pem"]) else None
    ca = files["ca.pem"] if os.path.exists(files["ca.pem"]) else None
    return TLSConfig(client_cert=cert, ca_cert=ca, verify=not skip_verify and ca is not None)


def read_context(name: str) -> DockerContext | None:
    """The context called `name`, or None (`default` is the current engine, not a host)."""
    if name == "default":
        return None
    try:
        with open(_meta_file(name)) as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return None
    endpoint = (meta.get("Endpoints") or {}).get("docker") or {}
    host = str(endpoint.get("Host") or "")
    if not host:
        return None
    description = str((meta.get("Metadata") or {}).get("Description") or "")
    return DockerContext(name, host, description, _tls(name, bool(endpoint.get("SkipTLSVerify"))))


def list_contexts() -> list[DockerContext]:
    """Every context the CLI knows but `default`."""
    folder = os.path.join(config_dir(), "contexts", "meta")
    found = []
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return []
    for entry in entries:
        try:
            with open(os.path.join(folder, entry, "meta.json")) as handle:
                name = str(json.load(handle).get("Name") or "")
        except (OSError, ValueError):
            continue
        context = read_context(name) if name else None
        if context is not None:
            found.append(context)
    return found


def write_context(name: str, host: str, description: str) -> None:
    """A context as `docker context create NAME --description D --docker host=HOST` makes it."""
    path = _meta_file(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    meta = {
        "Name": name,
        "Metadata": {"Description": description},
        "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": False}},
    }
    with open(path, "w") as handle:
        json.dump(meta, handle)


def remove_context(name: str) -> None:
    """As `docker context rm NAME`: its metadata and certificates."""
    for folder in (os.path.dirname(_meta_file(name)), os.path.dirname(_tls_dir(name))):
        shutil.rmtree(folder, ignore_errors=True)

"""The engine's HTTP API on its own socket, for the few reads a trace makes (stdlib only).

A trace asks the engine three things: is it there, what is this container, which
containers run.  The Docker SDK answers them too, but importing it brings requests,
urllib3, ssl and http.cookiejar: 0.11-0.15 s of a 0.6 s ping on the 2-core VM, more
than the trace's own work.  So these reads go over http.client (what the SDK's
transport is built on) to the socket DOCKER_HOST names, unix:// or plain tcp://, on
the engine's unversioned API (its newest).  What this costs: the lines below (a
connection class, status to exception), and TLS or ssh:// engines, which go through
the SDK as before (`docker_client`); the lab, which builds images and containers,
keeps the SDK.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any
from urllib.parse import quote

DEFAULT_HOST = "unix:///var/run/docker.sock"


class EngineError(Exception):
    """The engine answered with an error status (`status`), or could not be reached (0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def plain_endpoint(env: dict[str, str] | None = None) -> str | None:
    """DOCKER_HOST when this module can speak to it (unix://, tcp:// without TLS), else None."""
    env = dict(os.environ) if env is None else env
    host = env.get("DOCKER_HOST") or DEFAULT_HOST
    if env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_CERT_PATH"):
        return None
    if host.startswith(("unix://", "tcp://", "http://")):
        return host
    return None


class EngineAPI:
    """GETs on one engine's API, one connection per request (the engine closes idle ones).

    The method names are the Docker SDK's APIClient's, so a caller can hold either.
    """

    def __init__(self, host: str, timeout: float = 10) -> None:
        self.host = host
        self.timeout = timeout

    def _connection(self) -> http.client.HTTPConnection:
        if self.host.startswith("unix://"):
            return _UnixConnection(self.host.removeprefix("unix://"), self.timeout)
        address = self.host.split("://", 1)[1].rstrip("/")
        return http.client.HTTPConnection(address, timeout=self.timeout)

    def get(self, path: str) -> Any:
        """GET `path`; its JSON, or EngineError (status 0: the engine did not answer)."""
        connection = self._connection()
        try:
            connection.request("GET", path, headers={"Host": "docker"})
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EngineError(0, f"{self.host}: {exc}") from None
        finally:
            connection.close()
        if response.status >= 400:
            try:
                message = str(json.loads(body).get("message", ""))
            except (ValueError, AttributeError):
                message = body.decode(errors="replace").strip()
            raise EngineError(response.status, message or response.reason)
        if response.headers.get_content_type() != "application/json":
            return body.decode(errors="replace")
        return json.loads(body)

    def ping(self) -> bool:
        return self.get("/_ping") == "OK"

    def inspect_container(self, spec: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.get(f"/containers/{quote(spec, safe='')}/json")
        return answer

    def containers(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.get("/containers/json")
        return answer

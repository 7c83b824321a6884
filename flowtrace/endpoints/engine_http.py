"""The engine's HTTP API on its own socket, for the few reads a trace makes (stdlib only).

A trace asks the engine three things: is it there, what is this container, which
containers run.  The Docker SDK answers them too, but importing it brings requests,
urllib3, ssl and http.cookiejar: 0.11-0.15 s of a 0.6 s ping on the 2-core VM, more
than the trace's own work; even http.client brings email's parser and ssl (10-20 ms).
So these reads are one HTTP/1.0 GET each on a plain socket to what DOCKER_HOST names,
unix:// or tcp:// without TLS, on the engine's unversioned API (its newest): the
engine answers and closes, so the answer is read to the end and split at its blank
line (a chunked body, which an HTTP/1.0 answer never has, is decoded all the same).
What this costs: the 40 lines below; TLS and ssh:// engines go through the SDK as
before (`docker_client`), and the lab, which builds images and containers, keeps it.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any
from urllib.parse import quote

DEFAULT_HOST = "unix:///var/run/docker.sock"
_RECV_BYTES = 1 << 16


class EngineError(Exception):
    """The engine answered with an error status (`status`), or could not be reached (0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def plain_endpoint(env: dict[str, str] | None = None) -> str | None:
    """DOCKER_HOST when this module can speak to it (unix://, tcp:// without TLS), else None."""
    env = dict(os.environ) if env is None else env
    host = env.get("DOCKER_HOST") or DEFAULT_HOST
    if env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_CERT_PATH"):
        return None
    if host.startswith(("unix://", "tcp://", "http://")):
        return host
    return None


def split_response(raw: bytes) -> tuple[int, str, bytes]:
    """An HTTP answer read to its end: (status, content type, body)."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if not sep or len(status_line) < 2 or not status_line[0].startswith("HTTP/"):
        raise ValueError(f"not an HTTP answer: {raw[:60]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _unchunk(body)
    elif "content-length" in headers:
        body = body[: int(headers["content-length"])]
    content_type = headers.get("content-type", "").split(";")[0].strip()
    return int(status_line[1]), content_type, body


def _unchunk(body: bytes) -> bytes:
    out = []
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        body = rest[size + 2 :]
    return b"".join(out)


class EngineAPI:
    """GETs on one engine's API, one connection per request.

    The method names are the Docker SDK's APIClient's, so a caller can hold either.
    """

    def __init__(self, host: str, timeout: float = 10) -> None:
        self.host = host
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        if self.host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = self.host.removeprefix("unix://")
        else:
            name, _, port = self.host.split("://", 1)[1].rstrip("/").rpartition(":")
            sock = socket.socket(socket.AF_INET6 if ":" in name else socket.AF_INET)
            address = (name.strip("[]"), int(port))
        sock.settimeout(self.timeout)
        try:
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    def get(self, path: str) -> Any:
        """GET `path`; its JSON, or EngineError (status 0: the engine did not answer)."""
        request = f"GET {path} HTTP/1.0\r\nHost: docker\r\nUser-Agent: flowtrace\r\n\r\n"
        try:
            with self._connect() as sock:
                sock.sendall(request.encode())
                chunks = []
                while chunk := sock.recv(_RECV_BYTES):
                    chunks.append(chunk)
            status, content_type, body = split_response(b"".join(chunks))
        except (OSError, ValueError) as exc:
            raise EngineError(0, f"{self.host}: {exc}") from None
        if status >= 400:
            try:
                message = str(json.loads(body).get("message", ""))
            except (ValueError, AttributeError):
                message = body.decode(errors="replace").strip()
            raise EngineError(status, message or f"status {status}")
        if content_type != "application/json":
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

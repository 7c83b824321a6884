"""The engine's HTTP API on its own socket, for the few reads a trace makes (stdlib only).

A trace asks the engine three things: is it there (and which engine it is), what is
this container, which containers run; on Podman also its pods and networks (libpod's
own endpoints on the same socket).  The Docker SDK answers them too, but importing it
brings requests, urllib3, ssl and http.cookiejar: 0.11-0.15 s of a 0.6 s ping on the
2-core VM, more than the trace's own work; even http.client brings email's parser and
ssl (10-20 ms).  So these reads are one HTTP/1.0 GET each on a plain socket to the
engine flowtrace.endpoints.engines chose (Docker's or Podman's socket, DOCKER_HOST,
CONTAINER_HOST, a context's host), unix:// or tcp:// without TLS, on the engine's
unversioned API (its newest): the engine answers and closes, so the answer is read to
the end and split at its blank line (a chunked body, which an HTTP/1.0 answer never
has, is decoded all the same).  What this costs: the 60 lines below; TLS and ssh://
engines go through the SDK as before, and the lab, which builds images and containers,
keeps it (`engines.client()`).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

DEFAULT_HOST = "unix:///var/run/docker.sock"
_RECV_BYTES = 1 << 16


class EngineError(Exception):
    """The engine answered with an error status (`status`), or could not be reached (0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def speaks(host: str, tls: Any = None) -> bool:
    """Whether EngineAPI speaks to the engine at `host` (an SDK base_url): a unix socket or
    TCP without TLS (ssh:// and TLS go through the SDK)."""
    return tls is None and host.startswith(("unix://", "http+unix://", "tcp://", "http://"))


def split_response(raw: bytes) -> tuple[int, str, bytes]:
    """An HTTP answer read to its end: (status, content type, body)."""
    status, headers, body = split_answer(raw)
    return status, headers.get("content-type", "").split(";")[0].strip(), body


def split_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """An HTTP answer read to its end: (status, headers by lower-case name, body)."""
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
    return int(status_line[1]), headers, body


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
        if self.host.startswith(("unix://", "http+unix://")):  # the SDK writes http+unix://
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = self.host.split("://", 1)[1]
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

    def request(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """GET `path`: (status, headers by lower-case name, body); EngineError(0) when the
        engine does not answer."""
        request = f"GET {path} HTTP/1.0\r\nHost: docker\r\nUser-Agent: flowtrace\r\n\r\n"
        try:
            with self._connect() as sock:
                sock.sendall(request.encode())
                chunks = []
                while chunk := sock.recv(_RECV_BYTES):
                    chunks.append(chunk)
            return split_answer(b"".join(chunks))
        except (OSError, ValueError) as exc:
            raise EngineError(0, f"{self.host}: {exc}") from None

    def get(self, path: str) -> Any:
        """GET `path`; its JSON, or EngineError (status 0: the engine did not answer)."""
        status, headers, body = self.request(path)
        if status >= 400:
            try:
                message = str(json.loads(body).get("message", ""))
            except (ValueError, AttributeError):
                message = body.decode(errors="replace").strip()
            raise EngineError(status, message or f"status {status}")
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return body.decode(errors="replace")
        return json.loads(body)

    def ping(self) -> bool:
        return self.get("/_ping") == "OK"

    def version(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.get("/version")
        return answer

    def info(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.get("/info")
        return answer

    def inspect_container(self, spec: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.get(f"/containers/{quote(spec, safe='')}/json")
        return answer

    def containers(self) -> list[dict[str, Any]]:
        answer: list[dict[str, Any]] = self.get("/containers/json")
        return answer

    def events(self, since: str, filters: dict[str, list[str]], decode: bool = True) -> EventStream:
        """The engine's events from `since` on, matching `filters`, as they come: GET
        /events on a connection of its own, read until the stream's `close` (the SDK's
        `APIClient.events(since=..., filters=..., decode=True)`)."""
        query = urlencode({"since": since, "filters": json.dumps(filters)})
        request = f"GET /events?{query} HTTP/1.0\r\nHost: docker\r\nUser-Agent: flowtrace\r\n\r\n"
        try:
            sock = self._connect()
        except OSError as exc:
            raise EngineError(0, f"{self.host}: {exc}") from None
        try:
            sock.sendall(request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = sock.recv(_RECV_BYTES)
                if not chunk:
                    raise ValueError("the engine closed the connection before answering")
                head += chunk
            status, headers, rest = split_answer(head)
            if status >= 400:
                raise EngineError(status, rest.decode(errors="replace").strip())
            sock.settimeout(None)  # events come when they come: no read timeout
        except (OSError, ValueError) as exc:
            sock.close()
            raise EngineError(0, f"{self.host}: {exc}") from None
        except EngineError:
            sock.close()
            raise
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        return EventStream(sock, head.partition(b"\r\n\r\n")[2], chunked)

    def close(self) -> None:
        """Nothing to close: each request had its own connection (the SDK's has this too)."""


class EventStream:
    """JSON objects read off one connection as the engine writes them, until `close`.

    Go's HTTP server answers an HTTP/1.0 request without chunks and closes the
    connection at the end; a chunked answer is unframed all the same.
    """

    def __init__(self, sock: socket.socket, body: bytes, chunked: bool) -> None:
        self._sock = sock
        self._pending = body
        self._chunked = chunked

    def __iter__(self) -> Iterator[Any]:
        decoder = json.JSONDecoder()
        text = ""
        raw = b""
        while True:
            raw += self._pending
            self._pending = b""
            if self._chunked:
                body, raw = _unchunk_some(raw)
            else:
                body, raw = raw, b""
            text += body.decode(errors="replace")
            while True:
                text = text.lstrip()
                if not text:
                    break
                try:
                    value, end = decoder.raw_decode(text)
                except ValueError:
                    break  # the rest of it has not come yet
                text = text[end:]
                yield value
            try:
                self._pending = self._sock.recv(_RECV_BYTES)
            except OSError:  # closed under us by `close`
                return
            if not self._pending:
                return

    def close(self) -> None:
        """End the stream: the reading thread's `recv` returns."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def _unchunk_some(raw: bytes) -> tuple[bytes, bytes]:
    """The whole chunks at the start of raw, unframed, and what is left of it."""
    out = []
    while True:
        size_line, sep, rest = raw.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line.split(b";")[0] or b"0", 16)
        if len(rest) < size + 2:
            break
        out.append(rest[:size])
        raw = rest[size + 2 :]
        if size == 0:
            break
    return b"".join(out), raw

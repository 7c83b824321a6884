"""The wire between flowtrace and its agent on another host: messages both ways, framed.

The agent runs in a helper container and talks over that container's attach stream
(its stdin and stdout), never the logs API, which mangles binary data:

* to the agent (its stdin), one line per message: base64 of a pickle.  Lines because
  the engine watches an attached stdin for its detach keys (ctrl-p ctrl-q): binary
  data could contain them and cut the stream; base64 cannot.
* from the agent (its stdout, which the engine multiplexes with stderr behind 8-byte
  headers, docker.utils.socket reads them): records of a 5-byte header (length, kind)
  and a payload: a pickled reply or event, captured frames in a packed binary batch,
  or a clock answer as three integers, so that nothing slows the exchange the clock
  estimate is made from.

What comes back is unpickled by `safe_loads`, which makes only flowtrace's own types
and plain built-in values: a host that was taken over cannot make flowtrace run code.
Pure code, shared by both ends; the agent imports nothing else from the controller's
side.
"""

from __future__ import annotations

import base64
import builtins
import io
import pickle
import struct
from collections.abc import Iterable, Iterator
from typing import Any

#: Record kinds from the agent.
REPLY = ord("R")  # pickle: (request id, ok, value or exception)
EVENT = ord("E")  # pickle: (what, details), unasked (a capture's note)
FRAMES = ord("F")  # packed frames (pack_frames)
CLOCK = ord("T")  # !QQQ: request id, t2, t3 (the agent's receive and send times)

RECORD_HEADER = struct.Struct("!IB")
CLOCK_ANSWER = struct.Struct("!QQQ")
#: Per frame: point index, kernel time (ns), length on the wire, direction (0 in, 1 out,
#: 2 unknown), bytes captured; then the bytes.
FRAME_HEADER = struct.Struct("!HQIBI")
PICKLE_PROTOCOL = 5

#: Built-in names a reply may hold besides plain values and exceptions.
_SAFE_BUILTINS = frozenset({"set", "frozenset", "bytearray", "complex", "range", "slice"})


class ChannelError(Exception):
    """The other end sent something that is not a message of this channel."""


def request_line(message: object) -> bytes:
    """One message to the agent: a line of base64 (no detach keys in it)."""
    return base64.b64encode(pickle.dumps(message, protocol=PICKLE_PROTOCOL)) + b"\n"


def read_request(line: bytes) -> Any:
    """The agent's side: the message a line carries (the controller is trusted)."""
    return pickle.loads(base64.b64decode(line))


def record(kind: int, payload: bytes) -> bytes:
    return RECORD_HEADER.pack(len(payload), kind) + payload


def reply_record(request: int, ok: bool, value: object) -> bytes:
    return record(REPLY, pickle.dumps((request, ok, value), protocol=PICKLE_PROTOCOL))


def event_record(what: str, details: object) -> bytes:
    return record(EVENT, pickle.dumps((what, details), protocol=PICKLE_PROTOCOL))


def clock_record(request: int, t2: int, t3: int) -> bytes:
    return record(CLOCK, CLOCK_ANSWER.pack(request, t2, t3))


FrameTuple = tuple[int, int, bytes, int, bool | None]


def pack_frames(frames: Iterable[FrameTuple]) -> bytes:
    """(point index, time_ns, data, orig_len, outbound) each, in one FRAMES record."""
    parts = []
    for index, time_ns, data, orig_len, outbound in frames:
        direction = 2 if outbound is None else int(outbound)
        parts.append(FRAME_HEADER.pack(index, time_ns, orig_len, direction, len(data)))
        parts.append(data)
    return record(FRAMES, b"".join(parts))


def unpack_frames(payload: bytes) -> list[FrameTuple]:
    frames: list[FrameTuple] = []
    offset, size, step = 0, len(payload), FRAME_HEADER.size
    while offset < size:
        if offset + step > size:
            raise ChannelError("a frame batch ends inside a frame's header")
        index, time_ns, orig_len, direction, length = FRAME_HEADER.unpack_from(payload, offset)
        offset += step
        data = payload[offset : offset + length]
        if len(data) != length:
            raise ChannelError("a frame batch ends inside a frame")
        offset += length
        frames.append((index, time_ns, data, orig_len, None if direction == 2 else bool(direction)))
    return frames


class _SafeUnpickler(pickle.Unpickler):
    """Makes flowtrace's own classes, exceptions and plain built-in values, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "flowtrace" or module.startswith("flowtrace."):
            found = super().find_class(module, name)
            if isinstance(found, type):
                return found
        elif module == "builtins":
            found = getattr(builtins, name, None)
            if name in _SAFE_BUILTINS or (
                isinstance(found, type) and issubclass(found, BaseException)
            ):
                return found
        raise ChannelError(
            f"the agent sent an object of a type flowtrace does not take: {module}.{name}"
        )


def safe_loads(payload: bytes) -> Any:
    """A pickle from the agent, made with _SafeUnpickler."""
    try:
        return _SafeUnpickler(io.BytesIO(payload)).load()
    except ChannelError:
        raise
    except Exception as exc:
        raise ChannelError(f"the agent sent a message flowtrace cannot read ({exc})") from None


class RecordReader:
    """Cuts the agent's stdout bytes (fed as they come) into (kind, payload) records."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        self._buffer += data
        step = RECORD_HEADER.size
        while len(self._buffer) >= step:
            length, kind = RECORD_HEADER.unpack_from(self._buffer)
            if kind not in (REPLY, EVENT, FRAMES, CLOCK):
                raise ChannelError(f"the agent sent a record of unknown kind {kind}")
            if len(self._buffer) < step + length:
                return
            payload = bytes(self._buffer[step : step + length])
            del self._buffer[: step + length]
            yield kind, payload

    @property
    def pending(self) -> int:
        return len(self._buffer)

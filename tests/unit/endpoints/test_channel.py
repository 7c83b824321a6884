"""The wire to an agent: lines out, records back, cut anywhere by the engine's framing, and
nothing from the agent can make flowtrace run code."""

from __future__ import annotations

import os
import pickle

import pytest

from flowtrace.endpoints.channel import (
    CLOCK,
    EVENT,
    FRAMES,
    REPLY,
    ChannelError,
    RecordReader,
    clock_record,
    event_record,
    pack_frames,
    read_request,
    record,
    reply_record,
    request_line,
    safe_loads,
    unpack_frames,
)
from flowtrace.errors import NotFoundError
from flowtrace.model import Namespace, Point, PointStats
from flowtrace.topology.kernel import IfAddress, Link, NetnsState

DETACH_KEYS = b"\x10\x11"  # ctrl-p ctrl-q: the engine ends an attach when stdin holds them


def test_a_request_is_one_line_without_the_detach_keys() -> None:
    message = (
        "call",
        7,
        "/proc/1/ns/net",
        "flowtrace.topology.kernel",
        "_read_state",
        (b"\x10\x11\n",),
    )
    line = request_line(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert DETACH_KEYS not in line
    assert read_request(line.rstrip(b"\n")) == message


def test_records_come_out_whole_however_the_stream_is_cut() -> None:
    state = NetnsState(
        (Link(2, "eth0", "veth", None, 9, 0, "02:42:00:00:00:02", True, 0),),
        (IfAddress("10.213.1.2", 24, 2),),
    )
    stream = (
        reply_record(1, True, state)
        + clock_record(2, 111, 222)
        + pack_frames([(0, 5, b"\x00" * 60, 60, True), (1, 6, b"abc", 74, None)])
        + event_record("note", "eth0 went away")
    )
    for cut in (1, 3, 7, 64, len(stream)):
        reader = RecordReader()
        got = []
        for start in range(0, len(stream), cut):
            got += list(reader.feed(stream[start : start + cut]))
        assert [kind for kind, _ in got] == [REPLY, CLOCK, FRAMES, EVENT]
        assert safe_loads(got[0][1]) == (1, True, state)
        assert unpack_frames(got[2][1]) == [
            (0, 5, b"\x00" * 60, 60, True),
            (1, 6, b"abc", 74, None),
        ]
        assert reader.pending == 0


def test_flowtrace_objects_and_errors_cross_with_their_exit_status() -> None:
    point = Point(
        "c2@hostb/eth0",
        Namespace("hostb:/proc/9/ns/net", "c2@hostb", 4026532001, "c2"),
        "eth0",
        2,
        "destination",
    )
    error = NotFoundError("network namespace /proc/9/ns/net is gone")
    request, ok, value = safe_loads(reply_record(3, False, error)[5:])
    assert (request, ok) == (3, False)
    assert isinstance(value, NotFoundError) and value.status == error.status
    assert safe_loads(reply_record(4, True, [point, PointStats("x", 3, 1)])[5:]) == (
        4,
        True,
        [point, PointStats("x", 3, 1)],
    )
    assert isinstance(safe_loads(pickle.dumps(FileNotFoundError(2, "gone"))), FileNotFoundError)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_a_pickle_that_would_run_code_is_refused() -> None:
    with pytest.raises(ChannelError, match=r"posix\.system|os\.system"):
        safe_loads(pickle.dumps(_Evil()))
    with pytest.raises(ChannelError, match="does not take"):
        safe_loads(pickle.dumps(__import__("collections").OrderedDict(a=1)))


def test_garbage_is_a_channel_error() -> None:
    with pytest.raises(ChannelError):
        list(RecordReader().feed(record(ord("Z"), b"x")))
    with pytest.raises(ChannelError, match="inside a frame"):
        unpack_frames(pack_frames([(0, 1, b"abcdef", 6, False)])[5:-2])
    with pytest.raises(ChannelError, match="cannot read"):
        safe_loads(b"not a pickle")

"""The agent as the helper runs it: `python -S -c BOOTSTRAP` with nothing but the standard
library, its code (flowtrace and pyroute2) read from stdin as one zip, then requests and
answers over the channel, exactly as through a container's attach stream."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
from io import BytesIO

from flowtrace.endpoints.agent_code import BOOTSTRAP, agent_zip, code_line
from flowtrace.endpoints.channel import (
    CLOCK,
    CLOCK_ANSWER,
    REPLY,
    RecordReader,
    request_line,
    safe_loads,
)
from flowtrace.errors import NotFoundError


def test_the_zip_holds_what_the_agent_runs_and_not_the_rest() -> None:
    names = set(zipfile.ZipFile(BytesIO(agent_zip())).namelist())
    for needed in (
        "flowtrace/capture/agent.py",
        "flowtrace/capture/agent.pyc",
        "flowtrace/topology/kernel.pyc",
        "pyroute2/__init__.py",
    ):
        assert needed in names
    assert not any(
        n.startswith(("flowtrace/cli/", "flowtrace/lab/", "flowtrace/output/")) for n in names
    )


def _records(process: subprocess.Popen[bytes], want: int) -> list[tuple[int, bytes]]:
    reader, got = RecordReader(), []
    assert process.stdout is not None
    while len(got) < want:
        chunk = process.stdout.read1(65536)
        assert chunk, process.stderr.read().decode() if process.stderr else "agent ended"
        got += list(reader.feed(chunk))
    return got


def test_the_agent_answers_hello_calls_and_clock_requests_then_ends() -> None:
    process = subprocess.Popen(
        [sys.executable, "-s", "-S", "-u", "-c", BOOTSTRAP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={},
    )
    assert process.stdin is not None
    try:
        process.stdin.write(code_line())
        process.stdin.write(request_line(("hello", 1, "hostb", 5_000_000)))
        process.stdin.write(
            request_line(
                (
                    "call",
                    2,
                    None,
                    "flowtrace.correlate.clocks",
                    "exchange_offset",
                    (100, 1_150, 1_160, 220),
                )
            )
        )
        process.stdin.write(
            request_line(
                ("call", 3, None, "flowtrace.endpoints.netns", "netns_inode", ("/nonexistent/ns",))
            )
        )
        sent = time.time_ns()
        process.stdin.write(request_line(("clock", 4)))
        process.stdin.write(request_line(("quit", 5)))
        process.stdin.flush()
        records = _records(process, 5)
        assert process.wait(10) == 0
    finally:
        process.kill()
    replies = {}
    for kind, payload in records:
        if kind == CLOCK:
            request, t2, t3 = CLOCK_ANSWER.unpack(payload)
            replies[request] = (t2, t3)
        else:
            assert kind == REPLY
            request, ok, value = safe_loads(payload)
            replies[request] = (ok, value)
    ok, facts = replies[1]
    assert ok and facts["python"] == sys.version.split()[0] and facts["agent_pid"] > 0
    assert replies[2] == (True, (995, 110))
    ok, error = replies[3]
    assert not ok and isinstance(error, NotFoundError)
    t2, t3 = replies[4]
    assert t3 >= t2 >= sent + 5_000_000  # the skew a test asked for is on the agent's clock
    assert replies[5] == (True, None)


def test_the_agent_ends_when_its_controller_goes_away() -> None:
    process = subprocess.Popen(
        [sys.executable, "-s", "-S", "-c", BOOTSTRAP],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={},
    )
    assert process.stdin is not None
    process.stdin.write(code_line())
    process.stdin.close()  # what the engine does when the attach stream closes (StdinOnce)
    assert process.wait(20) == 0

"""Which engines the standard-library reader speaks to, and which go through the SDK."""

from __future__ import annotations

from flowtrace.endpoints.engine_http import DEFAULT_HOST, speaks, split_answer


def test_unix_and_plain_tcp_hosts_are_spoken_to_directly() -> None:
    assert speaks(DEFAULT_HOST) and DEFAULT_HOST == "unix:///var/run/docker.sock"
    assert speaks("unix:///run/podman/podman.sock")
    assert speaks("http+unix:///run/podman/podman.sock")  # a context the SDK made
    assert speaks("tcp://10.0.0.5:2375")


def test_tls_and_ssh_engines_go_through_the_sdk() -> None:
    assert not speaks("ssh://admin@box")
    assert not speaks("tcp://10.0.0.5:2376", tls=object())
    assert not speaks("https://10.0.0.5:2376")


def test_headers_are_kept_by_lower_case_name() -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nApi-Version: 4.0.0\r\nLibpod-Api-Version: 4.3.1\r\n"
        b"Content-Length: 2\r\n\r\nOK"
    )
    status, headers, body = split_answer(raw)
    assert (status, body) == (200, b"OK")
    assert headers["libpod-api-version"] == "4.3.1" and headers["api-version"] == "4.0.0"


def test_an_answer_is_split_at_its_blank_line() -> None:
    from flowtrace.endpoints.engine_http import split_response

    raw = (
        b"HTTP/1.0 200 OK\r\nApi-Version: 1.41\r\nContent-Type: application/json\r\n"
        b'Content-Length: 11\r\n\r\n{"Id":"ab"}'
    )
    assert split_response(raw) == (200, "application/json", b'{"Id":"ab"}')
    missing = (
        b"HTTP/1.0 404 Not Found\r\nContent-Type: application/json; charset=utf-8\r\n\r\n"
        b'{"message":"No such container: x"}\n'
    )
    assert split_response(missing) == (
        404,
        "application/json",
        b'{"message":"No such container: x"}\n',
    )


def test_a_chunked_body_is_put_together() -> None:
    from flowtrace.endpoints.engine_http import split_response

    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nOK\r\n3\r\n!!!\r\n0\r\n\r\n"
    assert split_response(raw) == (200, "", b"OK!!!")


def test_what_is_not_http_is_refused() -> None:
    import pytest

    from flowtrace.endpoints.engine_http import split_response

    for raw in (b"", b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.0 200 OK\r\nno end of headers"):
        with pytest.raises(ValueError):
            split_response(raw)


# Two events as Docker 20.10 wrote them on GET /events (HTTP/1.0: no chunks, one JSON
# object a line), recorded from the lab's c1 being killed.
RECORDED_EVENTS = (
    b'{"status":"kill","id":"f2f7f01e9624","from":"flowtrace-lab/busybox:1","Type":"container",'
    b'"Action":"kill","Actor":{"ID":"f2f7f01e9624","Attributes":{"image":"flowtrace-lab/busybox:1",'
    b'"name":"c1","signal":"9"}},"scope":"local","time":1796236897,"timeNano":1796236897769480290}\n'
    b'{"status":"die","id":"f2f7f01e9624","from":"flowtrace-lab/busybox:1","Type":"container",'
    b'"Action":"die","Actor":{"ID":"f2f7f01e9624","Attributes":{"exitCode":"137",'
    b'"name":"c1"}},"scope":"local","time":1796236897,"timeNano":1796236897812734102}\n'
)


def _stream_of(parts: list[bytes], chunked: bool = False) -> list[object]:
    """What an EventStream yields of `parts`, written one after the other by a peer."""
    import socket

    from flowtrace.endpoints.engine_http import EventStream

    ours, theirs = socket.socketpair()
    with theirs:
        for part in parts[1:]:
            theirs.sendall(part)
        theirs.shutdown(socket.SHUT_WR)
        return list(EventStream(ours, parts[0], chunked))


def test_events_are_read_whatever_the_reads_cut_them_into() -> None:
    import json

    expected = [json.loads(line) for line in RECORDED_EVENTS.splitlines()]
    assert [e["Action"] for e in expected] == ["kill", "die"]  # type: ignore[index]
    for cut in range(0, len(RECORDED_EVENTS), 7):
        parts = [RECORDED_EVENTS[:cut], RECORDED_EVENTS[cut:]]
        assert _stream_of(parts) == expected, cut


def test_chunked_events_are_unframed() -> None:
    import json

    framed = b"".join(
        b"%x\r\n%s\r\n" % (len(line) + 1, line + b"\n") for line in RECORDED_EVENTS.splitlines()
    )
    expected = [json.loads(line) for line in RECORDED_EVENTS.splitlines()]
    for cut in (0, 3, 50, len(framed) - 2):
        assert _stream_of([framed[:cut], framed[cut:], b"0\r\n\r\n"], chunked=True) == expected


def test_closing_a_stream_ends_the_thread_reading_it() -> None:
    import socket
    import threading

    from flowtrace.endpoints.engine_http import EventStream

    ours, theirs = socket.socketpair()
    stream = EventStream(ours, RECORDED_EVENTS[:200], False)
    got: list[object] = []
    reader = threading.Thread(target=lambda: got.extend(stream))
    reader.start()
    stream.close()  # the engine sends nothing more: only close can end it
    reader.join(5)
    theirs.close()
    assert not reader.is_alive() and got == []

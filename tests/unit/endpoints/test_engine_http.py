"""Which engines the standard-library reader speaks to, and which go through the SDK."""

from __future__ import annotations

from flowtrace.endpoints.engine_http import DEFAULT_HOST, plain_endpoint


def test_no_docker_host_is_the_default_socket() -> None:
    assert plain_endpoint({}) == DEFAULT_HOST == "unix:///var/run/docker.sock"


def test_unix_and_plain_tcp_hosts_are_spoken_to_directly() -> None:
    assert plain_endpoint({"DOCKER_HOST": "unix:///run/podman/podman.sock"}) == (
        "unix:///run/podman/podman.sock"
    )
    assert plain_endpoint({"DOCKER_HOST": "tcp://10.0.0.5:2375"}) == "tcp://10.0.0.5:2375"


def test_tls_and_ssh_engines_go_through_the_sdk() -> None:
    assert plain_endpoint({"DOCKER_HOST": "ssh://admin@box"}) is None
    assert plain_endpoint({"DOCKER_HOST": "tcp://10.0.0.5:2376", "DOCKER_TLS_VERIFY": "1"}) is None
    assert plain_endpoint({"DOCKER_CERT_PATH": "/certs"}) is None


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

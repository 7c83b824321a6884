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

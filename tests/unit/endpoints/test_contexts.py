"""Docker contexts in the docker CLI's own folder and format (sha256 of the name)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from flowtrace.endpoints.contexts import list_contexts, read_context, remove_context, write_context


def test_written_as_the_cli_writes_and_read_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    write_context("hostb", "unix:///run/b.sock", "flowtrace lab host")
    meta = tmp_path / "contexts" / "meta" / hashlib.sha256(b"hostb").hexdigest() / "meta.json"
    assert json.loads(meta.read_text()) == {
        "Name": "hostb",
        "Metadata": {"Description": "flowtrace lab host"},
        "Endpoints": {"docker": {"Host": "unix:///run/b.sock", "SkipTLSVerify": False}},
    }
    found = read_context("hostb")
    assert found is not None
    assert (found.host, found.description, found.tls) == (
        "unix:///run/b.sock",
        "flowtrace lab host",
        None,
    )
    write_context("hosta", "tcp://198.18.20.2:2376", "")
    assert [c.name for c in list_contexts()] == sorted(
        ["hosta", "hostb"], key=lambda n: hashlib.sha256(n.encode()).hexdigest()
    )
    remove_context("hostb")
    assert read_context("hostb") is None
    assert read_context("default") is None


def test_a_context_with_certificates_is_read_with_tls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    write_context("secure", "tcp://198.18.20.3:2376", "")
    folder = tmp_path / "contexts" / "tls" / hashlib.sha256(b"secure").hexdigest() / "docker"
    folder.mkdir(parents=True)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (folder / name).write_text("-----BEGIN CERTIFICATE-----\n")
    found = read_context("secure")
    assert found is not None and found.tls is not None
    assert found.tls.cert == (str(folder / "cert.pem"), str(folder / "key.pem"))
    assert found.tls.ca_cert == str(folder / "ca.pem") and found.tls.verify


def test_nothing_there_is_no_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "absent"))
    assert read_context("hostb") is None
    assert list_contexts() == []

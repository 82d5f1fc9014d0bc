"""Artifact GETs through the session's urllib3 pool: taken only when nothing differs from
going through requests (no proxy for the API host), and redirects still handed to requests
(the redirect test in test_plangrep.py runs on this path)."""

from __future__ import annotations

import pytest
import requests
from test_plangrep import fetch, make_source, one_job

from archiver.default_plugins.plangrep_http import Session
from archiver.errors import SourceError
from archiver.testing.servers import free_port

PROXY_VARS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
              "all_proxy", "NO_PROXY", "no_proxy")


@pytest.fixture
def clean_env(monkeypatch):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_artifact_gets_go_straight_to_the_pool(emu, clean_env):
    source = make_source(emu)
    try:
        assert source._direct.enabled
        job = one_job(emu)
        assert fetch(source, job, "a/b.bin") == emu.artifact_bytes(job.id, "a/b.bin")
        assert emu.count(route="artifact") == 1
        assert "pk_" not in repr(source._direct) and emu.api_key not in repr(source._direct)
    finally:
        source.close()


def test_a_proxy_for_the_api_host_sends_every_request_through_requests(emu, clean_env):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens: a used proxy fails
    clean_env.setenv("HTTP_PROXY", dead)
    job = one_job(emu)
    source = make_source(emu, retries=0)
    try:
        assert not source._direct.enabled
        with pytest.raises(SourceError, match="connection error"):
            fetch(source, job, "a/b.bin")
        assert emu.count(route="artifact") == 0
    finally:
        source.close()
    clean_env.setenv("NO_PROXY", "127.0.0.1")
    source = make_source(emu)
    try:
        assert source._direct.enabled
        assert fetch(source, job, "a/b.bin") == emu.artifact_bytes(job.id, "a/b.bin")
    finally:
        source.close()


def test_tls_failures_on_the_direct_path_are_not_retried(emu, clean_env):
    # https to a plain-HTTP server: the handshake fails, which no retry can fix
    source = make_source(emu, base_url=emu.base_url.replace("http://", "https://"))
    try:
        assert source._direct.enabled
        job = one_job(emu)
        artifact = source.find_artifacts(job, emu.result_bytes(job.id))[0]
        with pytest.raises(SourceError, match="TLS error") as info:
            source.open(artifact)
        assert not info.value.retryable
    finally:
        source.close()


def test_environment_settings_are_read_once_per_host(clean_env):
    clean_env.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    clean_env.setenv("NO_PROXY", "127.0.0.1")
    session = Session()
    direct = session.merge_environment_settings("http://127.0.0.1:1/a", {}, True, None, None)
    via = session.merge_environment_settings("http://example.invalid/a", {}, True, None, None)
    assert requests.utils.select_proxy("http://127.0.0.1:1/a", direct["proxies"]) is None
    assert requests.utils.select_proxy("http://example.invalid/a", via["proxies"]) == \
        "http://proxy.invalid:3128"
    clean_env.delenv("NO_PROXY")  # read once: the host keeps what the run started with
    again = session.merge_environment_settings("http://127.0.0.1:1/b", {}, False, None, None)
    assert requests.utils.select_proxy("http://127.0.0.1:1/b", again["proxies"]) is None
    assert again["stream"] is False and direct["stream"] is True

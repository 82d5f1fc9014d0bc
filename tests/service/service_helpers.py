"""Helpers of the service tests (imported by conftest.py and the test modules)."""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from pathlib import Path

import requests

from archiver.runtime import Runtime
from archiver.config import load_config
from archiver.ledger import open_ledger
from archiver.plugins import build_plugin_manager
from archiver.service import Service
from archiver.testing.emulator_webhooks import signed_headers

SECRET = "wss_test_default_secret"


def service_config(emu, tmp_path: Path, *, serve: str = "", watch: str = "",
                   projects: str = "[p1]", concurrency: int = 4, attempts: int = 4) -> Path:
    """YAML for the emulator as source and one local sink (no fsync: tests only)."""
    text = textwrap.dedent(f"""\
        source:
          type: plangrep
          base_url: {emu.base_url}
          api_key: ${{PLANGREP_API_KEY}}
          projects: {projects}
          backoff_base: 0.01
          backoff_max: 0.05
          retries: 2
        sinks:
          - name: primary
            type: local
            root: {tmp_path / 'archive'}
            fsync: false
        state_dir: {tmp_path / 'state'}
        concurrency: {concurrency}
        artifact_attempts: {attempts}
        """)
    if watch:
        text += "watch:\n" + textwrap.indent(textwrap.dedent(watch), "  ")
    if serve:
        text += "serve:\n" + textwrap.indent(textwrap.dedent(serve), "  ")
    path = tmp_path / f"archiver-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(text)
    return path


class ServiceFactory:
    """``factory(serve=True, poll=3600, serve_yaml=..., watch_yaml=..., key=...)``: a
    started in-process Service; :meth:`close_all` stops them and closes their ledgers."""

    def __init__(self, emu, tmp_path: Path):
        self.emu, self.tmp_path, self.made = emu, tmp_path, []

    def __call__(self, *, serve: bool = True, poll: float = 3600.0,
                 serve_yaml: str | None = None, watch_yaml: str = "", key: str | None = None,
                 wait_first_poll: bool = True, **cfg) -> Service:
        emu, tmp_path = self.emu, self.tmp_path
        if serve_yaml is None:
            serve_yaml = f"port: 0\nsecrets:\n  default: {SECRET}\n"
        path = service_config(emu, tmp_path, serve=serve_yaml if serve else "",
                              watch=watch_yaml, **cfg)
        plugins = build_plugin_manager(entry_points=False)
        loaded = load_config(path, plugins.registry,
                             env={"PLANGREP_API_KEY": key or emu.api_key})
        ledger = open_ledger(loaded.settings.state_dir)
        svc = Service(Runtime(loaded, plugins, ledger), serve=serve, poll_interval=poll)
        self.made.append((svc, ledger))
        svc.start()
        if wait_first_poll:
            wait_for(lambda: svc.watcher.polls + svc.watcher.poll_failures >= 1
                     or svc.done.is_set(), what="first poll")
        return svc

    def close_all(self) -> None:
        for svc, ledger in self.made:
            svc.close()
            svc.rt.close()
            ledger.close()


def wait_for(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    """Wait (bounded) until ``predicate()`` is true; a hang fails the test, never a delay."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def payload(job_id: str, **job) -> bytes:
    return json.dumps({"type": "job.status_changed",
                       "data": {"job": {"id": job_id, "status": "completed", **job}}}).encode()


def deliver(svc: Service, body: bytes, *, secret: str | None = SECRET,
            msg_id: str | None = None, timestamp: int | None = None,
            headers: dict | None = None) -> requests.Response:
    """POST one delivery to the service's webhook endpoint."""
    h = {"Content-Type": "application/json"}
    if secret is not None:
        h = signed_headers(secret, msg_id or f"msg_{uuid.uuid4().hex}", body, timestamp)
    h.update(headers or {})
    return requests.post(svc.url + svc.serve_settings.path, data=body, headers=h, timeout=10)


def job_requests(emu, job_id: str, route: str = "job") -> int:
    return sum(1 for r in emu.requests.snapshot()
               if r.route == route and f"/jobs/{job_id}" in r.path)


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".partial")] if root.exists() else []


def metric_samples(text: str) -> dict[tuple, float]:
    """``{(name, (label pairs...)): value}`` of an exposition text."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out

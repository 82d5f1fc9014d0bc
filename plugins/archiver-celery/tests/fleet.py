"""A real fleet for the Celery tests: brokers (Redis, RabbitMQ) and PostgreSQL on
127.0.0.1, ``celery -A archiver_celery worker`` processes, an ``archiver watch``
dispatcher process, and the invariants every scenario ends with.

Without a service the tests that need it skip, saying how to run them; with ``CI=true``
a missing service is a failure (CI must run them).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests" / "workers"))
from worker_helpers import (  # noqa: E402
    Proc,
    artifact_gets,
    partial_files,
    wait_for,
)

from archiver.testing.configs import basic_config  # noqa: E402

PG_URL = os.environ.get("ARCHIVER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("ARCHIVER_TEST_REDIS", "127.0.0.1:6379")
AMQP = os.environ.get("ARCHIVER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
HOW = {"postgresql": "start PostgreSQL on 127.0.0.1:5432 (or set ARCHIVER_TEST_POSTGRES_URL)",
       "redis": "start Redis on 127.0.0.1:6379 (or set ARCHIVER_TEST_REDIS=host:port)",
       "rabbitmq": "start RabbitMQ on 127.0.0.1:5672 (or set ARCHIVER_TEST_AMQP_URL)"}
# Only the plugins these tests need: the S3/GCS plugins would only slow start-up down.
PLUGINS = "plangrep,local,checksum,decompress,service,compliance,ledger,postgres,celery"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def need(service: str, ok: bool, detail: str = "") -> None:
    if ok:
        return
    message = f"{service} is not reachable{f' ({detail})' if detail else ''}: {HOW[service]}"
    if in_ci():
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)


def answers(hostport: str) -> bool:
    host, _, port = hostport.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


@dataclass
class Broker:
    kind: str          # "redis" or "rabbitmq"
    url: str
    queue: str

    def app(self):
        """A sending Celery app on this broker and queue, as the dispatcher's."""
        from archiver_celery.app import make_app
        from archiver_celery.settings import CeleryConfig
        return make_app(CeleryConfig(broker_url=self.url, queue=self.queue))

    def depth(self) -> int:
        """Messages waiting (the Redis transport keeps one list per priority)."""
        app = self.app()
        try:
            with app.connection_for_write() as conn:
                q = app.amqp.queues[self.queue](conn.default_channel)
                return q.queue_declare()[1]
        finally:
            app.close()

    def peek(self) -> list[str]:
        """The bodies (decoded JSON text) of the messages waiting, without taking them."""
        import base64
        app = self.app()
        out: list[str] = []
        try:
            with app.connection_for_write() as conn:
                if self.kind == "redis":
                    client = conn.default_channel.client
                    for key in client.keys(f"{self.queue}*"):
                        if client.type(key) == b"list":
                            for raw in client.lrange(key, 0, -1):
                                msg = json.loads(raw)
                                out.append(base64.b64decode(msg["body"]).decode())
                else:
                    ch = conn.default_channel
                    while True:  # taken and given back unacknowledged (requeued)
                        msg = ch.basic_get(self.queue, no_ack=False)
                        if msg is None:
                            break
                        out.append(msg.body.decode() if isinstance(msg.body, bytes)
                                   else str(msg.body))
                    conn.close()
        finally:
            app.close()
        return out

    def cleanup(self) -> None:
        from kombu import Connection
        try:
            with Connection(self.url, connect_timeout=5) as conn:
                if self.kind == "redis":
                    conn.default_channel.client.flushdb()
                else:
                    conn.default_channel.queue_delete(self.queue)
        except Exception:  # a test that stopped the broker restarted it; best effort
            pass


def make_broker(kind: str) -> Broker:
    queue = f"archiver-t-{uuid.uuid4().hex[:8]}"
    if kind == "redis":
        need("redis", answers(REDIS))
        db = 1 + uuid.uuid4().int % 15
        return Broker(kind, f"redis://{REDIS}/{db}", queue)
    from urllib.parse import urlsplit
    parts = urlsplit(AMQP)
    need("rabbitmq", answers(f"{parts.hostname}:{parts.port or 5672}"))
    return Broker(kind, AMQP, queue)


def fresh_pg_schema() -> tuple[str, str]:
    """(schema, ledger URL using it) on the test server."""
    import psycopg
    try:
        with psycopg.connect(PG_URL, connect_timeout=5, autocommit=True) as conn:
            name = f"archiver_c_{uuid.uuid4().hex[:12]}"
            conn.execute(f'CREATE SCHEMA "{name}"')
    except psycopg.Error as exc:
        need("postgresql", False, " ".join(str(exc).split())[:200])
    sep = "&" if "?" in PG_URL else "?"
    return name, f"{PG_URL}{sep}options={quote(f'-csearch_path={name}', safe='')}"


def drop_pg_schema(name: str) -> None:
    import psycopg
    try:
        with psycopg.connect(PG_URL, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    except psycopg.Error:
        pass


class Fleet:
    """One config (local sink, PostgreSQL ledger, Celery broker) and its processes."""

    def __init__(self, emu, tmp_path: Path, broker: Broker, ledger_url: str, *,
                 lease: str = "{ttl: 6s, heartbeat: 1s, max_lost: 3}",
                 dispatch: str = "{mode: celery, redispatch_after: 3s}", celery: str = "",
                 top: str = "", ledger: str = '{url: "${ARCHIVER_LEDGER_URL}"}',
                 extra_sink: str = "", env: dict[str, str] | None = None,
                 temp_files: str | None = None):
        self.emu, self.tmp, self.broker = emu, tmp_path, broker
        self.config = tmp_path / "archiver.yaml"
        # fsync off: these tests are about who archives what, not about the disk
        base = basic_config(emu, tmp_path, extra_sink=extra_sink, top="",
                            temp_files=temp_files).replace(
            f"root: {tmp_path / 'archive'}\n", f"root: {tmp_path / 'archive'}\n"
            "    fsync: false\n", 1)
        self.config.write_text(base + (textwrap.dedent(f"""\
            ledger: {ledger}
            lease: {lease}
            dispatch: {dispatch}
            celery:
              broker_url: "${{ARCHIVER_BROKER_URL}}"
              queue: {broker.queue}
            """) + textwrap.indent(textwrap.dedent(celery), "  ") + textwrap.dedent(top)))
        assert "fsync: false" in self.config.read_text()
        self.env = {**os.environ, "PLANGREP_API_KEY": emu.api_key,
                    "ARCHIVER_LEDGER_URL": ledger_url, "ARCHIVER_BROKER_URL": broker.url,
                    "ARCHIVER_CONFIG": str(self.config),
                    "ARCHIVER_PLUGINS": PLUGINS + (",s3,gcs" if extra_sink else ""),
                    **(env or {})}
        self.procs: list[Proc] = []
        self.ledger_url = ledger_url
        self._n = 0
        rc = self.archiver("ledger", "migrate", "-c", str(self.config)).wait(60)
        assert rc == 0, self.procs[-1].stderr

    # ------------------------------------------------------------------ processes
    def archiver(self, *args: str, name: str | None = None) -> Proc:
        self._n += 1
        p = Proc(self.tmp, name or f"archiver-{self._n}", list(args), self.env)
        self.procs.append(p)
        return p

    def dispatcher(self, *, serve: bool = False, poll: float = 0.3) -> Proc:
        return self.archiver("serve" if serve else "watch", "-c", str(self.config),
                             "--test-poll-interval", str(poll), name=f"dispatcher-{self._n}")

    def workers(self, n: int = 2, *, name: str = "w", extra: tuple[str, ...] = ()) -> Proc:
        """``celery worker`` with ``n`` prefork processes on this fleet's queue."""
        self._n += 1
        tag = f"{name}{self._n}"
        out, err = self.tmp / f"{tag}.out", self.tmp / f"{tag}.err"
        p = Proc.__new__(Proc)
        p.name, p.out_path, p.err_path = tag, out, err
        with open(out, "wb") as o, open(err, "wb") as e:
            p.proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "archiver_celery", "worker",
                 "-c", str(n), "-P", "prefork", "-Q", self.broker.queue, "-n",
                 f"{tag}@%h", "--without-gossip", "--without-mingle", "-l", "INFO", *extra],
                stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=self.env,
                start_new_session=True)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in self.procs:
            if p.proc.poll() is None:
                try:
                    if os.getpgid(p.proc.pid) == p.proc.pid:
                        os.killpg(p.proc.pid, signal.SIGTERM)
                    else:
                        p.proc.send_signal(signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 20
        for p in self.procs:
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_group(p)

    # ------------------------------------------------------------------ the ledger
    def ledger(self):
        from archiver.ledger import open_ledger
        from archiver.runtime import load_config_file
        _, loaded = load_config_file(str(self.config))
        return open_ledger(loaded.settings, create=False)

    def states(self) -> dict[str, str]:
        with_env(self.env)
        led = self.ledger()
        try:
            return led.job_states()
        finally:
            led.close()

    def wait_archived(self, job_ids: list[str], timeout: float = 120,
                      procs: tuple[Proc, ...] = ()) -> None:
        def done() -> bool:
            states = self.states()
            return all(states.get(j) == "archived" for j in job_ids)
        try:
            wait_for(f"{len(job_ids)} jobs archived", done, timeout=timeout, step=0.5,
                     procs=procs)
        except AssertionError as exc:
            states = Counter(self.states().get(j, "absent") for j in job_ids)
            raise AssertionError(f"{exc}: states {dict(states)}\n{self.logs()}") from None

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {p.name}\n{p.stderr[-tail:]}" for p in self.procs)

    # ------------------------------------------------------------------ invariants
    def check_invariants(self, job_ids: list[str], artifacts: int,
                         refetched: set[str] | None = frozenset()) -> None:
        """One "archived" record per job; each of the ``artifacts`` artifacts downloaded
        once (those named in ``refetched`` may be fetched again: their first download
        was cut; None: any may), nothing partial, the audit chain verifies, a rerun
        fetches nothing."""
        with_env(self.env)
        led = self.ledger()
        try:
            events = Counter(e.job_id for e in led.event_rows(limit=1_000_000)
                             if e.kind == "archived")
            audit = Counter()
            for row in led.audit_rows():
                rec = json.loads(row.line)
                if rec.get("kind") == "job" and rec.get("message") == "archived":
                    audit[rec.get("job_id")] += 1
        finally:
            led.close()
        dup_events = {j: n for j, n in events.items() if n != 1}
        dup_audit = {j: n for j, n in audit.items() if n != 1}
        assert not dup_events and set(events) >= set(job_ids), dup_events
        assert not dup_audit and set(audit) >= set(job_ids), dup_audit
        gets = artifact_gets(self.emu)
        assert len(gets) == artifacts, (len(gets), artifacts)
        again = {k: n for k, n in gets.items()
                 if n > 1 and refetched is not None and k[1] not in refetched}
        assert not again, ("downloaded more than once", again)
        root = self.tmp / "archive"
        assert partial_files(root) == []
        stored = [p for p in root.rglob("*") if p.is_file() and "bag" not in p.parts[-2:]]
        assert stored, "nothing stored"
        p = self.archiver("audit", "verify", "-c", str(self.config))
        assert p.wait(120) == 0, p.stderr[-3000:]
        before = sum(artifact_gets(self.emu).values())
        p = self.archiver("run", "-c", str(self.config))
        assert p.wait(120) == 0, p.stderr[-3000:]
        assert sum(artifact_gets(self.emu).values()) == before, "a rerun fetched again"


def with_env(env: dict[str, str]) -> None:
    """The test process reads the config too (its ${VAR}s)."""
    for k in ("PLANGREP_API_KEY", "ARCHIVER_LEDGER_URL", "ARCHIVER_BROKER_URL"):
        os.environ[k] = env[k]


def kill_group(p: Proc) -> None:
    """SIGKILL ``p`` (and its children when it leads its own process group)."""
    for sig in (signal.SIGCONT, signal.SIGKILL):
        try:
            if os.getpgid(p.proc.pid) == p.proc.pid:
                os.killpg(p.proc.pid, sig)
            else:
                os.kill(p.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        p.proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


def add_small_jobs(emu, n: int, *, project: str = "proj_c", artifacts: int = 1) -> list[str]:
    from archiver.testing.emulator import ArtifactSpec
    emu.add_project(project_id=project, name="C")
    return [emu.add_job(project, artifacts=[
        ArtifactSpec(f"a{i}-{k}.json", 200 + i % 50, where="document")
        for k in range(artifacts)])["id"] for i in range(n)]

"""The local sink's writers with unnamed temporary files (``temp_files: auto``, Linux
``O_TMPFILE``): nothing visible while writing, nothing left by a crash, no pending
record; and the switch to a named file where a directory refuses unnamed ones."""

from __future__ import annotations

import errno
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap

import pytest

from archiver.default_plugins import local_writer
from archiver.default_plugins.local import LocalSink
from archiver.errors import ConflictError
from archiver.ledger import open_ledger
from archiver.testing.configs import basic_config
from archiver.testing.emulator import ArtifactSpec
from archiver.testing.sink_contract import SinkContract, read_back, sha256_digests, store
from archiver.tracked import TrackedWriter

pytestmark = pytest.mark.skipif(not getattr(os, "O_TMPFILE", 0),
                                reason="unnamed temporary files need Linux O_TMPFILE")


def make(root, **kw) -> LocalSink:
    return LocalSink(LocalSink.Config(root=root, **kw), label="t")


def entries(path) -> list[str]:
    """Every file and directory below ``path``."""
    return sorted(os.path.relpath(os.path.join(d, n), path)
                  for d, dirs, files in os.walk(path) for n in dirs + files)


class TestUnnamed(SinkContract):
    @pytest.fixture
    def sink(self, tmp_path):
        sink = make(tmp_path / "root")
        assert sink.unnamed_temp_files(str(tmp_path / "root"))
        return sink


class TestNamed(SinkContract):
    @pytest.fixture
    def sink(self, tmp_path):
        return make(tmp_path / "root", temp_files="named")


def test_nothing_is_visible_while_writing_and_pending_stays_unset(tmp_path):
    sink = make(tmp_path / "root", read_only=True)
    writer = sink.open_writer("p/j/x.bin")
    assert writer.pending is None
    writer.write(b"a" * 70_000)
    writer.write(b"b" * 30_000)
    assert writer.pending is None
    assert entries(tmp_path / "root") == ["p", "p/j"]  # its directories, no file
    stored = writer.commit(sha256_digests(b"a" * 70_000 + b"b" * 30_000))
    assert stored.size == 100_000 and stored.existed is False
    assert entries(tmp_path / "root") == ["p", "p/j", "p/j/x.bin"]
    assert stat.S_IMODE(os.stat(stored.location).st_mode) == 0o444
    assert read_back(sink, "p/j/x.bin") == b"a" * 70_000 + b"b" * 30_000


def test_an_abort_or_a_conflict_leaves_nothing(tmp_path):
    sink = make(tmp_path / "root")
    store(sink, "k", b"one")
    writer = sink.open_writer("k")
    writer.write(b"two")
    with pytest.raises(ConflictError):
        writer.commit(sha256_digests(b"two"))
    writer.abort()
    aborted = sink.open_writer("other")
    aborted.write(b"x")
    aborted.abort()
    aborted.abort()
    assert entries(tmp_path / "root") == ["k"] and read_back(sink, "k") == b"one"
    assert store(sink, "k", b"one").existed is True


CRASH = textwrap.dedent("""\
    import os, signal, sys
    from archiver.default_plugins.local import LocalSink
    sink = LocalSink(LocalSink.Config(root=sys.argv[1]), label="t")
    writer = sink.open_writer("job/one.bin")
    writer.write(b"x" * 100000)
    print(writer.pending, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """)


def test_a_killed_writer_leaves_nothing_behind(tmp_path):
    root = tmp_path / "root"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(root)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.split() == ["None"]
    assert entries(root) == ["job"]
    assert make(root).cleanup_partials() == 0


def test_a_run_records_no_pending_writer_at_all(emu, tmp_path):
    from click.testing import CliRunner

    from archiver.cli import cli
    emu.add_project(project_id="proj_t", name="T")
    emu.add_job("proj_t", artifacts=[ArtifactSpec(f"a{i}.json", 5_000) for i in range(5)])
    cfg = tmp_path / "a.yaml"
    cfg.write_text(basic_config(emu, tmp_path))
    out = CliRunner().invoke(cli, ["run", "-c", str(cfg)],
                             env={"PLANGREP_API_KEY": emu.api_key})
    assert out.exit_code == 0, out.output
    assert (tmp_path / "state" / "ledger.sqlite").is_file()
    db = sqlite3.connect(tmp_path / "state" / "ledger.sqlite")
    try:
        # AUTOINCREMENT's counter: no pending row was ever inserted, not only none is left
        used = db.execute("SELECT seq FROM sqlite_sequence WHERE name='pending'").fetchall()
        copies = db.execute("SELECT count(*) FROM copies").fetchone()[0]
    finally:
        db.close()
    assert used in ([], [(0,)]) and copies == 5 + 2  # the artifacts, job.json, result.json
    assert not [p for p in entries(tmp_path / "archive") if p.endswith(".partial")]


@pytest.fixture
def refusing(monkeypatch):
    """``refuse(directory)``: open(O_TMPFILE) in ``directory`` fails as on a filesystem
    without unnamed files (FAT, NFS); every other call is the real one."""
    refused, real_open = set(), os.open

    def fake_open(path, flags, *args, **kw):
        if flags & local_writer.O_TMPFILE == local_writer.O_TMPFILE and str(path) in refused:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported", path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", fake_open)
    return refused.add


def test_a_directory_refusing_unnamed_files_gets_a_recorded_named_one(tmp_path, refusing):
    sink = make(tmp_path / "root")
    (tmp_path / "root" / "mnt").mkdir(parents=True)
    refusing(str(tmp_path / "root" / "mnt"))
    ledger = open_ledger(tmp_path / "state")
    try:
        writer = TrackedWriter(sink, ledger, "mnt/x.bin", job_id="job_1", path="x.bin")
        assert writer.writer.pending is None and ledger.list_pending() == []
        writer.write(b"first")
        token = writer.writer.pending
        # named now, recorded by the core, and not created before it was recorded
        assert token.endswith(".partial") and [r.token for r in ledger.list_pending()] == [
            token]
        assert not os.path.exists(token)
        writer.write(b" second")
        assert open(token, "rb").read() == b"first second"
        stored = writer.commit(sha256_digests(b"first second"))
        assert stored.size == 12 and ledger.list_pending() == []
        assert entries(tmp_path / "root" / "mnt") == ["x.bin"]
        # the directory is known now: its next writer is named from the start
        assert sink.open_writer("mnt/y.bin").pending.endswith(".partial")
        assert sink.open_writer("elsewhere/z.bin").pending is None
    finally:
        ledger.close()


def test_a_named_switch_holds_one_chunk_until_the_commit(tmp_path, refusing):
    sink = make(tmp_path / "root")
    (tmp_path / "root" / "mnt").mkdir(parents=True)
    refusing(str(tmp_path / "root" / "mnt"))
    writer = sink.open_writer("mnt/one")
    writer.write(b"only chunk")
    assert not os.path.exists(writer.pending)
    assert writer.commit(sha256_digests(b"only chunk")).size == 10
    assert read_back(sink, "mnt/one") == b"only chunk"
    empty = sink.open_writer("mnt/empty")  # named from the start: an empty object works
    assert empty.commit(sha256_digests(b"")).size == 0


def test_no_proc_or_no_links_means_named_files(tmp_path, monkeypatch):
    def no_links(src, dst, **kw):
        raise OSError(errno.ENOENT, "No such file or directory", src)

    monkeypatch.setattr(os, "link", no_links)
    sink = make(tmp_path / "root")
    assert sink.unnamed_temp_files(str(tmp_path / "root")) is False
    assert sink.open_writer("a/b").pending.endswith(".partial")
    assert entries(tmp_path / "root") == []  # the probe left nothing

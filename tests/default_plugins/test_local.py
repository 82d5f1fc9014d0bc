"""The local sink: the sink contract, plus what only a filesystem can show."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from archiver.default_plugins.local import LocalSink
from archiver.errors import ConflictError, SinkError
from archiver.plugins import build_plugin_manager
from archiver.testing.sink_contract import SinkContract, payload, read_back, sha256_digests, store


def make(root, label="t", **kw) -> LocalSink:
    return LocalSink(LocalSink.Config(root=root, **kw), label=label)


def files_under(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, fs in os.walk(path) for f in fs)


def partials(path) -> list[str]:
    return [f for f in files_under(path) if f.endswith(".partial")]


class TestLocalSink(SinkContract):
    @pytest.fixture
    def sink(self, tmp_path):
        return make(tmp_path / "root")


class TestLocalSinkReadOnlyNoFsync(SinkContract):
    @pytest.fixture
    def sink(self, tmp_path):
        return make(tmp_path / "root", read_only=True, fsync=False)


# --------------------------------------------------------------------------- config, plugin

def test_registered_as_builtin_plugin(monkeypatch):
    monkeypatch.setenv("ARCHIVER_PLUGINS", "local")
    plugins = build_plugin_manager(entry_points=False)
    assert plugins.registry.get("sink", "local") is LocalSink
    assert plugins.registry.owner("sink", "local") == "local"


def test_config_requires_root_and_forbids_unknown_keys(tmp_path):
    with pytest.raises(ValidationError):
        LocalSink.Config()
    with pytest.raises(ValidationError):
        LocalSink.Config(root=tmp_path, chunk_size=5)


def test_relative_root_is_relative_to_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sink = make("archive")
    store(sink, "a/b.txt", b"x")
    assert (tmp_path / "archive" / "a" / "b.txt").read_bytes() == b"x"
    assert sink.describe("a/b.txt") == str(tmp_path / "archive" / "a" / "b.txt")


# --------------------------------------------------------------------------- files on disk

def test_committed_file_location_and_no_leftovers(tmp_path):
    sink = make(tmp_path / "root")
    stored = store(sink, "p/j/data/x.bin", b"hello", [b"he", b"", b"llo"])
    assert stored.location == str(tmp_path / "root" / "p" / "j" / "data" / "x.bin")
    assert stored.provider_checksum == {}
    assert files_under(tmp_path / "root") == ["p/j/data/x.bin"]
    assert sink.stat("p/j/data/x.bin").location == stored.location


def test_pending_is_hidden_temp_file_beside_target(tmp_path):
    sink = make(tmp_path / "root", temp_files="named")
    writer = sink.open_writer("d/" + "é" * 120)  # 240-byte name: temp name stays < 255
    writer.write(b"abc")
    name = os.path.basename(writer.pending)
    assert os.path.dirname(writer.pending) == str(tmp_path / "root" / "d")
    assert name.startswith(".") and name.endswith(".partial") and len(name.encode()) < 255
    assert Path(writer.pending).read_bytes() == b"abc"
    writer.abort()
    assert files_under(tmp_path / "root") == []


def test_read_only_files(tmp_path):
    ro, rw = make(tmp_path / "ro", read_only=True), make(tmp_path / "rw")
    assert stat.S_IMODE(os.stat(store(ro, "a/x", b"1").location).st_mode) == 0o444
    assert stat.S_IMODE(os.stat(store(rw, "a/x", b"1").location).st_mode) & 0o200


def test_conflict_leaves_old_file_identical(tmp_path):
    sink = make(tmp_path / "root")
    old = store(sink, "k/obj", b"old bytes")
    before = os.stat(old.location)
    with pytest.raises(ConflictError) as exc:
        store(sink, "k/obj", b"new bytes!")
    assert "'t'" in str(exc.value) and "'k/obj'" in str(exc.value)
    after = os.stat(old.location)
    assert Path(old.location).read_bytes() == b"old bytes"
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert files_under(tmp_path / "root") == ["k/obj"]


def test_directory_and_file_at_the_same_key(tmp_path):
    sink = make(tmp_path / "root")
    store(sink, "a/b", b"1")
    with pytest.raises(ConflictError, match="directory"):
        store(sink, "a", b"2")
    store(sink, "f", b"1")
    with pytest.raises(SinkError, match="'f/g'"):
        store(sink, "f/g", b"2")
    assert sorted(files_under(tmp_path / "root")) == ["a/b", "f"]


def test_commit_without_sha256_is_refused(tmp_path):
    sink = make(tmp_path / "root")
    writer = sink.open_writer("x")
    writer.write(b"data")
    with pytest.raises(SinkError, match="sha256"):
        writer.commit({"md5": "0" * 32})
    assert files_under(tmp_path / "root") == []


def test_filesystem_without_hard_links_falls_back_to_rename(tmp_path, monkeypatch):
    def no_links(src, dst, **kw):
        raise OSError(errno.EPERM, "Operation not permitted", src, None, dst)

    monkeypatch.setattr(os, "link", no_links)
    sink = make(tmp_path / "root")
    assert store(sink, "k", b"one").existed is False
    assert store(sink, "k", b"one").existed is True
    with pytest.raises(ConflictError):
        store(sink, "k", b"two")
    assert read_back(sink, "k") == b"one"
    assert files_under(tmp_path / "root") == ["k"]


# --------------------------------------------------------------------------- hostile keys

HOSTILE = ["../escape", "a/../../escape", "/abs/escape", "a//b", "./x", "a/./b", "", "a/",
           "a\\..\\b", "a\x00b", "\udcff", "x" * 256, ".x.%%0123456789abcdef.partial"]


@pytest.mark.parametrize("key", HOSTILE)
def test_hostile_keys_are_refused(tmp_path, key):
    sink = make(tmp_path / "root", label="primary")
    for call in (sink.open_writer, sink.stat, sink.describe, lambda k: read_back(sink, k)):
        with pytest.raises(SinkError) as exc:
            call(key)
        assert "'primary'" in str(exc.value) and repr(key) in str(exc.value)
    assert files_under(tmp_path) == []


def test_symlink_inside_root_cannot_lead_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "root").mkdir()
    os.symlink(outside, tmp_path / "root" / "link")
    sink = make(tmp_path / "root")
    with pytest.raises(SinkError, match="symbolic link"):
        sink.open_writer("link/x")
    with pytest.raises(SinkError, match="symbolic link"):
        sink.stat("link/x")
    assert os.listdir(outside) == []


def test_symlink_appearing_in_a_directory_already_written_to_is_refused(tmp_path):
    """Directories already resolved are remembered; links made in them later are not."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    sink = make(tmp_path / "root")
    store(sink, "job/a/first", b"x")
    store(sink, "job/a/second", b"y")  # job/a exists now: remembered as inside
    os.symlink(outside / "secret", tmp_path / "root" / "job" / "a" / "file-link")
    os.symlink(outside, tmp_path / "root" / "job" / "a" / "dir-link")
    with pytest.raises(SinkError, match="symbolic link"):
        sink.stat("job/a/file-link")
    with pytest.raises(SinkError, match="symbolic link"):
        sink.open_writer("job/a/dir-link/x")
    store(sink, "job/a/third", b"z")
    assert sorted(os.listdir(outside)) == ["secret"]


def test_root_itself_may_be_a_symlink(tmp_path):
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "root")
    store(make(tmp_path / "root"), "a/b", b"x")
    assert (tmp_path / "real" / "a" / "b").read_bytes() == b"x"


# --------------------------------------------------------------------------- crashes

CRASH = textwrap.dedent("""\
    import os, signal, sys
    from archiver.default_plugins.local import LocalSink
    sink = LocalSink(LocalSink.Config(root=sys.argv[1], temp_files=sys.argv[2]), label="t")
    for key in ("job/one.bin", "job/two.bin"):
        writer = sink.open_writer(key)
        writer.write(b"x" * 100000)
        print(writer.pending, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """)


def test_crash_leftovers_are_discarded_and_cleaned_up(tmp_path):
    root = tmp_path / "root"
    proc = subprocess.run([sys.executable, "-c", CRASH, str(root), "named"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    first, second = proc.stdout.split()
    assert os.path.getsize(first) == os.path.getsize(second) == 100000
    sink = make(root)
    assert sink.stat("job/one.bin") is None
    sink.discard(first)
    assert not os.path.exists(first) and os.path.exists(second)
    assert sink.cleanup_partials() == 1
    assert sink.cleanup_partials() == 0
    assert files_under(root) == []


def test_cleanup_respects_age_and_prefix_and_spares_data(tmp_path):
    root = tmp_path / "root"
    sink = make(root, temp_files="named")
    for key in ("p/.x.partial", "p/x.partial", "q/.y.abcdef0123456789.partial"):
        store(sink, key, b"archived data, not a leftover")
    old_p, old_q, fresh = (sink.open_writer(k) for k in ("p/a", "q/b", "p/c"))
    for writer in (old_p, old_q, fresh):
        writer.write(b"partial")  # the temporary file exists from the first write on
    past = time.time() - 7200
    for writer in (old_p, old_q):
        os.utime(writer.pending, (past, past))
    assert sink.cleanup_partials(prefix="q", older_than=3600) == 1
    assert not os.path.exists(old_q.pending) and os.path.exists(old_p.pending)
    removed = sink.cleanup(older_than=3600)
    assert removed == [f"t: removed {old_p.pending}"]
    assert os.path.exists(fresh.pending)
    for writer in (old_p, old_q, fresh):
        writer.abort()  # their files are gone already: nothing to do, no error
    assert sorted(files_under(root)) == ["p/.x.partial", "p/x.partial",
                                         "q/.y.abcdef0123456789.partial"]


def test_discard_refuses_anything_but_own_temp_files(tmp_path):
    sink = make(tmp_path / "root", label="primary")
    kept = store(sink, "k/data.partial", b"keep")
    elsewhere = tmp_path / ".x.%%0123456789abcdef.partial"
    elsewhere.write_bytes(b"not ours")
    sneaky = str(tmp_path / "root" / ".." / elsewhere.name)
    for token in (kept.location, str(elsewhere), sneaky, elsewhere.name, "", "/etc/passwd"):
        with pytest.raises(SinkError, match="'primary'.*refusing"):
            sink.discard(token)
    assert elsewhere.exists() and read_back(sink, "k/data.partial") == b"keep"


# --------------------------------------------------------------------------- I/O errors

def test_root_below_a_regular_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    sink = make(tmp_path / "file.txt" / "sub", label="primary")
    with pytest.raises(SinkError) as exc:
        sink.open_writer("a/b")
    assert "'primary'" in str(exc.value) and "'a/b'" in str(exc.value)
    with pytest.raises(SinkError, match="'primary'.*not a writable directory"):
        sink.preflight()


def test_preflight(tmp_path):
    sink = make(tmp_path / "new" / "root")
    sink.preflight()
    assert (tmp_path / "new" / "root").is_dir() and files_under(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(SinkError, match="'t'.*not a writable directory"):
        make(tmp_path / "file").preflight()


def test_disk_full_becomes_sink_error_and_removes_temp(tmp_path):
    # RLIMIT_FSIZE makes write() fail with EFBIG, as a full disk fails with ENOSPC.
    sink = make(tmp_path / "root", label="primary")
    writer = sink.open_writer("big/obj")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        with pytest.raises(SinkError) as exc:
            writer.write(payload(2 << 20))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    assert "'primary'" in str(exc.value) and "'big/obj'" in str(exc.value)
    assert partials(tmp_path) == [] and sink.stat("big/obj") is None
    writer.abort()
    with pytest.raises(SinkError):
        writer.commit(sha256_digests(b""))


# --------------------------------------------------------------------------- leftovers known
# by construction: the pending token is recorded before anything exists at the sink

def test_nothing_exists_at_the_sink_before_the_first_write(tmp_path):
    sink = make(tmp_path / "root", temp_files="named")
    sink.preflight()
    writer = sink.open_writer("p/j/data/new/dir/x.bin")
    assert writer.pending.endswith(".partial") and "/new/dir/." in writer.pending
    assert files_under(tmp_path / "root") == [] and not (tmp_path / "root" / "p").exists()
    writer.abort()  # nothing to remove
    empty = sink.open_writer("p/empty")
    assert not os.path.exists(empty.pending)
    assert empty.commit(sha256_digests(b"")).size == 0  # an empty object is still stored
    assert files_under(tmp_path / "root") == ["p/empty"]


def _chattr(flag: str, path) -> bool:
    try:
        return subprocess.run(["chattr", flag, str(path)], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.fixture
def immutable(tmp_path):
    """``make(path)``: make a directory immutable (chattr +i: even root cannot create or
    remove a file in it), undone at teardown."""
    probe = tmp_path / "probe"
    probe.mkdir()
    if not _chattr("+i", probe):
        pytest.skip("chattr +i is not available here")
    _chattr("-i", probe)
    made = []

    def make_immutable(path):
        assert _chattr("+i", path)
        made.append(path)

    yield make_immutable
    for path in made:
        _chattr("-i", path)


def test_abort_succeeds_only_once_the_temporary_file_is_gone(tmp_path, immutable):
    sink = make(tmp_path / "root", temp_files="named")
    writer = sink.open_writer("d/obj")
    writer.write(b"x" * 100_000)
    immutable(tmp_path / "root" / "d")  # link, rename and unlink all fail now
    with pytest.raises(SinkError, match="cannot commit"):
        writer.commit(sha256_digests(b"x" * 100_000))
    with pytest.raises(SinkError, match="cannot remove temporary file"):
        writer.abort()  # the leftover is still there: the caller keeps its pending record
    assert os.path.getsize(writer.pending) == 100_000
    _chattr("-i", tmp_path / "root" / "d")
    writer.abort()
    writer.abort()
    assert files_under(tmp_path / "root") == []


RUN = textwrap.dedent("""\
    import os, signal, subprocess, sys
    from archiver.default_plugins import local_writer
    mode, config = sys.argv[1], sys.argv[2]
    if mode == "kill-after-create":
        # SIGKILL right after a writer's temporary file is created
        real_open = os.open
        def killing_open(path, flags, *args, **kw):
            fd = real_open(path, flags, *args, **kw)
            if (isinstance(path, str) and path.endswith(".partial") and flags & os.O_CREAT
                    and ".preflight." not in path):
                os.kill(os.getpid(), signal.SIGKILL)
            return fd
        os.open = killing_open
    elif mode == "immutable-on-commit":
        # the directory of imm/a.json turns immutable between its last write and commit
        real_commit = local_writer.LocalWriter.commit
        def commit(self, digests):
            if self.key.endswith("/imm/a.json"):
                subprocess.run(["chattr", "+i", os.path.dirname(self.pending)], check=True)
            return real_commit(self, digests)
        local_writer.LocalWriter.commit = commit
    from archiver.cli import cli
    cli(["run", "-c", config])
    """)


def _run(mode: str, config, key: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN, mode, str(config)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PLANGREP_API_KEY": key})


def _setup(emu, tmp_path):
    from archiver.testing.configs import basic_config
    from archiver.testing.emulator import ArtifactSpec
    emu.add_project(project_id="proj_t", name="T")
    job = emu.add_job("proj_t", artifacts=[ArtifactSpec("imm/a.json", 150_000),
                                           ArtifactSpec("b.json", 100)])
    cfg = tmp_path / "a.yaml"
    # named temporary files: the ones a crash can leave, which the ledger must know
    cfg.write_text(basic_config(emu, tmp_path, temp_files="named"))
    return job, cfg


def _pending(tmp_path) -> list:
    from archiver.ledger import open_ledger
    ledger = open_ledger(tmp_path / "state")
    try:
        return ledger.list_pending()
    finally:
        ledger.close()


def _run_here(cfg, key: str):
    from click.testing import CliRunner

    from archiver.cli import cli
    return CliRunner().invoke(cli, ["run", "-c", str(cfg)], env={"PLANGREP_API_KEY": key})


def test_sigkill_after_the_temp_file_is_created_leaves_nothing_unrecorded(emu, tmp_path):
    job, cfg = _setup(emu, tmp_path)
    first = _run("kill-after-create", cfg, emu.api_key)
    assert first.returncode == -signal.SIGKILL, first.stderr
    left = partials(tmp_path / "archive")
    assert len(left) == 1
    # the file the dead run created is exactly a token the ledger had recorded before
    assert [str(tmp_path / "archive" / left[0])] == [r.token for r in _pending(tmp_path)]
    second = _run_here(cfg, emu.api_key)  # its recovery discards the dead run's writers
    assert second.exit_code == 0, second.output
    assert partials(tmp_path / "archive") == [] and _pending(tmp_path) == []
    assert (tmp_path / "archive" / "proj_t" / job["id"] / "data" / "job.json").is_file()


def test_a_leftover_that_cannot_be_removed_stays_recorded_until_it_is(emu, tmp_path,
                                                                       immutable):
    job, cfg = _setup(emu, tmp_path)
    first = _run("immutable-on-commit", cfg, emu.api_key)
    imm = tmp_path / "archive" / "proj_t" / job["id"] / "data" / "artifacts" / "imm"
    try:
        assert first.returncode == 1, first.stderr  # the job is incomplete
        left = [p for p in imm.iterdir() if p.name.endswith(".partial")]
        assert len(left) == 1 and left[0].stat().st_size == 150_000
        rows = _pending(tmp_path)
        assert [r.token for r in rows] == [str(left[0])]  # not forgotten: still recorded
    finally:
        _chattr("-i", imm)
    second = _run_here(cfg, emu.api_key)  # the writer's process is dead: discarded now
    assert second.exit_code == 0, second.output
    assert partials(tmp_path / "archive") == [] and _pending(tmp_path) == []
    assert (imm / "a.json").stat().st_size == 150_000

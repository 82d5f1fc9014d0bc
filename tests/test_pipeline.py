"""End to end, in-process: emulator over real HTTP -> pipeline -> local sinks -> ledger."""

from __future__ import annotations

import gzip
import hashlib
import logging
from pathlib import Path


from archiver.config import load_config
from archiver.hookspecs import hookimpl
from archiver.ledger import open_ledger
from archiver import api
from archiver.runtime import Runtime
from archiver.plugins import build_plugin_manager
from archiver.testing.emulator import ArtifactSpec

from archiver.testing.configs import basic_config


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha(path: Path) -> str:
    return sha(path.read_bytes())


def make(emu, tmp_path, text=None, extra=(), **kw):
    plugins = build_plugin_manager(entry_points=False, extra=list(extra))
    cfg = tmp_path / "archiver.yaml"
    cfg.write_text(text or basic_config(emu, tmp_path, **kw))
    loaded = load_config(cfg, plugins.registry, env={"PLANGREP_API_KEY": emu.api_key})
    ledger = open_ledger(loaded.settings.state_dir)
    return Runtime(loaded, plugins, ledger), ledger


def run_once(emu, tmp_path, **kw):
    pipeline, ledger = make(emu, tmp_path, **kw)
    try:
        return api.run(pipeline), ledger.summary()
    finally:
        pipeline.close()
        ledger.close()


def partials(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".partial")]


def job_dir(tmp_path, job):
    return tmp_path / "archive" / job["projectId"] / job["id"] / "data"


def simple_job(emu, paths=("a.json", "dir/b.bin"), size=5000, **kw):
    emu.add_project(project_id="proj_t", name="T")
    return emu.add_job("proj_t", artifacts=[ArtifactSpec(path=p, size=size) for p in paths], **kw)


def test_demo_archived_byte_exact(emu, tmp_path):
    emu.load_demo()
    report, summary = run_once(emu, tmp_path)
    assert report.exit_code == 0, report.as_dict()
    assert report.archived and report.nothing_to_store and report.waiting
    root = tmp_path / "archive"
    ledger = open_ledger(tmp_path / "state")
    for job_id in report.archived:
        rows = ledger.job_report(job_id)["copies"]
        paths = {r["path"] for r in rows}
        assert {"job.json", "result.json"} | set(emu.artifact_paths(job_id)) == paths
        for r in rows:
            loc = Path(r["location"])
            assert root in loc.parents
            if r["path"] not in ("job.json", "result.json"):
                want = emu.artifact_bytes(job_id, r["path"])
                assert loc.read_bytes() == want
                assert r["received"]["sha256"] == sha(want) == r["stored"]["sha256"]
                assert r["received"]["md5"] == hashlib.md5(want).hexdigest()
    assert not partials(root)
    assert summary["jobs"]["archived"] == len(report.archived)


def test_result_json_is_byte_exact(emu, tmp_path):
    job = simple_job(emu)
    run_once(emu, tmp_path)
    import requests
    served = requests.get(f"{emu.base_url}/jobs/{job['id']}/result",
                          headers={"Authorization": f"Bearer {emu.api_key}"}).content
    assert (job_dir(tmp_path, job) / "result.json").read_bytes() == served
    assert (job_dir(tmp_path, job) / "artifacts" / "dir" / "b.bin").exists()


def test_second_run_downloads_nothing(emu, tmp_path):
    emu.load_demo()
    first, _ = run_once(emu, tmp_path)
    before_art, before_res = emu.count(route="artifact"), emu.count(route="result")
    second, _ = run_once(emu, tmp_path)
    assert second.exit_code == 0
    assert second.archived == [] and second.skipped >= len(first.archived) > 0
    assert emu.count(route="artifact") == before_art
    assert emu.count(route="result") == before_res
    assert second.bytes_received == 0


def test_job_finishing_later_is_archived_then(emu, tmp_path):
    job = simple_job(emu, status="processing")
    report, _ = run_once(emu, tmp_path)
    assert job["id"] in report.waiting and not report.archived
    emu.set_status(job["id"], "completed")
    report, _ = run_once(emu, tmp_path)
    assert report.archived == [job["id"]]


def test_failed_and_cancelled_have_nothing_to_store(emu, tmp_path):
    emu.add_project(project_id="proj_t", name="T")
    ids = [emu.add_job("proj_t", status=s)["id"] for s in ("failed", "cancelled")]
    # expired without ever completing (a completed job expiring unseen is lost: test_triage)
    ids.append(emu.expire(emu.add_job("proj_t", status="processing")["id"])["id"])
    report, summary = run_once(emu, tmp_path)
    assert sorted(report.nothing_to_store) == sorted(ids)
    assert summary["jobs"] == {"nothing_to_store": 3}
    assert report.exit_code == 0


def test_drop_mid_body_restarts_artifact(emu, tmp_path):
    job = simple_job(emu, size=3 << 20)
    emu.faults.drop_mid_body_n = 2
    report, _ = run_once(emu, tmp_path)
    assert report.archived == [job["id"]], report.as_dict()
    for p in ("a.json", "dir/b.bin"):
        got = (job_dir(tmp_path, job) / "artifacts" / p).read_bytes()
        assert got == emu.artifact_bytes(job["id"], p)
    assert not partials(tmp_path / "archive")


def test_persistent_bad_length_is_incomplete_then_completes(emu, tmp_path):
    job = simple_job(emu, size=200_000)
    emu.faults.fault_paths = {"a.json"}
    emu.faults.wrong_length_n = 1000
    report, summary = run_once(emu, tmp_path)
    assert report.exit_code == 1
    assert job["id"] in report.incomplete
    assert any("a.json" in p for p in report.incomplete[job["id"]])
    art = job_dir(tmp_path, job) / "artifacts"
    assert not (art / "a.json").exists() and (art / "dir" / "b.bin").exists()
    assert not partials(tmp_path / "archive")
    assert summary["problems"][0]["job_id"] == job["id"]
    emu.faults.wrong_length_n = 0
    before = emu.count(route="artifact")
    report, _ = run_once(emu, tmp_path)
    assert report.archived == [job["id"]]
    assert emu.count(route="artifact") - before == 1  # only the missing artifact
    assert (art / "a.json").read_bytes() == emu.artifact_bytes(job["id"], "a.json")


def test_rate_limit_storm_still_completes(emu, tmp_path):
    job = simple_job(emu)
    emu.faults.rate_limit_retry_after = "0"
    emu.faults.rate_limit_n = 5  # the source allows 5 retries per request
    report, _ = run_once(emu, tmp_path)
    assert report.archived == [job["id"]], report.as_dict()


def test_wrong_api_key_is_one_clear_error(emu, tmp_path):
    simple_job(emu)
    text = basic_config(emu, tmp_path).replace("${PLANGREP_API_KEY}", "pk_wrong_key_123")
    pipeline, ledger = make(emu, tmp_path, text=text)
    report = api.run(pipeline)
    assert report.exit_code == 3
    assert "401" in report.fatal or "unauthorized" in report.fatal
    assert "pk_wrong_key_123" not in report.fatal
    assert len(emu.requests) == 1


HOSTILE = ["../../etc/passwd", "/abs", "a\\..\\b", "nul\x00byte", "x" * 10_000,
           "Case.json", "case.json", "ctl\x01\x1f.txt", "..", ".", "dir/../../up"]


def test_hostile_paths_stay_inside_root(emu, tmp_path):
    emu.add_project(project_id="proj_t", name="T")
    job = emu.add_job("proj_t", artifacts=[ArtifactSpec(path=p, size=64) for p in HOSTILE])
    report, _ = run_once(emu, tmp_path)
    assert report.archived == [job["id"]], report.as_dict()
    root = (tmp_path / "archive").resolve()
    files = [p for p in root.rglob("*") if p.is_file() and "data" in p.relative_to(root).parts]
    assert len(files) == len(HOSTILE) + 2
    stored = {p.read_bytes() for p in files}
    for p in HOSTILE:
        assert emu.artifact_bytes(job["id"], p) in stored
    assert not (tmp_path / "etc").exists() and not Path("/abs").exists()


def test_conflict_leaves_existing_file_untouched(emu, tmp_path):
    job = simple_job(emu)
    target = job_dir(tmp_path, job) / "artifacts" / "a.json"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"somebody else's bytes")
    report, _ = run_once(emu, tmp_path)
    assert job["id"] in report.incomplete
    assert "conflict" in " ".join(report.incomplete[job["id"]])
    assert target.read_bytes() == b"somebody else's bytes"
    ledger = open_ledger(tmp_path / "state")
    assert any(e["kind"] == "conflict" for e in ledger.events(job["id"]))


def test_identical_existing_file_is_success(emu, tmp_path):
    job = simple_job(emu)
    target = job_dir(tmp_path, job) / "artifacts" / "a.json"
    target.parent.mkdir(parents=True)
    target.write_bytes(emu.artifact_bytes(job["id"], "a.json"))
    report, _ = run_once(emu, tmp_path)
    assert report.archived == [job["id"]]


def test_api_key_never_leaks(emu, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    job = simple_job(emu)
    emu.faults.error_5xx_n = 2
    emu.faults.drop_mid_body_n = 1
    emu.faults.rate_limit_retry_after = "0"
    emu.faults.rate_limit_n = 1
    pipeline, ledger = make(emu, tmp_path)
    report = api.run(pipeline)
    assert report.archived == [job["id"]]
    text = caplog.text + repr(pipeline.source) + repr(report.as_dict())
    ledger.close()
    key = emu.api_key
    assert key not in text
    for f in (tmp_path / "state").iterdir():
        assert key.encode() not in f.read_bytes()


class Recorder:
    def __init__(self):
        self.artifacts, self.jobs = [], []

    @hookimpl
    def archiver_artifact_done(self, job, artifact, result):
        self.artifacts.append((job.id, result.path, result.ok))

    @hookimpl
    def archiver_job_done(self, job, state, results):
        self.jobs.append((job.id, state, len(results)))

    @hookimpl
    def archiver_ignore_artifact(self, job, artifact):
        return True if artifact.path == "skip.me" else None

    @hookimpl
    def archiver_artifact_key(self, job, artifact, sink, default):
        if artifact.path == "rename.me":
            return f"{job.project_id}/{job.id}/data/artifacts/renamed/../by-hook"
        return None


def test_hooks_fire_filter_and_name(emu, tmp_path):
    job = simple_job(emu, paths=("keep.json", "skip.me", "rename.me"))
    rec = Recorder()
    pipeline, ledger = make(emu, tmp_path, extra=[("recorder", rec)])
    report = api.run(pipeline)
    assert report.archived == [job["id"]]
    assert sorted(p for _, p, ok in rec.artifacts) == ["job.json", "keep.json", "rename.me",
                                                       "result.json"]
    assert rec.jobs == [(job["id"], "archived", 4)]
    art = job_dir(tmp_path, job) / "artifacts"
    assert not (art / "skip.me").exists()
    # the hook's key went through the sanitiser: ".." became a harmless segment
    assert (art / "renamed" / "．．" / "by-hook").exists()  # U+FF0E, see docs/layout.md


def test_per_sink_chains_and_dual_digests(emu, tmp_path):
    emu.add_project(project_id="proj_t", name="T")
    job = emu.add_job("proj_t", artifacts=[ArtifactSpec(path="r.json.gz", size=300_000,
                                                        compress="gzip")])
    extra = f"""\
  - name: plain
    type: local
    root: {tmp_path / 'plain'}
    transforms:
      - type: decompress
      - type: checksum
        algorithms: [sha256, sha1]
"""
    text = basic_config(emu, tmp_path, extra_sink=extra)
    pipeline, ledger = make(emu, tmp_path, text=text)
    report = api.run(pipeline)
    assert report.archived == [job["id"]], report.as_dict()
    served = emu.artifact_bytes(job["id"], "r.json.gz")
    plain = gzip.decompress(served)
    exact = job_dir(tmp_path, job) / "artifacts" / "r.json.gz"
    unzipped = tmp_path / "plain" / job["projectId"] / job["id"] / "data" / "artifacts" / "r.json"
    assert exact.read_bytes() == served and unzipped.read_bytes() == plain
    rows = {r["sink"]: r for r in ledger.job_report(job["id"])["copies"]
            if r["path"] == "r.json.gz"}
    assert rows["primary"]["received"]["sha256"] == rows["plain"]["received"]["sha256"] == sha(served)
    assert rows["primary"]["stored"]["sha256"] == sha(served)
    assert rows["plain"]["stored"]["sha256"] == sha(plain)
    assert rows["plain"]["stored"]["sha1"] == hashlib.sha1(plain).hexdigest()
    measures = {f["position"]: f["measures"] for f in rows["plain"]["chain"]}
    assert measures["sinks.plain.transforms[1]"] == "stored"
    assert "implicit" not in [f["position"] for f in rows["plain"]["chain"]
                              if f["measures"] == "stored"]


class Exploding:
    """A transform plugin that raises mid-stream in one sink only."""

    @hookimpl
    def archiver_register_transforms(self, register):
        from archiver.components import ComponentConfig, Stage, Transform

        class Boom(Stage):
            def __init__(self):
                self.n = 0

            def feed(self, chunk):
                self.n += len(chunk)
                if self.n > 100_000:
                    raise RuntimeError("kaboom")
                return chunk

        class BoomTransform(Transform):
            name = "boom"
            Config = ComponentConfig

            def stage(self, ctx):
                return Boom()

        register(BoomTransform)


def test_transform_failure_isolated_to_its_sink(emu, tmp_path):
    job = simple_job(emu, paths=("big.bin", "small.bin"), size=50_000)
    emu.add_job("proj_t", artifacts=[ArtifactSpec(path="huge.bin", size=400_000)])
    extra = f"""\
  - name: fragile
    type: local
    root: {tmp_path / 'fragile'}
    transforms:
      - type: boom
"""
    text = basic_config(emu, tmp_path, extra_sink=extra)
    pipeline, ledger = make(emu, tmp_path, text=text, extra=[("exploding", Exploding())])
    report = api.run(pipeline)
    assert report.archived == [job["id"]]
    (bad_job, problems), = report.incomplete.items()
    assert "kaboom" in problems[0] and "fragile" in problems[0] and "huge.bin" in problems[0]
    assert "transform boom" in problems[0]
    assert not partials(tmp_path / "fragile") and not list((tmp_path / "fragile").rglob("huge.bin"))
    assert list((tmp_path / "archive").rglob("huge.bin"))


def test_many_jobs_concurrently(emu, tmp_path):
    emu.add_project(project_id="proj_t", name="T")
    ids = [emu.add_job("proj_t", artifacts=[ArtifactSpec(path=f"{j}/f{i}.bin", size=2000)
                                            for i in range(5)])["id"] for j in range(30)]
    report, summary = run_once(emu, tmp_path)
    assert sorted(report.archived) == sorted(ids)
    assert summary["sinks"]["primary"]["objects"] == 30 * 7


def test_expired_before_archiving_is_lost(emu, tmp_path):
    job = simple_job(emu, status="processing")
    run_once(emu, tmp_path)
    emu.set_status(job["id"], "completed")
    emu.expire(job["id"])
    report, summary = run_once(emu, tmp_path)
    assert job["id"] in report.lost and report.exit_code == 4
    assert summary["jobs"].get("lost") == 1


def _gzip_zeros(n: int) -> bytes:
    import zlib
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(1 << 20)
    return b"".join([*(c.compress(block) for _ in range(n >> 20)), c.flush()])


def test_bad_compressed_input_fails_only_that_sink(emu, tmp_path):
    """Bomb, truncated, fake magic, empty: the decompressing sink refuses each with a
    message naming job, artifact, sink and transform; the byte-exact sink stores all."""
    good = gzip.compress(b'{"ok": true}\n' * 1000)
    bad = {"bomb.gz": _gzip_zeros(64 << 20),            # ~64 KiB -> 64 MiB, ratio ~1000
           "truncated.gz": good[: len(good) // 2],
           "fake.gz": b"\x1f\x8b" + b"this is not deflate data" * 10}
    emu.add_project(project_id="proj_t", name="T")
    job = emu.add_job("proj_t", artifacts=[
        *(ArtifactSpec(path=p, data=d) for p, d in bad.items()),
        ArtifactSpec(path="empty.bin", data=b""), ArtifactSpec(path="ok.json.gz", data=good)])
    extra = f"""\
  - name: plain
    type: local
    root: {tmp_path / 'plain'}
    transforms:
      - type: decompress
        max_ratio: 100
"""
    text = basic_config(emu, tmp_path, extra_sink=extra)
    pipeline, ledger = make(emu, tmp_path, text=text)
    report = api.run(pipeline)
    problems = report.incomplete[job["id"]]
    assert len(problems) == 3
    for path in bad:
        msg = next(p for p in problems if p.startswith(path))
        assert job["id"] in msg and "sink plain" in msg and "transform decompress" in msg
    exact = job_dir(tmp_path, job) / "artifacts"
    for path, data in bad.items():
        assert (exact / path).read_bytes() == data
    plain = tmp_path / "plain" / "proj_t" / job["id"] / "data" / "artifacts"
    assert sorted(p.name for p in plain.iterdir()) == ["empty.bin", "ok.json"]
    assert (plain / "ok.json").read_bytes() == gzip.decompress(good)
    assert not partials(tmp_path / "plain") and not partials(tmp_path / "archive")
    failed = {(e["path"], e["sink"]) for e in ledger.events(job["id"]) if e["kind"] == "failed"}
    assert failed == {(p, "plain") for p in bad}

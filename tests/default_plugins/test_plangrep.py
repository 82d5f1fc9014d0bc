"""The Plangrep source against the emulator over real HTTP on 127.0.0.1 (no mocks)."""

from __future__ import annotations

import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor

import pluggy
import pytest
from pydantic import ValidationError

from archiver import hookspecs
from archiver.default_plugins import plangrep
from archiver.default_plugins.plangrep import PlangrepConfig, PlangrepSource
from archiver.default_plugins.plangrep_http import content_disposition_filename
from archiver.errors import AuthError, SourceError
from archiver.model import Artifact, Job
from archiver.testing.emulator import ArtifactSpec

STATUSES = ["provisioning", "awaiting_uploads", "uploading", "preflighting",
            "blocked_insufficient_credits", "processing", "completed",
            "completed_with_errors", "failed", "cancelled", "expired"]


def make_source(emu, **kw) -> PlangrepSource:
    settings = {"base_url": emu.base_url, "api_key": emu.api_key, "backoff_base": 0.01,
                    "backoff_max": 0.05, "retries": 3, "read_timeout": 5, "connect_timeout": 5}
    settings.update(kw)
    return PlangrepSource(PlangrepConfig(**settings))


@pytest.fixture
def source(emu):
    src = make_source(emu)
    yield src
    src.close()


def one_job(emu, *specs: ArtifactSpec, status="completed"):
    emu.add_project(project_id="proj_t", name="T")
    job = emu.add_job("proj_t", status=status,
                      artifacts=list(specs) or [ArtifactSpec(path="a/b.bin", size=300_000)])
    return Job(id=job["id"], project_id="proj_t", status=status, raw=job)


def fetch(source, job, path) -> bytes:
    artifact = next(a for a in source.find_artifacts(job, source.read_result(job))
                    if a.path == path)
    with source.open(artifact) as download:
        return b"".join(download)


# --------------------------------------------------------------------------- registration

def test_registered_as_plangrep_source():
    pm = pluggy.PluginManager("archiver")
    pm.add_hookspecs(hookspecs)
    pm.register(plangrep)
    seen = []
    pm.hook.archiver_register_sources(register=seen.append)
    assert seen == [PlangrepSource] and PlangrepSource.name == "plangrep"


def test_config_is_validated():
    cfg = PlangrepConfig(api_key="k" * 20)
    assert cfg.base_url == "https://plangrep.com/api/open/v1" and cfg.projects is None
    assert PlangrepConfig(api_key="k", base_url="http://h:1/v1/").base_url == "http://h:1/v1"
    for bad in [{}, {"api_key": ""}, {"api_key": "k", "base_url": "ftp://x/y"},
                {"api_key": "k", "base_url": "plangrep.com"}, {"api_key": "k", "retries": -1},
                {"api_key": "k", "read_timeout": 0}, {"api_key": "k", "unknown": 1}]:
        with pytest.raises(ValidationError):
            PlangrepConfig(**bad)


# --------------------------------------------------------------------------- listing

def test_lists_every_project_or_only_the_configured_ones(emu):
    emu.add_project(project_id="proj_a", name="A")
    emu.add_project(project_id="proj_b", name="B")
    a = {emu.add_job("proj_a")["id"] for _ in range(2)}
    b = {emu.add_job("proj_b")["id"] for _ in range(3)}
    src = make_source(emu)
    jobs = list(src.iter_jobs())
    assert {j.id for j in jobs} == a | b and len(jobs) == 5
    assert {j.project_id for j in jobs if j.id in b} == {"proj_b"}
    assert emu.count(route="projects") == 1

    before = emu.count(route="projects")
    only_b = make_source(emu, projects=["proj_b"])
    assert {j.id for j in only_b.iter_jobs()} == b
    assert emu.count(route="projects") == before  # configured: no listing


def test_jobs_in_every_status(emu, source):
    emu.add_project(project_id="proj_s", name="S")
    ids = {emu.add_job("proj_s", status=s)["id"]: s for s in STATUSES}
    listed = {j.id: j for j in source.iter_jobs()}
    assert {i: j.status for i, j in listed.items()} == ids
    for job_id, status in ids.items():
        if status == "expired":  # every /jobs/{id} route answers 410 once expired
            with pytest.raises(SourceError, match=f"job {job_id} failed: HTTP 410 job_expired"):
                source.get_job(job_id)
            continue
        job = source.get_job(job_id)
        assert (job.id, job.status, job.project_id) == (job_id, status, "proj_s")
        assert job.raw["id"] == job_id and job.terminal == (status in (
            "completed", "completed_with_errors", "failed", "cancelled", "expired"))


def test_result_is_byte_exact(emu, source):
    emu.load_demo()
    done = [j for j in source.iter_jobs() if j.has_result]
    assert done
    for job in done:
        body = source.read_result(job)
        assert body == emu.result_bytes(job.id) and json.loads(body)["job"]["id"] == job.id


# --------------------------------------------------------------------------- artifacts

def test_finds_every_artifact_of_the_demo_and_downloads_it_exactly(emu, source):
    emu.load_demo()
    jobs = [j for j in source.iter_jobs() if j.has_result]
    assert jobs
    total = 0
    for job in jobs:
        artifacts = source.find_artifacts(job, source.read_result(job))
        paths = [a.path for a in artifacts]
        assert len(paths) == len(set(paths))  # deduplicated
        assert set(paths) == set(emu.artifact_paths(job.id))
        for artifact in artifacts:
            assert artifact.job_id == job.id and isinstance(artifact.raw, dict)
            with source.open(artifact) as download:
                data = b"".join(download)
            assert data == emu.artifact_bytes(job.id, artifact.path)
            assert download.received == len(data)
            total += 1
    assert total >= 3


def test_awkward_paths_round_trip(emu, source):
    paths = ["plans/Grundriß Ebene 1.pdf", "a+b & c=d?.json", "100% done/#1.png",
             "dir%2Fnot-a-slash.bin", "日本語/図面.png", "x/y.json"]
    job = one_job(emu, *[ArtifactSpec(path=p, size=1000 + i) for i, p in enumerate(paths)])
    found = {a.path for a in source.find_artifacts(job, source.read_result(job))}
    assert found == set(paths)
    for p in paths:
        assert fetch(source, job, p) == emu.artifact_bytes(job.id, p)


def test_chunks_are_bounded_and_size_known(emu):
    job = one_job(emu, ArtifactSpec(path="big.bin", size=3 * 65536 + 17))
    src = make_source(emu, chunk_size=65536)
    artifact = Artifact(job_id=job.id, path="big.bin", url="", scope_id=job.id)
    with src.open(artifact) as download:
        chunks = list(download)
        with pytest.raises(RuntimeError):
            list(download)  # single pass
    assert download.size == 3 * 65536 + 17
    assert all(len(c) <= 65536 for c in chunks) and len(chunks) >= 4
    assert b"".join(chunks) == emu.artifact_bytes(job.id, "big.bin")


def test_concurrent_downloads_share_one_pool_sized_to_the_concurrency(emu, caplog):
    paths = [f"p/{i:02d}.bin" for i in range(16)]
    job = one_job(emu, *[ArtifactSpec(path=p, size=200_000 + i) for i, p in enumerate(paths)])
    src = make_source(emu, pool_size=2)
    assert src.pool_size == 2
    src = PlangrepSource(src.config, pool_size=8)  # the pipeline passes its concurrency
    adapter = src._session.get_adapter(emu.base_url)
    assert adapter._pool_maxsize == 8
    artifacts = src.find_artifacts(job, src.read_result(job))

    def get(artifact):
        with src.open(artifact) as download:
            return artifact.path, b"".join(download)

    caplog.set_level(logging.WARNING, logger="urllib3")
    with ThreadPoolExecutor(8) as pool:
        got = dict(pool.map(get, artifacts))
    assert got == {p: emu.artifact_bytes(job.id, p) for p in paths}
    assert not [r for r in caplog.records if "pool is full" in r.getMessage()]
    src.close()


def test_chunked_body(emu, source):
    job = one_job(emu)
    emu.faults.chunked = True
    artifact = source.find_artifacts(job, source.read_result(job))[0]
    with source.open(artifact) as download:
        assert download.size is None
        assert b"".join(download) == emu.artifact_bytes(job.id, artifact.path)


def test_redirect_to_storage_drops_the_key(emu, source):
    job = one_job(emu)
    emu.faults.redirect_artifacts = True
    assert fetch(source, job, "a/b.bin") == emu.artifact_bytes(job.id, "a/b.bin")
    assert emu.count(route="storage") >= 1
    assert emu.storage_saw_authorization is False


def test_content_disposition_filename_is_recorded(emu, source):
    job = one_job(emu, ArtifactSpec(path="a/report.pdf", size=10,
                                    content_disposition="attachment; filename=\"r.pdf\"; "
                                    "filename*=UTF-8''%E2%82%AC%20rates.pdf"))
    artifact = source.find_artifacts(job, source.read_result(job))[0]
    with source.open(artifact) as download:
        assert download.filename == "€ rates.pdf"
        b"".join(download)


@pytest.mark.parametrize("header, name", [
    ('attachment; filename="plan.pdf"', "plan.pdf"),
    ("attachment; filename*=UTF-8''%E2%82%AC.pdf; filename=\"e.pdf\"", "€.pdf"),
    ("attachment; filename*=iso-8859-1'en'%A3%20rates", "£ rates"),
    ('attachment; filename="..\\\\..\\\\etc\\\\passwd"', "..\\..\\etc\\passwd"),  # only recorded
    ("inline", None), (None, None), ("=;;;\x00garbage", None),
    ('attachment;filename="a b.json" ', "a b.json"), ('attachment; filename=""', None),
    ('attachment; filename="a\\"b.json"', 'a"b.json'), ("attachment; filename=plain.txt",
                                                      "plain.txt"),
    ('attachment; filename="x"; size=3', "x"), ('attachment; filename="ü.txt"', "ü.txt"),
])
def test_content_disposition_parsing(header, name):
    assert content_disposition_filename(header) == name


@pytest.mark.parametrize("header", [
    'attachment; filename="p000.json"', 'inline ; filename = "a b.c"', 'attachment; filename=""',
    'attachment; filename="~!#$%&()*+,-./:;<=>?@[]^_`{|}"', "form-data; filename=\"x\"",
])
def test_the_fast_path_agrees_with_the_email_parser(header, monkeypatch):
    from archiver.default_plugins import plangrep_http
    fast = content_disposition_filename(header)
    monkeypatch.setattr(plangrep_http, "_PLAIN_DISPOSITION", re.compile(r"(?!)"))
    assert fast == content_disposition_filename(header)


def test_compressed_artifacts_are_served_as_is(emu, source):
    job = one_job(emu, ArtifactSpec(path="data.json", size=50_000, compress="gzip"))
    artifact = source.find_artifacts(job, source.read_result(job))[0]
    with source.open(artifact) as download:
        data = b"".join(download)
    assert data == emu.artifact_bytes(job.id, "data.json")
    assert data[:2] == b"\x1f\x8b"  # gzip as served, not decoded
    assert download.size == len(data)


# --------------------------------------------------------------------------- hand-written tree

JOB = Job(id="job_01abc123", project_id="proj_x", status="completed")


def tree(base: str) -> dict:
    art = f"{base}/jobs/job_01abc123/artifact?path="
    return {
        "schemaVersion": "v1",
        "job": {"id": "job_01abc123", "status": "completed", "resultUrl": "https://s3/x?sig=1"},
        "documents": [{
            "documentId": "doc_1", "fileName": "A.pdf",
            "artifacts": [{"type": "thumbnail", "url": art + "thumbs%2Fp1.png"},
                          {"type": "thumbnail", "url": art + "thumbs%2Fp1.png"}],  # duplicate
            "sheets": [{"sheetNumber": "A-101", "artifacts": [
                {"type": "vector_crop", "url": art + "crops%2FA%20101+%C3%9F.svg&x=1"},
                {"type": "extracted_json",
                 "url": "https://evil.example.com/api/open/v1/jobs/job_01abc123/artifact"
                        "?path=sheets%2FA-101.json"},
            ]}],
            "specifications": [{"sections": [{"regions": [{"artifacts": [
                {"type": "thumbnail",
                 "url": "/api/open/v1/projects/proj_x/artifact?path=catalog%2Fspec.png"}]}]}]}],
        }],
        "artifacts": [{"path": "results/job_01abc123/normalized-output.json",
                       "url": "/api/open/v1/jobs/job_01abc123/artifact?path=results%2F"
                              "job_01abc123%2Fnormalized-output.json"},
                      {"path": "plain/own-path.bin", "url": "https://cdn.example/whatever"},
                      {"path": "catalog/no-query.png", "url": "/api/open/v1/projects/proj_x/"
                                                              "artifact"}],
        "evidence": [{"url": "https://plangrep.com/docs"},  # a url, not an artifact
                     {"url": art},  # empty path: ignored
                     {"url": f"{base}/jobs/job_01abc123/result?path=nope"},  # other route
                     {"path": "no-url-here"}],
        "warnings": [], "errors": [],
    }


def test_find_artifacts_in_a_hand_written_tree():
    found = plangrep.plangrep_artifacts.find_artifacts(
        JOB, json.dumps(tree("https://plangrep.com/api/open/v1")).encode())
    by_path = {a.path: a for a in found}
    assert [a.path for a in found] == [
        "thumbs/p1.png", "crops/A 101 ß.svg", "sheets/A-101.json", "catalog/spec.png",
        "results/job_01abc123/normalized-output.json", "plain/own-path.bin",
        "catalog/no-query.png"]
    for entity in ("catalog/spec.png", "catalog/no-query.png"):
        assert (by_path[entity].scope, by_path[entity].scope_id) == ("projects", "proj_x")
    assert by_path["thumbs/p1.png"].raw == {"type": "thumbnail",
                                            "url": tree("https://plangrep.com/api/open/v1")
                                            ["documents"][0]["artifacts"][0]["url"]}
    assert all(a.scope == "jobs" and a.scope_id == "job_01abc123"
               for a in found if not a.path.startswith("catalog/"))


def test_invalid_result_json_is_a_clear_error():
    with pytest.raises(SourceError, match="job_01abc123.*not valid JSON"):
        plangrep.plangrep_artifacts.find_artifacts(JOB, b"{not json")
    with pytest.raises(SourceError, match="job_01abc123.*not valid UTF-8"):
        plangrep.plangrep_artifacts.find_artifacts(
            JOB, {"url": "/jobs/job_01abc123/artifact?path=%FF%FE"})


def test_foreign_absolute_url_is_fetched_from_base_url(emu, source):
    job = one_job(emu, ArtifactSpec(path="sheets/A-101.json", size=2048))
    result = {"documents": [{"artifacts": [{
        "type": "extracted_json",
        "url": f"https://evil.invalid:9/api/open/v1/jobs/{job.id}/artifact"
               "?path=sheets%2FA-101.json"}]}]}
    [artifact] = source.find_artifacts(job, json.dumps(result).encode())
    url, params = source.artifact_request(artifact)
    assert url.startswith(emu.base_url + "/") and params == {"path": "sheets/A-101.json"}
    with source.open(artifact) as download:  # evil.invalid does not resolve: would fail
        assert b"".join(download) == emu.artifact_bytes(job.id, "sheets/A-101.json")


# --------------------------------------------------------------------------- errors

def test_wrong_key_is_one_request_and_one_clear_error(emu):
    emu.add_project(project_id="proj_a", name="A")
    src = make_source(emu, api_key="pg_wrong_key_0123456789")
    with pytest.raises(AuthError) as info:
        list(src.iter_jobs())
    assert info.value.status == 401 and not info.value.retryable
    assert "401" in str(info.value) and "api_key" in str(info.value)
    assert len(emu.requests) == 1


def test_wrong_key_on_an_artifact_is_not_retried(emu):
    job = one_job(emu)
    src = make_source(emu, api_key="pg_wrong_key_0123456789")
    before = emu.count(route="artifact")
    with pytest.raises(AuthError, match=f"job {job.id} artifact 'a/b.bin'"):
        src.open(Artifact(job_id=job.id, path="a/b.bin", url="", scope_id=job.id))
    assert emu.count(route="artifact") == before + 1


def test_missing_scope_is_403_auth_error(emu):
    job = one_job(emu)
    key = emu.add_key(scopes=["jobs:read"])
    src = make_source(emu, api_key=key)
    assert src.read_result(job)  # jobs:read is enough for the result
    before = emu.count(route="artifact")
    with pytest.raises(AuthError) as info:
        src.open(Artifact(job_id=job.id, path="a/b.bin", url="", scope_id=job.id))
    assert info.value.status == 403 and "artifacts:read" in str(info.value)
    assert emu.count(route="artifact") == before + 1


def test_path_not_in_result_names_job_and_path(emu, source):
    job = one_job(emu)
    before = emu.count(route="artifact")
    with pytest.raises(SourceError) as info:
        source.open(Artifact(job_id=job.id, path="../../etc/passwd", url="", scope_id=job.id))
    err = info.value
    assert (err.status, err.code, err.retryable) == (404, "artifact_not_in_result", False)
    assert job.id in str(err) and "'../../etc/passwd'" in str(err)
    assert emu.count(route="artifact") == before + 1


def test_expired_job_is_410(emu, source):
    job = one_job(emu)
    result = source.read_result(job)
    emu.expire(job.id)
    [artifact] = source.find_artifacts(job, result)
    with pytest.raises(SourceError) as info:
        source.open(artifact)
    assert (info.value.status, info.value.code, info.value.retryable) == (410, "job_expired", False)
    assert job.id in str(info.value) and "a/b.bin" in str(info.value)
    with pytest.raises(SourceError, match=f"result of job {job.id}.*410"):
        source.read_result(job)


def test_result_of_a_running_job_is_409(emu, source):
    job = one_job(emu, status="processing")
    with pytest.raises(SourceError) as info:
        source.read_result(job)
    assert info.value.status == 409 and not info.value.retryable and job.id in str(info.value)


def test_rate_limit_honours_retry_after_then_succeeds(emu, source):
    job = one_job(emu)
    result = source.read_result(job)
    emu.faults.rate_limit_n = 2
    emu.faults.rate_limit_retry_after = "0"
    before = emu.count(route="artifact")
    [artifact] = source.find_artifacts(job, result)
    with source.open(artifact) as download:
        assert b"".join(download) == emu.artifact_bytes(job.id, "a/b.bin")
    assert emu.count(route="artifact") == before + 3


def test_server_errors_are_retried_then_succeed(emu, source):
    job = one_job(emu)
    emu.faults.error_5xx_n = 2
    assert fetch(source, job, "a/b.bin") == emu.artifact_bytes(job.id, "a/b.bin")


def test_exhausted_retries_raise(emu):
    job = one_job(emu)
    src = make_source(emu, retries=2)
    result = src.read_result(job)
    emu.faults.error_5xx_n = 100
    before = emu.count(route="artifact")
    with pytest.raises(SourceError) as info:
        src.open(src.find_artifacts(job, result)[0])
    assert info.value.status >= 500 and not info.value.retryable
    assert "gave up after 3 attempts" in str(info.value) and job.id in str(info.value)
    assert emu.count(route="artifact") == before + 3


@pytest.mark.parametrize("knob", ["drop_mid_body_n", "wrong_length_n"])
def test_broken_body_is_a_retryable_error_never_a_short_read(emu, source, knob):
    job = one_job(emu, ArtifactSpec(path="a/b.bin", size=2_000_000))
    [artifact] = source.find_artifacts(job, source.read_result(job))
    setattr(emu.faults, knob, 2)
    got = []
    with pytest.raises(SourceError) as info, source.open(artifact) as download:
        got.extend(download)
    err = info.value
    assert err.retryable and job.id in str(err) and "'a/b.bin'" in str(err)
    assert sum(map(len, got)) < 2_000_000 or download.size != 2_000_000

    def whole() -> bytes:  # what the pipeline does: restart the artifact
        with source.open(artifact) as d:
            return b"".join(d)

    before = emu.count(route="artifact")
    assert source.retry_policy.call(whole) == emu.artifact_bytes(job.id, "a/b.bin")
    assert emu.count(route="artifact") == before + 2  # one more broken body, then whole


def test_idle_body_times_out(emu):
    job = one_job(emu, ArtifactSpec(path="a/b.bin", size=4 << 20))
    src = make_source(emu, read_timeout=0.2, chunk_size=65536)
    [artifact] = src.find_artifacts(job, src.read_result(job))
    emu.faults.slow_body = 1.0
    with pytest.raises(SourceError) as info, src.open(artifact) as download:
        for _ in download:
            pass
    assert info.value.retryable and job.id in str(info.value)


def test_connection_refused_is_retried_then_reported():
    src = PlangrepSource(PlangrepConfig(base_url="http://127.0.0.1:9/api/open/v1",
                                        api_key="pg_secret_abcdefgh", retries=1,
                                        backoff_base=0.01, connect_timeout=2))
    with pytest.raises(SourceError, match="listing projects failed: connection error.*gave up "
                                          "after 2 attempts"):
        src.list_projects()


# --------------------------------------------------------------------------- secrets

def test_api_key_appears_nowhere(emu, caplog):
    caplog.set_level(logging.DEBUG)  # root: archiver.*, urllib3.*, tenacity
    job = one_job(emu)
    src = make_source(emu, retries=1)
    texts = [repr(src), str(src), repr(src.config), str(src.config), repr(src._session.auth),
             str(src._session.auth), repr(src.retry_policy), str(src.config.model_dump())]
    result = src.read_result(job)
    [artifact] = src.find_artifacts(job, result)
    with src.open(artifact) as download:
        texts.append(repr(download))
        b"".join(download)

    def error(fn):
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - collecting every message
            chain = []
            while exc is not None:
                chain += [str(exc), repr(exc)]
                exc = exc.__cause__ or exc.__context__
            texts.extend(chain)
            return
        raise AssertionError("expected an error")

    emu.faults.error_5xx_n = 10
    error(lambda: src.open(artifact))
    emu.faults.error_5xx_n = 0
    emu.faults.drop_mid_body_n = 1
    error(lambda: b"".join(src.open(artifact)))
    emu.faults.drop_mid_body_n = 0
    error(lambda: src.open(Artifact(job_id=job.id, path="nope", url="", scope_id=job.id)))
    emu.faults.redirect_artifacts = True
    b"".join(src.open(artifact))
    emu.expire(job.id)
    error(lambda: src.read_result(job))
    assert caplog.records  # DEBUG logging really was captured
    logged = "\n".join([r.getMessage() for r in caplog.records] + [caplog.text])
    assert "connectionpool" in logged and "503 internal" in logged  # noisy paths taken
    assert emu.api_key not in "\n".join(texts) + logged
    assert "Authorization" not in logged

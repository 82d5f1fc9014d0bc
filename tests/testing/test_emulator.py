"""The Plangrep API emulator over real HTTP on 127.0.0.1 (requests / http.client / curl-free)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import json
import lzma
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests

from archiver.testing.emulator import ArtifactSpec, Emulator, decompress

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
AWKWARD = ["plans/Grundriß Ebene 1.pdf", "a+b & c=d?.json", "100% done/#1.png",
           "dir%2Fnot-a-slash.bin", "日本語/図面.png", "résumé/plan é.json", "sp ace/x y.json"]


@pytest.fixture
def emu():
    with Emulator() as e:
        yield e


def auth(emu, key=None):
    return {"Authorization": f"Bearer {key or emu.api_key}"}


def get(emu, route, key=None, **kw):
    return requests.get(f"{emu.base_url}/{route}", headers=auth(emu, key), timeout=10, **kw)


def one_job(emu, *specs, status="completed", **kw):
    return emu.add_job("proj_t", status=status, artifacts=list(specs) or None, **kw)["id"]


def error_code(resp):
    return resp.json()["error"]["code"]


def walk_artifacts(node):
    """docs/plangrep-api.md, decision 1: objects with an artifact-route url carrying ``path``, or with path+url."""
    if isinstance(node, dict):
        url = node.get("url")
        if isinstance(url, str):
            split = urlsplit(url)
            query = parse_qs(split.query)
            if re.search(r"/(jobs|projects)/[^/]+/artifact$", split.path) and "path" in query:
                yield query["path"][0], url, node
        for value in node.values():
            yield from walk_artifacts(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_artifacts(value)


# --------------------------------------------------------------------------- auth

def test_auth_401_and_403(emu):
    job_id = one_job(emu)
    path = emu.artifact_paths(job_id)[0]
    r = requests.get(f"{emu.base_url}/projects")
    assert r.status_code == 401 and error_code(r) == "unauthorized"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert get(emu, "projects", key="pk_wrong").status_code == 401
    r = requests.get(f"{emu.base_url}/projects", headers={"Authorization": f"Basic {emu.api_key}"})
    assert r.status_code == 401

    jobs_only = emu.add_key(scopes={"jobs:read"})
    artifacts_only = emu.add_key(scopes=["artifacts:read"])
    assert get(emu, f"jobs/{job_id}/result", key=jobs_only).status_code == 200
    r = get(emu, f"jobs/{job_id}/artifact", key=jobs_only, params={"path": path})
    assert r.status_code == 403 and error_code(r) == "forbidden"
    assert "artifacts:read" in r.json()["error"]["message"]
    for route in ["projects", "projects/proj_t/jobs", f"jobs/{job_id}", f"jobs/{job_id}/result"]:
        r = get(emu, route, key=artifacts_only)
        assert (r.status_code, error_code(r)) == (403, "forbidden"), route
    assert get(emu, f"jobs/{job_id}/artifact", key=artifacts_only,
               params={"path": path}).status_code == 200
    assert all("Authorization" not in r.headers and "authorization" not in r.headers
               for r in emu.requests)
    assert emu.api_key not in repr(list(emu.requests))


# --------------------------------------------------------------------------- routes

def test_projects_and_jobs_newest_first(emu):
    emu.add_project(project_id="proj_a", name="Alpha")
    emu.add_project(project_id="proj_b", name="Beta")
    now = datetime.now(timezone.utc)
    old = emu.add_job("proj_a", created_at=now - timedelta(hours=5))["id"]
    new = emu.add_job("proj_a", created_at=now - timedelta(hours=1))["id"]
    mid = emu.add_job("proj_a", status="processing", created_at=now - timedelta(hours=3))["id"]
    other = emu.add_job("proj_b")["id"]
    projects = get(emu, "projects").json()["projects"]
    assert [(p["id"], p["name"]) for p in projects] == [("proj_a", "Alpha"), ("proj_b", "Beta")]
    jobs = get(emu, "projects/proj_a/jobs").json()["jobs"]
    assert [j["id"] for j in jobs] == [new, mid, old]
    assert [j["id"] for j in get(emu, "projects/proj_b/jobs").json()["jobs"]] == [other]
    r = get(emu, "projects/proj_nope/jobs")
    assert (r.status_code, error_code(r)) == (404, "not_found")
    r = get(emu, "jobs/job_nope")
    assert (r.status_code, error_code(r)) == (404, "not_found")
    assert emu.count(route="projects") == 1 and emu.count(route="jobs") == 3
    assert emu.count(method="get", route="job") == 1 and emu.count() == 5


def test_job_has_every_documented_field(emu):
    done = one_job(emu, external_id="ext-1")
    running = one_job(emu, status="processing")
    failed = one_job(emu, status="failed")
    job = get(emu, f"jobs/{done}").json()["job"]
    assert set(job) == {"id", "externalId", "status", "projectId", "limits", "pageCount",
                        "successfulPageCount", "billing", "files", "resultUrl", "error",
                        "createdAt", "updatedAt", "completedAt", "expiresAt"}
    assert (job["id"], job["externalId"], job["status"], job["projectId"]) == (
        done, "ext-1", "completed", "proj_t")
    assert job["limits"] == {"maxDeclaredBytes": 10_000_000_000, "maxFiles": 100}
    assert job["billing"]["creditsDebited"] == job["successfulPageCount"] > 0
    assert job["files"] and set(job["files"][0]) == {"id", "fileName", "status"}
    for key in ("createdAt", "updatedAt", "completedAt", "expiresAt"):
        assert ISO.match(job[key]), key
    created = datetime.fromisoformat(job["createdAt"].replace("Z", "+00:00"))
    assert job["expiresAt"] == (created + timedelta(days=7)).strftime("%Y-%m-%dT%H:%M:%SZ")
    # resultUrl: pre-signed, on the storage host, works without the key
    stored = requests.get(job["resultUrl"], timeout=10)
    assert stored.status_code == 200 and stored.content == emu.result_bytes(done)
    assert urlsplit(job["resultUrl"]).port != emu.port

    running_job = get(emu, f"jobs/{running}").json()["job"]
    assert running_job["resultUrl"] is None and running_job["completedAt"] is None
    assert running_job["status"] == "processing"
    failed_job = get(emu, f"jobs/{failed}").json()["job"]
    assert failed_job["resultUrl"] is None and failed_job["error"]["code"]


def test_result_is_byte_identical_and_shaped_like_the_docs(emu):
    specs = [ArtifactSpec(f"p/{i}.bin", size=100 + i) for i in range(8)]
    job_id = one_job(emu, *specs)
    first = get(emu, f"jobs/{job_id}/result")
    second = get(emu, f"jobs/{job_id}/result")
    assert first.status_code == 200 and first.headers["Content-Type"] == "application/json"
    assert first.content == second.content == emu.result_bytes(job_id)
    emu.set_status(one_job(emu, status="processing"), "completed")  # other jobs change...
    assert get(emu, f"jobs/{job_id}/result").content == first.content  # ...this one does not
    result = first.json()
    assert set(result) >= {"schemaVersion", "job", "usage", "documents", "evidence",
                           "warnings", "errors", "generatedAt", "artifacts"}
    assert result["schemaVersion"] == "v1" and result["errors"] == []
    assert (result["job"]["id"], result["job"]["status"]) == (job_id, "completed")
    doc = result["documents"][0]
    assert {"documentId", "fileName", "classification", "contentType", "fileSize", "status",
            "pageCount", "successfulPageCount", "failedPageCount", "error", "artifacts",
            "sheets", "specifications", "docs"} <= set(doc)
    assert doc["artifacts"] and set(doc["artifacts"][0]) == {"type", "url"}
    sheet = doc["sheets"][0]
    assert {"sheetNumber", "sheetName", "pageNumber", "drawingType", "discipline"} <= set(sheet)
    assert sheet["artifacts"]
    entity = doc["specifications"][0]["sections"][0]["artifacts"]
    assert entity and "/projects/proj_t/artifact?path=" in entity[0]["url"]
    assert all(set(a) == {"path", "url"} for a in result["artifacts"])
    urls = [url for _, url, _ in walk_artifacts(result)]
    assert any(u.startswith("/api/open/v1/") for u in urls)
    assert any(u.startswith(emu.base_url + "/") for u in urls)


def test_completed_with_errors_reports_errors(emu):
    job_id = one_job(emu, status="completed_with_errors")
    result = get(emu, f"jobs/{job_id}/result").json()
    assert result["job"]["status"] == "completed_with_errors"
    assert result["errors"] and result["documents"][-1]["status"] == "failed"
    assert result["usage"]["failedPageCount"] > 0


def test_every_referenced_artifact_downloads_exactly(emu):
    emu.load_demo()
    checked = 0
    for job_id in ["job_demo_tower_ifc", "job_demo_tower_rev_b", "job_demo_school_plans"]:
        result = json.loads(get(emu, f"jobs/{job_id}/result").content)
        refs = list(walk_artifacts(result))
        assert {p for p, _, _ in refs} == set(emu.artifact_paths(job_id))
        assert len(refs) > len(emu.artifact_paths(job_id))  # duplicates exist: dedupe needed
        for path, url, _ in refs:
            r = requests.get(urljoin(emu.base_url, url), headers=auth(emu), timeout=10)
            assert r.status_code == 200, (path, url)
            assert r.content == emu.artifact_bytes(job_id, path)
            assert r.headers["Content-Length"] == str(len(r.content))
            checked += 1
    assert checked >= 13


def test_awkward_paths_round_trip_through_params(emu):
    job_id = one_job(emu, *[ArtifactSpec(p, size=500 + i) for i, p in enumerate(AWKWARD)])
    assert emu.artifact_paths(job_id) == AWKWARD
    for path in AWKWARD:
        url = emu.artifact_url(job_id, path).split("?")[0]
        r = requests.get(url, params={"path": path}, headers=auth(emu), timeout=10)
        assert r.status_code == 200, path
        assert r.content == emu.artifact_bytes(job_id, path)
        assert emu.requests[-1].query == {"path": path}
    assert len({emu.artifact_bytes(job_id, p) for p in AWKWARD}) == len(AWKWARD)
    r = get(emu, f"jobs/{job_id}/artifact", params={"path": "日本語/図面.png"})
    assert "filename*=UTF-8''%E5%9B%B3%E9%9D%A2.png" in r.headers["Content-Disposition"]
    # decoded once: the literal "%2F" in a path is not a slash
    r = get(emu, f"jobs/{job_id}/artifact", params={"path": "dir/not-a-slash.bin"})
    assert r.status_code == 404


def test_paths_outside_the_result(emu):
    job_id = one_job(emu, ArtifactSpec("a/b.bin"), ArtifactSpec("c.bin"), ArtifactSpec("d.bin"),
                     ArtifactSpec("entity.png"))
    for bad in ["../../etc/passwd", "a/b.bin ", "A/B.BIN", "a%2Fb.bin"]:
        r = get(emu, f"jobs/{job_id}/artifact", params={"path": bad})
        assert (r.status_code, error_code(r)) == (404, "artifact_not_in_result"), bad
    r = get(emu, f"jobs/{job_id}/artifact")
    assert (r.status_code, error_code(r)) == (400, "invalid_request")
    r = get(emu, "projects/proj_t/artifact", params={"path": "entity.png"})
    assert r.status_code == 200 and r.content == emu.artifact_bytes(job_id, "entity.png")
    r = get(emu, "projects/proj_t/artifact", params={"path": "a/b.bin"})  # not an entity one
    assert (r.status_code, error_code(r)) == (404, "artifact_not_in_result")
    r = get(emu, "projects/proj_nope/artifact", params={"path": "entity.png"})
    assert (r.status_code, error_code(r)) == (404, "not_found")
    assert emu.count(route="project_artifact") == 3


@pytest.mark.parametrize("status", ["processing", "awaiting_uploads", "failed", "cancelled"])
def test_no_result_is_409(emu, status):
    job_id = one_job(emu, status=status)
    assert emu.artifact_paths(job_id) == []
    for route, params in [("result", None), ("artifact", {"path": "thumbnails/page-1.png"})]:
        r = get(emu, f"jobs/{job_id}/{route}", params=params)
        assert (r.status_code, error_code(r)) == (409, "result_not_available"), route
    if status in ("failed", "cancelled"):
        with pytest.raises(ValueError, match="frozen"):
            emu.set_status(job_id, "completed")
    else:
        emu.set_status(job_id, "completed")
        assert get(emu, f"jobs/{job_id}/result").status_code == 200
        assert emu.artifact_paths(job_id)
        assert get(emu, f"jobs/{job_id}").json()["job"]["status"] == "completed"


def test_expired_is_410_everywhere(emu):
    job_id = one_job(emu, *[ArtifactSpec(f"x{i}.bin") for i in range(4)])
    entity_path = "x3.bin"
    assert get(emu, "projects/proj_t/artifact", params={"path": entity_path}).status_code == 200
    emu.expire(job_id)
    for route, params in [(f"jobs/{job_id}", None), (f"jobs/{job_id}/result", None),
                          (f"jobs/{job_id}/artifact", {"path": "x0.bin"}),
                          ("projects/proj_t/artifact", {"path": entity_path})]:
        r = get(emu, route, params=params)
        assert (r.status_code, error_code(r)) == (410, "job_expired"), route
    [listed] = get(emu, "projects/proj_t/jobs").json()["jobs"]
    assert listed["status"] == "expired" and listed["resultUrl"] is None


def test_expiry_follows_the_clock(emu):
    job_id = one_job(emu)
    assert get(emu, f"jobs/{job_id}").status_code == 200
    emu.clock = lambda: datetime.now(timezone.utc) + timedelta(days=7, seconds=5)
    r = get(emu, f"jobs/{job_id}/result")
    assert (r.status_code, error_code(r)) == (410, "job_expired")
    old = one_job(emu, created_at="2020-01-01T00:00:00Z", expires_at="2020-01-02T00:00:00Z")
    assert get(emu, f"jobs/{old}").status_code == 410


def test_head_artifact_shows_headers_without_body(emu):
    hostile = 'attachment; filename="../../etc/passwd"'
    job_id = one_job(emu, ArtifactSpec("dir/report.pdf", size=5000),
                     ArtifactSpec("evil.bin", size=10, content_disposition=hostile))
    r = requests.head(f"{emu.base_url}/jobs/{job_id}/artifact", params={"path": "dir/report.pdf"},
                      headers=auth(emu), timeout=10)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["Content-Length"] == "5000"
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Disposition"] == 'attachment; filename="report.pdf"'
    r = get(emu, f"jobs/{job_id}/artifact", params={"path": "evil.bin"})
    assert r.headers["Content-Disposition"] == hostile and len(r.content) == 10
    assert emu.count(method="HEAD", route="artifact") == 1


def test_range_is_ignored(emu):
    job_id = one_job(emu, ArtifactSpec("a.bin", size=10_000))
    r = requests.get(f"{emu.base_url}/jobs/{job_id}/artifact", params={"path": "a.bin"},
                     headers={**auth(emu), "Range": "bytes=100-"}, timeout=10)
    assert r.status_code == 200 and r.content == emu.artifact_bytes(job_id, "a.bin")


def test_unknown_route_and_method(emu):
    r = get(emu, "nothing/here")
    assert (r.status_code, error_code(r)) == (404, "not_found")
    r = requests.post(f"{emu.base_url}/projects", headers=auth(emu), json={"x": 1}, timeout=10)
    assert r.status_code == 405 and "GET" in r.headers["Allow"]


# --------------------------------------------------------------------------- faults

def test_rate_limit_carries_retry_after(emu):
    job_id = one_job(emu)
    emu.faults.rate_limit_n = 2
    emu.faults.rate_limit_retry_after = "0"
    path = emu.artifact_paths(job_id)[0]
    first = get(emu, f"jobs/{job_id}/artifact", params={"path": path})
    second = get(emu, f"jobs/{job_id}/artifact", key="pk_bad")  # before auth, too
    third = get(emu, f"jobs/{job_id}/artifact", params={"path": path})
    assert (first.status_code, error_code(first), first.headers["Retry-After"]) == (
        429, "rate_limited", "0")
    assert second.status_code == 429 and third.status_code == 200
    assert emu.count(route="artifact") == 3 and emu.faults.rate_limit_n == 0
    emu.faults.rate_limit_n, emu.faults.rate_limit_retry_after = 1, "1"
    assert get(emu, "projects").headers["Retry-After"] == "1"


def test_5xx_fault(emu):
    emu.faults.error_5xx_n = 2
    codes = [get(emu, "projects") for _ in range(3)]
    assert [r.status_code for r in codes] == [503, 503, 200]
    assert error_code(codes[0]) == "internal"


def _raw_get(emu, job_id, path):
    """(status, headers, bytes received, error) with http.client, no retries or decoding."""
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=10)
    url = emu.artifact_url(job_id, path)
    conn.request("GET", url[url.index("/api/"):], headers=auth(emu))
    resp = conn.getresponse()
    try:
        return resp.status, resp.headers, resp.read(), None
    except http.client.IncompleteRead as exc:
        return resp.status, resp.headers, exc.partial, exc
    finally:
        conn.close()


def test_drop_mid_body(emu):
    job_id = one_job(emu, ArtifactSpec("big.bin", size=2_000_000))
    emu.faults.drop_mid_body_n = 1
    status, headers, body, exc = _raw_get(emu, job_id, "big.bin")
    assert status == 200 and headers["Content-Length"] == "2000000"
    assert exc is not None and 0 < len(body) < 2_000_000
    assert body == emu.artifact_bytes(job_id, "big.bin")[:len(body)]
    emu.faults.drop_mid_body_n = 1
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(emu, f"jobs/{job_id}/artifact", params={"path": "big.bin"})
    assert get(emu, f"jobs/{job_id}/artifact", params={"path": "big.bin"}).content == \
        emu.artifact_bytes(job_id, "big.bin")


def test_wrong_length(emu):
    job_id = one_job(emu, ArtifactSpec("w.bin", size=300_000))
    emu.faults.wrong_length_n = 1
    status, headers, body, exc = _raw_get(emu, job_id, "w.bin")
    assert status == 200 and exc is not None and int(headers["Content-Length"]) > len(body) == 300_000
    assert body == emu.artifact_bytes(job_id, "w.bin")
    assert _raw_get(emu, job_id, "w.bin")[3] is None


def test_fault_paths_limit_body_faults(emu):
    job_id = one_job(emu, ArtifactSpec("ok.bin", size=100_000), ArtifactSpec("bad.bin",
                                                                              size=100_000))
    emu.faults.fault_paths = {"bad.bin"}
    emu.faults.drop_mid_body_n = 1
    assert _raw_get(emu, job_id, "ok.bin")[3] is None
    assert _raw_get(emu, job_id, "bad.bin")[3] is not None
    assert _raw_get(emu, job_id, "bad.bin")[3] is None  # consumed


def test_latency_and_slow_body(emu):
    job_id = one_job(emu, ArtifactSpec("s.bin", size=256 << 10))
    emu.faults.latency = 0.2
    t = time.monotonic()
    get(emu, "projects")
    assert time.monotonic() - t >= 0.2
    emu.faults.latency = 0.0
    emu.faults.slow_body = 0.05  # 64 KiB pieces: 3 pauses
    t = time.monotonic()
    r = get(emu, f"jobs/{job_id}/artifact", params={"path": "s.bin"})
    assert time.monotonic() - t >= 0.15 and r.content == emu.artifact_bytes(job_id, "s.bin")


def test_redirect_to_storage_without_authorization(emu):
    job_id = one_job(emu, ArtifactSpec("r/x y.bin", size=70_000))
    emu.faults.redirect_artifacts = True
    params = {"path": "r/x y.bin"}
    r = get(emu, f"jobs/{job_id}/artifact", params=params, allow_redirects=False)
    location = r.headers["Location"]
    assert r.status_code == 302 and urlsplit(location).port == urlsplit(emu.storage_url).port
    assert urlsplit(location).port != emu.port and "Signature=" in urlsplit(location).query
    followed = get(emu, f"jobs/{job_id}/artifact", params=params)  # requests drops the key
    assert followed.status_code == 200 and followed.history[0].status_code == 302
    assert followed.content == emu.artifact_bytes(job_id, "r/x y.bin")
    assert emu.storage_saw_authorization is False and emu.count(route="storage") == 1
    leaked = requests.get(location, headers=auth(emu), timeout=10)
    assert leaked.status_code == 400 and emu.storage_saw_authorization is True
    assert requests.get(location.replace("Signature=", "Signature=0"), timeout=10).status_code == 403
    assert all("Authorization" not in r.headers for r in emu.requests)


def test_chunked_transfer(emu):
    job_id = one_job(emu, ArtifactSpec("c.bin", size=3 * (1 << 20) + 5))
    emu.faults.chunked = True
    r = get(emu, f"jobs/{job_id}/artifact", params={"path": "c.bin"})
    assert r.headers["Transfer-Encoding"] == "chunked" and "Content-Length" not in r.headers
    assert r.content == emu.artifact_bytes(job_id, "c.bin")
    emu.faults.drop_mid_body_n = 1
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        get(emu, f"jobs/{job_id}/artifact", params={"path": "c.bin"})


# --------------------------------------------------------------------------- bytes

@pytest.mark.parametrize("kind, open_", [("gzip", gzip.decompress), ("bzip2", bz2.decompress),
                                         ("xz", lzma.decompress), ("zstd", None)])
def test_compressed_artifacts(emu, kind, open_):
    job_id = one_job(emu, ArtifactSpec("c.dat", size=300_000, compress=kind))
    served = get(emu, f"jobs/{job_id}/artifact", params={"path": "c.dat"})
    assert served.content == emu.artifact_bytes(job_id, "c.dat")
    assert "Content-Encoding" not in served.headers
    plain = emu.plain_bytes(job_id, "c.dat")
    assert len(plain) == 300_000 and served.content != plain
    if open_ is None:
        import zstandard

        open_ = zstandard.ZstdDecompressor().decompressobj().decompress
    assert open_(served.content) == plain == decompress(kind, served.content)
    assert b"".join(emu.iter_plain_bytes(job_id, "c.dat", chunk=4096)) == plain


def test_large_artifact_streams_deterministically(emu):
    size = 64 << 20
    job_id = one_job(emu, ArtifactSpec("huge.bin", size=size), job_id="job_fixed")
    r = get(emu, f"jobs/{job_id}/artifact", params={"path": "huge.bin"}, stream=True)
    assert r.headers["Content-Length"] == str(size)
    got, n = hashlib.sha256(), 0
    for chunk in r.iter_content(1 << 20):
        got.update(chunk)
        n += len(chunk)
    want = hashlib.sha256()
    pieces = list(emu.iter_artifact_bytes(job_id, "huge.bin", chunk=1 << 20))
    for piece in pieces:
        want.update(piece)
    assert n == size and got.hexdigest() == want.hexdigest()
    assert len(set(pieces)) == len(pieces) == 64  # blocks are not repeated
    with Emulator(seed=0) as same, Emulator(seed=1) as other:
        for e in (same, other):
            e.add_job("proj_t", job_id="job_fixed", artifacts=[ArtifactSpec("huge.bin", size=size)])
        assert next(same.iter_artifact_bytes("job_fixed", "huge.bin")) == pieces[0]
        assert next(other.iter_artifact_bytes("job_fixed", "huge.bin")) != pieces[0]
    one_job(emu, ArtifactSpec("x.bin", size=300 << 20), job_id="job_huge")
    with pytest.raises(ValueError, match="iter_artifact_bytes"):
        emu.artifact_bytes("job_huge", "x.bin")  # too big to materialise


def test_data_override_and_flat_shape(emu):
    job_id = one_job(emu, ArtifactSpec("given.txt", data=b"hello"),
                     ArtifactSpec("other.txt", data=b""), shape="flat")
    result = get(emu, f"jobs/{job_id}/result").json()
    assert result["documents"][0]["artifacts"] == [] and len(result["artifacts"]) == 2
    assert get(emu, f"jobs/{job_id}/artifact", params={"path": "given.txt"}).content == b"hello"
    r = get(emu, f"jobs/{job_id}/artifact", params={"path": "other.txt"})
    assert r.status_code == 200 and r.content == b"" and r.headers["Content-Length"] == "0"


def test_add_job_validation(emu):
    with pytest.raises(ValueError):
        emu.add_job("proj_t", status="done")
    with pytest.raises(ValueError):
        emu.add_job("proj_t", artifacts=[ArtifactSpec("a"), ArtifactSpec("a")])
    with pytest.raises(ValueError):
        ArtifactSpec("a", compress="rar")
    spec = [ArtifactSpec(f"{i}") for i in range(4)]
    emu.add_job("proj_t", artifacts=spec)
    with pytest.raises(ValueError, match="entity"):  # same project-route path twice
        emu.add_job("proj_t", artifacts=spec)
    with pytest.raises(KeyError):
        emu.artifact_bytes("job_missing", "a")


# --------------------------------------------------------------------------- server

def test_keep_alive_is_fast(emu):
    session = requests.Session()
    session.headers.update(auth(emu))
    session.get(f"{emu.base_url}/projects")
    t = time.monotonic()
    for _ in range(40):
        assert session.get(f"{emu.base_url}/projects").status_code == 200
    assert time.monotonic() - t < 1.0  # ~40 ms each if Nagle met delayed ACKs
    assert all(r.headers.get("Connection") != "close" for r in emu.requests)


def test_stop_is_clean_and_restart_keeps_the_port():
    emu = Emulator()
    emu.start()
    job_id = one_job(emu)
    port, base = emu.port, emu.base_url
    session = requests.Session()
    assert session.get(f"{base}/projects", headers=auth(emu)).status_code == 200  # kept alive
    emu.stop()
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name.endswith(f":{port}")]
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"{base}/projects", timeout=2)
    emu.stop()  # idempotent
    emu.start()
    try:
        assert emu.port == port
        assert get(emu, f"jobs/{job_id}/result").content == emu.result_bytes(job_id)
    finally:
        emu.stop()


def test_demo_dataset(emu):
    jobs = emu.load_demo()
    assert emu.load_demo() == jobs  # idempotent
    statuses = {j["status"] for j in jobs}
    assert {"completed", "completed_with_errors", "failed", "cancelled", "processing",
            "expired"} <= statuses
    assert len({j["projectId"] for j in jobs}) == 2
    done = [j["id"] for j in jobs if j["status"] in ("completed", "completed_with_errors")]
    paths = {p: j for j in done for p in emu.artifact_paths(j)}
    assert all(3 <= len(emu.artifact_paths(j)) <= 6 for j in done)
    assert "résumé/plan é.json" in paths and any(" " in p for p in paths)
    assert any(len(emu.artifact_bytes(paths[p], p)) >= 1 << 20 for p in paths)
    results = b"".join(emu.result_bytes(j) for j in done).decode()
    assert "%20" in results and "/projects/" in results and '"url": "/api/open/v1/' in results
    assert f'"url": "{emu.base_url}/' in results


def test_serve_prints_url_and_stops_on_ctrl_c():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c",
                             f"from archiver.testing.emulator import serve; serve(port={port})"],
                            stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().split()[-1]
        key = proc.stdout.readline().split()[-1]
        assert url == f"http://127.0.0.1:{port}/api/open/v1"
        r = requests.get(f"{url}/projects", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert len(r.json()["projects"]) == 2
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        proc.stdout.close()
    assert code == 0

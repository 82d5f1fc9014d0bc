"""`archiver verify`: every tampering in every sink is found and named, nothing repaired."""

from __future__ import annotations

import json
import math
import sqlite3

import pytest
from conftest import Archive, add_job

from archiver.testing.servers import free_port

PATHS = ("report.json", "sheets/a b.png", "dir/big.bin", "dir/c.json")


@pytest.fixture
def three(emu, tmp_path, clouds, s3_bucket, gcs_bucket):
    job = add_job(emu, paths=PATHS)
    arc = Archive(tmp_path, emu, clouds, s3_bucket=s3_bucket, gcs_bucket=gcs_bucket)
    result = arc.cli("run")
    assert result.exit_code == 0, result.output + result.stderr
    return arc, job


def findings(result) -> list[dict]:
    return json.loads(result.stdout)["findings"]


def test_untouched_archive_passes_and_records_a_fixity_event_per_object(three):
    arc, _job = three
    result = arc.cli("verify", "--json", key=False)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["checked"] == report["objects"] == 3 * (len(PATHS) + 2)
    assert report["findings"] == []
    with sqlite3.connect(arc.state / "ledger.sqlite") as con:
        events = con.execute("SELECT sink, path, message FROM events WHERE kind='fixity'"
                             ).fetchall()
        assert len(events) == report["checked"]
        assert {e[2] for e in events} == {"ok"}
        assert con.execute("SELECT COUNT(*) FROM fixity").fetchone()[0] == report["checked"]


def test_one_alteration_deletion_and_addition_per_sink_are_each_named(three, s3, gcs):
    arc, job = three
    rel = f"proj_c/{job['id']}/data/artifacts/"
    local = arc.job_dir(job) / "data" / "artifacts"
    # local: alter, delete, add
    (local / "report.json").write_bytes(b"altered")
    (local / "dir" / "c.json").unlink()
    (local / "dir" / "planted.txt").write_bytes(b"not archived by us")
    # S3: same, straight through the API (a bucket without Object Lock allows it)
    b = arc.s3_bucket
    s3.put_object(Bucket=b, Key=f"archive/{rel}sheets/a b.png", Body=b"altered")
    s3.delete_object(Bucket=b, Key=f"archive/{rel}report.json")
    s3.put_object(Bucket=b, Key=f"archive/{rel}planted.bin", Body=b"x")
    # GCS
    bucket = gcs.bucket(arc.gcs_bucket)
    bucket.blob(f"mirror/{rel}dir/big.bin").upload_from_string(b"altered")
    bucket.blob(f"mirror/{rel}sheets/a b.png").delete()
    bucket.blob(f"mirror/{rel}new/planted.json").upload_from_string(b"{}")

    result = arc.cli("verify", "--json", key=False)
    assert result.exit_code == 1
    got = {(f["kind"], f["sink"], f["where"]) for f in findings(result)}
    want = {
        ("altered", "primary", str(local / "report.json")),
        ("missing", "primary", str(local / "dir" / "c.json")),
        ("added", "primary", str(local / "dir" / "planted.txt")),
        ("altered", "vault", f"s3://{b}/archive/{rel}sheets/a b.png"),
        ("missing", "vault", f"s3://{b}/archive/{rel}report.json"),
        ("added", "vault", f"s3://{b}/archive/{rel}planted.bin"),
        ("altered", "replica", f"gs://{arc.gcs_bucket}/mirror/{rel}dir/big.bin"),
        ("missing", "replica", f"gs://{arc.gcs_bucket}/mirror/{rel}sheets/a b.png"),
        ("added", "replica", f"gs://{arc.gcs_bucket}/mirror/{rel}new/planted.json"),
    }
    assert got == want
    # nothing repaired: the tampered state is still there
    assert (local / "report.json").read_bytes() == b"altered"
    assert (local / "dir" / "planted.txt").exists() and not (local / "dir" / "c.json").exists()
    assert s3.get_object(Bucket=b, Key=f"archive/{rel}sheets/a b.png")["Body"].read() == \
        b"altered"
    # the text report names each one too
    text = arc.cli("verify", key=False)
    assert text.exit_code == 1
    for kind, sink, where in want:
        assert f"{kind.upper()} sink {sink} job {job['id']}: {where}" in text.stderr


def test_edited_manifest_line_is_named(three):
    arc, job = three
    manifest = arc.job_dir(job) / "manifest-sha256.txt"
    lines = manifest.read_text().splitlines()
    digest, path = lines[0].split("  ", 1)
    lines[0] = f"{'0' * 64}  {path}"
    manifest.write_text("\n".join(lines) + "\n")
    result = arc.cli("verify", "--sink", "primary", "--json", key=False)
    assert result.exit_code == 1
    got = {(f["kind"], f["where"]) for f in findings(result)}
    assert ("manifest", f"manifest-sha256.txt line for {path}") in got
    assert ("tag", str(manifest)) in got  # and the tag manifest no longer vouches for it
    detail = next(f["detail"] for f in findings(result) if f["kind"] == "manifest")
    assert f"says {'0' * 64}" in detail and digest in detail


def test_deleted_tag_file_is_named(three, s3):
    arc, job = three
    key = f"archive/proj_c/{job['id']}/bag-info.txt"
    s3.delete_object(Bucket=arc.s3_bucket, Key=key)
    result = arc.cli("verify", "--sink", "vault", "--json", key=False)
    assert result.exit_code == 1
    assert {(f["kind"], f["where"]) for f in findings(result)} == {
        ("tag", f"s3://{arc.s3_bucket}/{key}")}


def test_unreachable_sink_is_reported_and_the_others_still_checked(three):
    arc, job = three
    dead = arc.write("dead.yaml", endpoint=f"http://127.0.0.1:{free_port()}")
    result = arc.cli("verify", "--json", config=dead, key=False)
    assert result.exit_code == 3, result.stdout + result.stderr
    report = json.loads(result.stdout)
    by_kind = {}
    for f in report["findings"]:
        by_kind.setdefault(f["kind"], []).append(f)
        assert f["sink"] == "vault"  # local and GCS were fine
    assert len(by_kind["unreachable"]) == 1 and "could not be read" in \
        by_kind["unreachable"][0]["detail"]
    assert by_kind["unreachable"][0]["where"].startswith(f"s3://{arc.s3_bucket}/archive/")
    unchecked = {f["where"] for f in by_kind["unchecked"]}  # every vault object named
    assert unchecked == {f"proj_c/{job['id']}/data/{p}" for p in
                         ["job.json", "result.json", *(f"artifacts/{x}" for x in PATHS)]}
    assert report["checked"] == 2 * (len(PATHS) + 2)


def test_sampled_runs_rotate_until_everything_was_checked(three):
    arc, _job = three
    total = len(PATHS) + 2
    per_run = math.ceil(total * 34 / 100)
    seen: list[set] = []
    for _ in range(3):
        result = arc.cli("verify", "--sink", "primary", "--sample", "34", "--json", key=False)
        assert result.exit_code == 0
        assert json.loads(result.stdout)["checked"] == per_run
        with sqlite3.connect(arc.state / "ledger.sqlite") as con:
            seen.append(set(con.execute("SELECT path FROM fixity").fetchall()))
    assert [len(s) for s in seen] == [per_run, 2 * per_run, total]  # no object twice
    budget = arc.cli("verify", "--sink", "primary", "--bytes", "1", "--json", key=False)
    assert json.loads(budget.stdout)["checked"] == 1  # at least one, least recent first


def test_since_and_bad_options(three):
    arc, _ = three
    later = arc.cli("verify", "--since", "2999-01-01", "--json", key=False)
    assert later.exit_code == 0 and json.loads(later.stdout)["checked"] == 0
    both = arc.cli("verify", "--sample", "5", "--bytes", "1GiB", key=False)
    assert both.exit_code == 2 and "not both" in both.stderr
    unknown = arc.cli("verify", "--sink", "nope", key=False)
    assert unknown.exit_code == 2 and "nope" in unknown.stderr

"""`archiver run --dry-run`: every job, object, key and retention listed; nothing written."""

from __future__ import annotations

import hashlib
import json

from conftest import Archive, add_job

LOCK = "object_lock: {mode: COMPLIANCE, retain_days: 3650, legal_hold: true}\n"
GCS_RETENTION = "retention: {mode: Locked, retain_days: 365}\nevent_based_hold: true\n"


def snapshot(path):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*"))
            if p.is_file()}


def test_dry_run_lists_keys_and_retention_and_writes_nothing(emu, tmp_path, clouds, s3, gcs,
                                                            gcs_bucket):
    bucket = f"lock-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    job = add_job(emu)
    waiting = emu.add_job("proj_c", status="processing")
    arc = Archive(tmp_path, emu, clouds, s3_bucket=bucket, gcs_bucket=gcs_bucket,
                  s3_options=LOCK, gcs_options=GCS_RETENTION)
    result = arc.cli("run", "--dry-run", "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True
    jobs = {j["job_id"]: j for j in plan["jobs"]}
    assert jobs[waiting["id"]]["action"] == "wait"
    entry = jobs[job["id"]]
    assert entry["action"] == "archive"
    objects = {(o["kind"], o["path"]): o["sinks"] for o in entry["objects"]}
    assert ("artifact", "sheets/a b.png") in objects and ("job", "job.json") in objects
    assert ("bag", "tagmanifest-sha256.txt") in objects
    assert ("bag", "archiver-names.json") in objects  # every tag file the writer writes
    art = objects[("artifact", "sheets/a b.png")]
    key = f"proj_c/{job['id']}/data/artifacts/sheets/a b.png"
    assert art["primary"]["key"] == key and art["primary"]["retention"] is None
    assert art["vault"]["location"] == f"s3://{bucket}/archive/{key}"
    assert art["vault"]["retention"]["mode"] == "COMPLIANCE"
    assert art["vault"]["retention"]["legal_hold"] is True
    assert art["vault"]["retention"]["retain_until"]
    assert art["replica"]["location"] == f"gs://{gcs_bucket}/mirror/{key}"
    assert art["replica"]["retention"]["mode"] == "Locked"
    assert art["replica"]["retention"]["event_based_hold"] is True

    # nothing written anywhere: no sink object, no ledger (not even the state directory)
    assert not arc.root.exists() and not arc.state.exists()
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    assert list(gcs.list_blobs(gcs_bucket)) == []
    assert emu.count(route="artifact") + emu.count(route="project_artifact") == 0

    text = arc.cli("run", "--dry-run")
    assert text.exit_code == 0
    assert f"job {job['id']} (project proj_c): archive" in text.stdout
    assert f"vault: s3://{bucket}/archive/{key}; retention: mode=COMPLIANCE" in text.stdout
    assert "dry run: nothing was written" in text.stdout


def test_dry_run_after_a_run_reads_the_ledger_without_writing_it(emu, tmp_path):
    job = add_job(emu)
    arc = Archive(tmp_path, emu, sinks=("primary",))
    assert arc.cli("run").exit_code == 0
    before_state, before_root = snapshot(arc.state), snapshot(arc.root)
    result = arc.cli("run", "--dry-run", "--json")
    assert result.exit_code == 0
    [entry] = json.loads(result.stdout)["jobs"]
    assert entry["action"] == "skip" and entry["reason"] == "already archived"
    again = arc.cli("archive", job["id"], "--dry-run", "--json")
    assert again.exit_code == 0, again.stdout + again.stderr
    [entry] = json.loads(again.stdout)["jobs"]
    assert entry["action"] == "archive"
    assert all(o["sinks"]["primary"]["stored"] for o in entry["objects"] if o["kind"] != "bag")
    assert snapshot(arc.state) == before_state and snapshot(arc.root) == before_root

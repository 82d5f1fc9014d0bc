"""`archiver replicate`: archived jobs copied sink to sink from the archive itself."""

from __future__ import annotations

import json

import bagit
from conftest import Archive, add_job, download_prefix_gcs, files_below


def listing_s3(s3, bucket, prefix):
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents") or []:
            out[obj["Key"][len(prefix):]] = s3.get_object(Bucket=bucket,
                                                          Key=obj["Key"])["Body"].read()
    return out


def listing_gcs(gcs, bucket, prefix):
    return {b.name[len(prefix):]: b.download_as_bytes() for b in gcs.list_blobs(bucket,
                                                                                 prefix=prefix)}


def test_fills_an_empty_gcs_sink_from_s3_with_the_api_gone(emu, tmp_path, clouds, s3, gcs,
                                                          s3_bucket, gcs_bucket):
    jobs = [add_job(emu), add_job(emu, paths=("only.json",))]
    arc = Archive(tmp_path, emu, clouds, s3_bucket=s3_bucket, gcs_bucket=gcs_bucket,
                  sinks=("vault",))
    first = arc.cli("run")
    assert first.exit_code == 0, first.output
    emu.stop()  # the results have "expired": only the archive is left
    both = arc.write("both.yaml", sinks=("vault", "replica"))
    assert listing_gcs(gcs, gcs_bucket, "mirror/") == {}

    result = arc.cli("replicate", "--from", "vault", "--to", "replica", "--json", config=both,
                     key=False)
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert sorted(report["jobs"]) == sorted(j["id"] for j in jobs)
    source = listing_s3(s3, s3_bucket, "archive/")
    assert listing_gcs(gcs, gcs_bucket, "mirror/") == source  # payload and bag, byte for byte
    for job in jobs:
        bag = download_prefix_gcs(gcs, gcs_bucket, f"mirror/proj_c/{job['id']}/",
                                  tmp_path / job["id"])
        bagit.Bag(str(bag)).validate()

    verify = arc.cli("verify", "--sink", "replica", "--json", config=both, key=False)
    assert verify.exit_code == 0, verify.stdout + verify.stderr
    assert json.loads(verify.stdout)["checked"] == len(source) - 2 * 6  # payload, not tags

    generations = {b.name: b.generation for b in gcs.list_blobs(gcs_bucket)}
    again = arc.cli("replicate", "--from", "vault", "--to", "replica", "--json", config=both,
                    key=False)
    assert again.exit_code == 0
    assert json.loads(again.stdout)["copied"] == 0  # idempotent: nothing rewritten
    assert {b.name: b.generation for b in gcs.list_blobs(gcs_bucket)} == generations
    audit = arc.cli("audit", "verify", config=both, key=False)
    assert audit.exit_code == 0, audit.output


def test_different_bytes_at_a_target_key_are_a_conflict_and_left_untouched(
        emu, tmp_path, clouds, gcs, gcs_bucket):
    job = add_job(emu)
    arc = Archive(tmp_path, emu, clouds, gcs_bucket=gcs_bucket, sinks=("primary",))
    assert arc.cli("run").exit_code == 0
    key = f"mirror/proj_c/{job['id']}/data/artifacts/report.json"
    blob = gcs.bucket(gcs_bucket).blob(key)
    blob.upload_from_string(b"someone else's bytes")
    blob.reload()
    both = arc.write("both.yaml", sinks=("primary", "replica"))
    result = arc.cli("replicate", "--from", "primary", "--to", "replica", config=both,
                     key=False)
    assert result.exit_code == 1
    assert "conflict" in result.stderr and f"gs://{gcs_bucket}/{key}" in result.stderr
    again = gcs.bucket(gcs_bucket).get_blob(key)
    assert again.download_as_bytes() == b"someone else's bytes"
    assert again.generation == blob.generation
    stored = listing_gcs(gcs, gcs_bucket, f"mirror/proj_c/{job['id']}/")
    assert not [k for k in stored if not k.startswith("data/")]  # no tag files


def test_source_object_altered_is_refused_on_the_way(emu, tmp_path):
    job = add_job(emu)
    arc = Archive(tmp_path, emu, sinks=("primary",))
    assert arc.cli("run").exit_code == 0
    (arc.job_dir(job) / "data" / "artifacts" / "report.json").write_bytes(b"tampered")
    both = arc.write("both.yaml", sinks=("primary", "copy"))
    result = arc.cli("replicate", "--from", "primary", "--to", "copy", config=both, key=False)
    assert result.exit_code == 1
    assert "report.json" in result.stderr and "expected" in result.stderr
    target = tmp_path / "copy" / "proj_c" / job["id"]
    assert not (target / "data" / "artifacts" / "report.json").exists()
    assert not [p for p in target.iterdir() if p.is_file()]  # no tag files
    assert not [p for p in target.rglob("*.partial")]


def test_source_without_a_bag_gets_one_in_the_target(emu, tmp_path):
    job = add_job(emu)
    arc = Archive(tmp_path, emu, sinks=("primary",), top="bagit: {enabled: false}\n")
    assert arc.cli("run").exit_code == 0
    assert not (arc.job_dir(job) / "bagit.txt").exists()
    arc.top = ""
    both = arc.write("both.yaml", sinks=("primary", "copy"))
    result = arc.cli("replicate", "--from", "primary", "--to", "copy", config=both, key=False)
    assert result.exit_code == 0, result.output
    target = tmp_path / "copy" / "proj_c" / job["id"]
    bagit.Bag(str(target)).validate()
    assert files_below(target / "data") == files_below(arc.job_dir(job) / "data")


def test_unknown_job_and_sink_are_named(emu, tmp_path):
    add_job(emu)
    arc = Archive(tmp_path, emu, sinks=("primary",))
    assert arc.cli("run").exit_code == 0
    both = arc.write("both.yaml", sinks=("primary", "copy"))
    result = arc.cli("replicate", "--from", "primary", "--to", "copy", "--job", "job_nope",
                     config=both, key=False)
    assert result.exit_code == 1 and "job_nope" in result.stderr
    bad = arc.cli("replicate", "--from", "primary", "--to", "nowhere", config=both, key=False)
    assert bad.exit_code == 2 and "nowhere" in bad.stderr


def test_target_applies_its_own_retention(emu, tmp_path, clouds, s3):
    bucket = f"lock-{tmp_path.name[-12:].lower().replace('_', '-')}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    job = add_job(emu, paths=("one.json",))
    arc = Archive(tmp_path, emu, clouds, s3_bucket=bucket, sinks=("primary",),
                  s3_options="object_lock: {mode: GOVERNANCE, retain_days: 2}\n")
    assert arc.cli("run").exit_code == 0
    both = arc.write("both.yaml", sinks=("primary", "vault"))
    result = arc.cli("replicate", "--from", "primary", "--to", "vault", config=both, key=False)
    assert result.exit_code == 0, result.output
    for name in ("data/artifacts/one.json", "tagmanifest-sha256.txt"):
        head = s3.head_object(Bucket=bucket, Key=f"archive/proj_c/{job['id']}/{name}")
        assert head["ObjectLockMode"] == "GOVERNANCE" and head["ObjectLockRetainUntilDate"]

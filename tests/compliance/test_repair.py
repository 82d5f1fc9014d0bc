"""`archiver repair`: what verify finds altered or missing is restored, from another sink
or from the API, checked against the ledger before it is committed; the damaged bytes are
kept (local quarantine, an older S3 version / GCS generation), never overwritten."""

from __future__ import annotations

import json
import sqlite3
import uuid

import pytest
from conftest import Archive, add_job

PATHS = ("report.json", "sheets/a b.png", "dir/big.bin")


def rel(job) -> str:
    return f"proj_c/{job['id']}/data/artifacts/"


def flip(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


@pytest.fixture
def versioned_s3(s3):
    name = f"v-{uuid.uuid4().hex[:16]}"
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


@pytest.fixture
def versioned_gcs(gcs):
    bucket = gcs.bucket(f"v-{uuid.uuid4().hex[:16]}")
    bucket.versioning_enabled = True
    return gcs.create_bucket(bucket).name


@pytest.fixture
def three(emu, tmp_path, clouds, versioned_s3, versioned_gcs):
    """An archive in a local sink, a versioned S3 bucket and a versioned GCS bucket."""
    job = add_job(emu, paths=PATHS)
    arc = Archive(tmp_path, emu, clouds, s3_bucket=versioned_s3, gcs_bucket=versioned_gcs)
    result = arc.cli("run")
    assert result.exit_code == 0, result.output + result.stderr
    return arc, job


class Damage:
    """Flip a byte of one object and delete another, in a sink, remembering the good bytes."""

    def __init__(self, arc, job, s3, gcs):
        self.arc, self.job, self.s3, self.gcs = arc, job, s3, gcs
        self.good: dict[tuple[str, str], bytes] = {}

    def local(self, path: str, how: str) -> None:
        file = self.arc.job_dir(self.job) / "data" / "artifacts" / path
        self.good[("primary", path)] = file.read_bytes()
        if how == "flip":
            file.write_bytes(flip(file.read_bytes()))
        else:
            file.unlink()

    def vault(self, path: str, how: str) -> None:
        key = f"archive/{rel(self.job)}{path}"
        data = self.s3.get_object(Bucket=self.arc.s3_bucket, Key=key)["Body"].read()
        self.good[("vault", path)] = data
        if how == "flip":
            self.s3.put_object(Bucket=self.arc.s3_bucket, Key=key, Body=flip(data))
        else:
            self.s3.delete_object(Bucket=self.arc.s3_bucket, Key=key)

    def replica(self, path: str, how: str) -> None:
        blob = self.gcs.bucket(self.arc.gcs_bucket).blob(f"mirror/{rel(self.job)}{path}")
        data = blob.download_as_bytes()
        self.good[("replica", path)] = data
        if how == "flip":
            blob.upload_from_string(flip(data))
        else:
            blob.delete()

    def stored(self, sink: str, path: str) -> bytes | None:
        if sink == "primary":
            file = self.arc.job_dir(self.job) / "data" / "artifacts" / path
            return file.read_bytes() if file.exists() else None
        if sink == "vault":
            try:
                return self.s3.get_object(Bucket=self.arc.s3_bucket,
                                          Key=f"archive/{rel(self.job)}{path}")["Body"].read()
            except self.s3.exceptions.NoSuchKey:
                return None
        blob = self.gcs.bucket(self.arc.gcs_bucket).get_blob(f"mirror/{rel(self.job)}{path}")
        return blob.download_as_bytes() if blob is not None else None


def repair(arc, *args, key=False):
    result = arc.cli("repair", "--json", *args, key=key)
    assert "Traceback" not in result.output + result.stderr
    return result, json.loads(result.stdout) if result.stdout.startswith("{") else None


def repaired_events(arc) -> list[tuple]:
    with sqlite3.connect(arc.state / "ledger.sqlite") as con:
        return con.execute("SELECT sink, path, message FROM events WHERE kind='repaired'"
                           ).fetchall()


def assert_clean(arc) -> None:
    verify = arc.cli("verify", "--json", key=False)
    assert verify.exit_code == 0, verify.stdout + verify.stderr
    audit = arc.cli("audit", "verify", key=False)
    assert audit.exit_code == 0, audit.output + audit.stderr


def test_flipped_byte_and_deleted_file_in_every_sink_restored_from_another_sink(
        three, s3, gcs, emu):
    arc, job = three
    damage = Damage(arc, job, s3, gcs)
    damage.local("report.json", "flip")
    damage.local("dir/big.bin", "delete")
    damage.vault("sheets/a b.png", "flip")
    damage.vault("report.json", "delete")
    damage.replica("dir/big.bin", "flip")
    damage.replica("sheets/a b.png", "delete")
    bad_version = s3.head_object(Bucket=arc.s3_bucket,
                                 Key=f"archive/{rel(job)}sheets/a b.png")["VersionId"]
    emu.expire(job["id"])  # the API cannot serve it: only the other sinks can

    result, report = repair(arc)
    assert result.exit_code == 0, result.stdout + result.stderr
    got = {(r["sink"], r["path"], r["kind"], r["outcome"]) for r in report["repairs"]}
    assert got == {("primary", "report.json", "altered", "repaired"),
                   ("primary", "dir/big.bin", "missing", "repaired"),
                   ("vault", "sheets/a b.png", "altered", "repaired"),
                   ("vault", "report.json", "missing", "repaired"),
                   ("replica", "dir/big.bin", "altered", "repaired"),
                   ("replica", "sheets/a b.png", "missing", "repaired")}
    assert all(r["source"].startswith("sink ") and r["source"] != f"sink {r['sink']}"
               for r in report["repairs"])
    for (sink, path), good in damage.good.items():
        assert damage.stored(sink, path) == good, (sink, path)

    # the damaged bytes are kept: local quarantine, older S3 version, older GCS generation
    kept = {(r["sink"], r["path"]): r["kept"] for r in report["repairs"]}
    quarantined = arc.root / "%%quarantine"
    files = [p for p in quarantined.rglob("report.json")]
    assert len(files) == 1 and files[0].read_bytes() == flip(damage.good[("primary",
                                                                          "report.json")])
    assert kept[("primary", "report.json")] == str(files[0])
    assert kept[("primary", "dir/big.bin")] is None  # nothing was there to keep
    assert bad_version in kept[("vault", "sheets/a b.png")]
    old = s3.get_object(Bucket=arc.s3_bucket, Key=f"archive/{rel(job)}sheets/a b.png",
                        VersionId=bad_version)["Body"].read()
    assert old == flip(damage.good[("vault", "sheets/a b.png")])
    generation = int(kept[("replica", "dir/big.bin")].rsplit("#", 1)[1])
    old_blob = gcs.bucket(arc.gcs_bucket).blob(f"mirror/{rel(job)}dir/big.bin",
                                               generation=generation)
    assert old_blob.download_as_bytes() == flip(damage.good[("replica", "dir/big.bin")])

    events = repaired_events(arc)
    assert {(s, p) for s, p, _ in events} == {(r[0], r[1]) for r in got}
    assert_clean(arc)
    again, report = repair(arc)
    assert again.exit_code == 0 and report["repairs"] == []  # nothing left to repair


def test_damage_in_every_sink_is_restored_from_the_api(three, s3, gcs):
    arc, job = three
    damage = Damage(arc, job, s3, gcs)
    for sink in ("local", "vault", "replica"):
        getattr(damage, sink)("report.json", "flip")
        getattr(damage, sink)("dir/big.bin", "delete")

    result, report = repair(arc, key=True)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert len(report["repairs"]) == 6
    assert {r["source"] for r in report["repairs"]} == {"the Plangrep API"}
    assert {r["outcome"] for r in report["repairs"]} == {"repaired"}
    for (sink, path), good in damage.good.items():
        assert damage.stored(sink, path) == good, (sink, path)
    assert_clean(arc)


def test_dry_run_names_the_source_and_changes_nothing(three, s3, gcs):
    arc, job = three
    damage = Damage(arc, job, s3, gcs)
    damage.local("report.json", "flip")
    damage.vault("dir/big.bin", "delete")
    with sqlite3.connect(arc.state / "ledger.sqlite") as con:
        before = con.execute("SELECT COUNT(*) FROM audit").fetchone()[0]

    result, report = repair(arc, "--dry-run")
    assert result.exit_code == 1
    assert {(r["sink"], r["path"], r["outcome"], r["source"]) for r in report["repairs"]} == {
        ("primary", "report.json", "would repair", "sink vault"),
        ("vault", "dir/big.bin", "would repair", "sink primary")}
    assert damage.stored("primary", "report.json") == flip(damage.good[("primary",
                                                                        "report.json")])
    assert damage.stored("vault", "dir/big.bin") is None
    assert not (arc.root / "%%quarantine").exists()
    with sqlite3.connect(arc.state / "ledger.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == before
    text = arc.cli("repair", "--dry-run", key=False)
    assert "WOULD REPAIR sink primary" in text.output and "nothing was written" in text.output


def test_unversioned_bucket_refuses_to_replace_and_says_what_to_do(
        emu, tmp_path, clouds, s3, gcs, s3_bucket, gcs_bucket):
    job = add_job(emu, paths=PATHS)
    arc = Archive(tmp_path, emu, clouds, s3_bucket=s3_bucket, gcs_bucket=gcs_bucket)
    assert arc.cli("run").exit_code == 0
    damage = Damage(arc, job, s3, gcs)
    damage.vault("report.json", "flip")
    damage.vault("dir/big.bin", "delete")  # a missing object needs no versioning
    damage.replica("sheets/a b.png", "flip")

    result, report = repair(arc)
    assert result.exit_code == 1
    by_path = {(r["sink"], r["path"]): r for r in report["repairs"]}
    assert by_path[("vault", "dir/big.bin")]["outcome"] == "repaired"
    for sink, path, hint in (("vault", "report.json", "put-bucket-versioning"),
                             ("replica", "sheets/a b.png", "--versioning")):
        item = by_path[(sink, path)]
        assert item["outcome"] == "not repaired"
        assert "would destroy it" in item["detail"] and hint in item["detail"]
        assert damage.stored(sink, path) == flip(damage.good[(sink, path)])  # untouched
    assert damage.stored("vault", "dir/big.bin") == damage.good[("vault", "dir/big.bin")]
    text = arc.cli("repair", key=False)
    assert text.exit_code == 1 and "NOT REPAIRED sink vault" in text.stderr


def test_no_good_source_is_reported_per_object_and_nothing_is_written(emu, tmp_path):
    job = add_job(emu, paths=PATHS)
    arc = Archive(tmp_path, emu, sinks=("primary",))
    assert arc.cli("run").exit_code == 0
    damage = Damage(arc, job, None, None)
    damage.local("report.json", "flip")
    damage.local("dir/big.bin", "delete")
    emu.expire(job["id"])

    result, report = repair(arc, key=True)
    assert result.exit_code == 1
    assert {(r["path"], r["outcome"]) for r in report["repairs"]} == {
        ("report.json", "not repaired"), ("dir/big.bin", "not repaired")}
    for item in report["repairs"]:
        assert "no good source" in item["detail"] and "expired" in item["detail"]
    assert damage.stored("primary", "report.json") == flip(damage.good[("primary",
                                                                        "report.json")])
    assert damage.stored("primary", "dir/big.bin") is None
    leftovers = [p.name for p in arc.root.rglob("*") if p.name.endswith(".partial")]
    assert leftovers == [] and not (arc.root / "%%quarantine").exists()
    assert repaired_events(arc) == []
    no_key, report = repair(arc, key=False)  # the API refuses: still one line per object
    assert no_key.exit_code == 1 and len(report["repairs"]) == 2
    text = arc.cli("repair", key=True)
    assert text.exit_code == 1
    assert f"NOT REPAIRED sink primary job {job['id']}" in text.stderr


def test_a_source_whose_bytes_differ_from_the_ledger_is_never_committed(emu, tmp_path):
    job = add_job(emu, paths=PATHS)
    arc = Archive(tmp_path, emu, sinks=("primary", "copy"))
    assert arc.cli("run").exit_code == 0
    damage = Damage(arc, job, None, None)
    damage.local("report.json", "delete")
    other = tmp_path / "copy" / rel(job) / "report.json"
    other.write_bytes(b"damaged too")  # bypasses verify of sink copy: --sink primary
    emu.expire(job["id"])

    result, report = repair(arc, "--sink", "primary")
    assert result.exit_code == 1
    detail = report["repairs"][0]["detail"]
    assert "sink copy" in detail and "expected" in detail
    assert damage.stored("primary", "report.json") is None


def test_nothing_to_repair_and_bad_input(emu, tmp_path):
    add_job(emu, paths=PATHS)
    arc = Archive(tmp_path, emu, sinks=("primary",))
    assert arc.cli("run").exit_code == 0
    clean = arc.cli("repair", key=False)
    assert clean.exit_code == 0 and "nothing to repair" in clean.output
    sink = arc.cli("repair", "--sink", "nowhere", key=False)
    assert sink.exit_code == 2 and "--sink nowhere" in sink.stderr
    assert len(sink.stderr.strip().splitlines()) == 1
    job = arc.cli("repair", "--job", "job_nope", key=False)
    assert job.exit_code == 5 and "job_nope" in job.stderr
    assert len(job.stderr.strip().splitlines()) == 1 and "Traceback" not in job.output


def test_damaged_tag_files_are_restored_from_a_sink_holding_the_recorded_bytes(three, s3):
    arc, job = three
    bag_info = arc.job_dir(job) / "bag-info.txt"
    good = bag_info.read_bytes()
    bag_info.write_bytes(good + b"Edited: yes\n")
    top = f"archive/proj_c/{job['id']}/tagmanifest-sha256.txt"
    s3.delete_object(Bucket=arc.s3_bucket, Key=top)

    result, report = repair(arc, key=False)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert {(r["sink"], r["path"], r["kind"], r["outcome"]) for r in report["repairs"]} == {
        ("primary", "bag:bag-info.txt", "altered", "repaired"),
        ("vault", "bag:tagmanifest-sha256.txt", "missing", "repaired")}
    assert bag_info.read_bytes() == good
    assert_clean(arc)

"""The hash-chained audit log: every tampering with the ledger's records or an exported
audit.jsonl is found and the first broken record named; nothing is repaired."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import pytest
from conftest import Archive, add_job

from archiver.compliance.audit import GENESIS, canonical, line_hash, verify_chain

LOCK = "object_lock: {mode: GOVERNANCE, retain_days: 1}\n"


@pytest.fixture
def archived(emu, tmp_path):
    job = add_job(emu)
    arc = Archive(tmp_path, emu, sinks=("primary",))
    result = arc.cli("run")
    assert result.exit_code == 0, result.output + result.stderr
    return arc, job


def db(arc) -> sqlite3.Connection:
    return sqlite3.connect(arc.state / "ledger.sqlite", isolation_level=None)


def rows(arc) -> list[tuple[int, str, str]]:
    with db(arc) as con:
        return con.execute("SELECT seq, line, hash FROM audit ORDER BY seq").fetchall()


def verify(arc, *extra):
    result = arc.cli("audit", "verify", *extra, key=False)
    return result.exit_code, result.output, result.stderr


def test_chain_rule_holds_and_verify_passes(archived):
    arc, _job = archived
    records = rows(arc)
    prev = GENESIS
    for seq, line, stored in records:  # the rule in docs/compliance.md, checked by hand
        record = json.loads(line)
        assert record["seq"] == seq and record["prev"] == prev
        assert canonical(record) == line
        prev = hashlib.sha256(line.encode()).hexdigest()
        assert stored == prev
    assert not any(arc.emu.api_key in line for _s, line, _h in records)  # no secret
    code, out, err = verify(arc)
    assert code == 0, err
    assert "ledger" in out and f"{len(records)} record(s)" in out
    assert "audit.jsonl: " in out  # the bag's export, read back from the sink


def test_edited_record_is_named(archived):
    arc, _ = archived
    seq, line, _ = rows(arc)[3]
    forged = line.replace('"copy"', '"kopy"') if '"copy"' in line else line.replace(
        '"seq":', '"seq": ', 1)
    with db(arc) as con:
        con.execute("UPDATE audit SET line=? WHERE seq=?", (forged, seq))
    code, _out, err = verify(arc, "--no-exports")
    assert code == 1
    assert f"record seq {seq}" in err and "edited" in err


def test_edited_record_with_its_hash_rewritten_is_named(archived):
    arc, _ = archived
    seq, line, _ = rows(arc)[2]
    record = json.loads(line)
    record["message"] = "nothing to see here"
    forged = canonical(record)
    with db(arc) as con:  # a careful forger also updates the stored hash
        con.execute("UPDATE audit SET line=?, hash=? WHERE seq=?", (forged, line_hash(forged),
                                                                     seq))
    code, _out, err = verify(arc, "--no-exports")
    assert code == 1
    assert f"record seq {seq} " in err and "edited" in err and f"seq {seq + 1}" in err


def test_removed_record_is_named(archived):
    arc, _ = archived
    seq = rows(arc)[4][0]
    with db(arc) as con:
        con.execute("DELETE FROM audit WHERE seq=?", (seq,))
    code, _out, err = verify(arc, "--no-exports")
    assert code == 1
    assert f"record seq {seq} " in err and "removed" in err


def test_removed_first_record_is_found(archived):
    arc, _ = archived
    with db(arc) as con:
        con.execute("DELETE FROM audit WHERE seq=1")
    code, _out, err = verify(arc, "--no-exports")
    assert code == 1 and "record seq 1 " in err and "removed" in err


def test_reordered_records_are_named(archived):
    arc, _ = archived
    (a, la, ha), (b, lb, hb) = rows(arc)[5:7]
    with db(arc) as con:
        con.execute("UPDATE audit SET line=?, hash=? WHERE seq=?", (lb, hb, a))
        con.execute("UPDATE audit SET line=?, hash=? WHERE seq=?", (la, ha, b))
    code, _out, err = verify(arc, "--no-exports")
    assert code == 1
    assert f"record seq {a} " in err and "reordered" in err


def export_path(arc, job):
    return arc.job_dir(job) / "audit.jsonl"


def test_edited_export_in_the_bag_is_named_and_left_as_is(archived):
    arc, job = archived
    path = export_path(arc, job)
    lines = path.read_text().splitlines()
    record = json.loads(lines[2])
    record["data"]["size"] = 1
    lines[2] = canonical(record)
    tampered = "\n".join(lines) + "\n"
    path.write_text(tampered)
    code, out, err = verify(arc)
    assert code == 1
    assert "ok ledger" in out  # the ledger itself is intact
    assert str(path) in err and f"record seq {record['seq']} " in err and "edited" in err
    # archiver verify sees the same file through the bag's tag manifest
    fixity = arc.cli("verify", key=False)
    assert fixity.exit_code == 1 and "audit.jsonl" in fixity.stderr
    assert "TAG" in fixity.stderr
    assert path.read_text() == tampered  # nothing repaired


@pytest.mark.parametrize("how", ["removed", "reordered", "truncated"])
def test_exported_file_checked_on_its_own(archived, tmp_path, how):
    arc, job = archived
    lines = export_path(arc, job).read_text().splitlines()
    seqs = [json.loads(ln)["seq"] for ln in lines]
    if how == "removed":
        del lines[3]
        named = seqs[3]
    elif how == "reordered":
        lines[3], lines[4] = lines[4], lines[3]
        named = seqs[3]
    else:
        lines = lines[:-1]
        named = None
    copy = tmp_path / "copy.jsonl"
    copy.write_text("\n".join(lines) + "\n")
    code, _out, err = verify(arc, "--file", str(copy), "--no-exports")
    if how == "truncated":
        # a shortened copy is still a valid prefix of the job's chain ...
        assert code == 0
        # ... but the bag's own audit.jsonl is pinned by the ledger and the tag manifest
        export_path(arc, job).write_text("\n".join(lines) + "\n")
        code, _out, err = verify(arc)
        assert code == 1 and f"record seq {seqs[-1]} " in err and "removed" in err
    else:
        assert code == 1
        assert str(copy) in err and f"record seq {named} " in err and how in err


def test_chain_spans_processes_and_events(archived):
    arc, _job = archived
    before = len(rows(arc))
    assert arc.cli("verify", key=False).exit_code == 0  # fixity events join the chain
    after = rows(arc)
    assert len(after) > before
    brk, n = verify_chain((line, h, seq) for seq, line, h in after)
    assert brk is None and n == len(after)
    kinds = {json.loads(line)["kind"] for _s, line, _h in after[before:]}
    assert {"fixity", "verify"} <= kinds


def test_retention_and_provider_checksum_are_recorded(emu, tmp_path, clouds, s3):
    bucket = f"lock-{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    job = add_job(emu, paths=("one.json",))
    arc = Archive(tmp_path, emu, clouds, s3_bucket=bucket, s3_options=LOCK, sinks=("vault",))
    result = arc.cli("run")
    assert result.exit_code == 0, result.output + result.stderr
    records = [json.loads(line) for _s, line, _h in rows(arc)]
    copy = next(r for r in records if r["kind"] == "copy" and r["path"] == "one.json")
    assert copy["data"]["provider_checksum"]["algorithm"] == "SHA256"
    assert copy["data"]["key"] == f"proj_c/{job['id']}/data/artifacts/one.json"
    assert copy["data"]["stored"]["sha256"]
    retention = next(r for r in records if r["kind"] == "retention" and r["path"] == "one.json")
    assert retention["data"]["object_lock_mode"] == "GOVERNANCE"
    assert retention["data"]["object_lock_retain_until"]
    received = next(r for r in records if r["kind"] == "received" and r["path"] == "one.json")
    assert received["data"]["digests"]["sha256"] == copy["data"]["stored"]["sha256"]

from archiver.ledger import ARCHIVED, INCOMPLETE, WAITING, open_ledger
from archiver.model import Job, StoredObject


def job(i, state_status="completed", expires="2026-12-01T00:00:00Z"):
    return Job(f"job_{i}", "proj", state_status, {"id": f"job_{i}", "expiresAt": expires})


def test_copies_pending_and_summary(tmp_path):
    led = open_ledger(tmp_path)
    led.record_job(job(1), INCOMPLETE, "a.bin: dropped")
    led.record_copy("job_1", "a.bin", StoredObject("s", "k/a.bin", 5, {"sha256": "ab"}),
                    received={"sha256": "ab"}, chain=[], verified=True)
    pid = led.add_pending("s", "tmp-1", "job_1", "b.bin")
    led.update_pending(pid, "tmp-1 upload-9")
    assert led.list_pending()[0][2] == "tmp-1 upload-9"
    led.remove_pending(pid)
    assert led.list_pending() == []
    row = led.copies("job_1")[("a.bin", "s")]
    assert row.key == "k/a.bin" and row.stored == {"sha256": "ab"} and row.verified
    s = led.summary()
    assert s["jobs"] == {INCOMPLETE: 1} and s["sinks"] == {"s": {"objects": 1, "bytes": 5}}
    assert s["problems"] == [{"job_id": "job_1", "state": INCOMPLETE, "error": "a.bin: dropped"}]
    led.close()


def test_expiry_warnings_listed_until_archived(tmp_path):
    led = open_ledger(tmp_path)
    led.record_job(job(1, "processing"), WAITING)
    led.record_job(job(2), INCOMPLETE)
    led.event("expiry_warning", "expires in 3h", job_id="job_1")
    led.event("expiry_warning", "expires in 2h", job_id="job_2")
    assert {w["job_id"] for w in led.summary()["expiry_warnings"]} == {"job_1", "job_2"}
    led.record_job(job(2), ARCHIVED)
    assert [w["job_id"] for w in led.summary()["expiry_warnings"]] == ["job_1"]
    assert led.count_events("expiry_warning") == 2
    assert led.jobs_with_event("expiry_warning") == {"job_1", "job_2"}
    assert [r[0] for r in led.open_job_rows([WAITING])] == ["job_1"]
    led.close()


def test_survives_reopen(tmp_path):
    led = open_ledger(tmp_path)
    led.record_job(job(3), ARCHIVED)
    led.close()
    again = open_ledger(tmp_path)
    assert again.job_states() == {"job_3": ARCHIVED}
    again.close()

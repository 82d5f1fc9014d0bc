"""Does this job need work? The one place that decides, for run, watch, workers and dry-run.

The decision depends only on the job as the API shows it now and on the state the ledger
holds for it; recording the outcome is the caller's business (a dry run records nothing).

Expiry tells the truth: a job that expired while the ledger had it open (waiting,
incomplete, queued) is lost; one seen for the first time already expired is lost too
when its record shows it had completed (:func:`had_completed`): its result existed and
was never archived ("expired before archiver first saw it"). An expired job with no
sign of completion (never finished, failed, cancelled) had nothing to store.
"""

from __future__ import annotations

from dataclasses import dataclass

from .ledger import INCOMPLETE, QUEUED, SETTLED, WAITING
from .model import RESULT_STATUSES, Job

#: Where a raw job may carry its status history (a list of statuses, or of objects with
#: a ``status``), most specific first.
HISTORY_FIELDS = ("statusHistory", "status_history", "history", "statuses")

# Actions.
SKIP, WAIT, ARCHIVE, LOSE, NOTHING_TO_STORE = "skip", "wait", "archive", "lost", "nothing_to_store"


def _history(raw: dict) -> list[str] | None:
    for name in HISTORY_FIELDS:
        entries = raw.get(name)
        if isinstance(entries, list):
            return [e.get("status") if isinstance(e, dict) else e for e in entries]
    return None


def had_completed(job: Job) -> bool:
    """Does the job's record show it completed (a result existed) before it expired?

    A status history in the raw job decides when there is one (a completed or
    completed-with-errors entry). Otherwise ``completedAt`` set, with no sign that the
    job ended without a result: no ``error`` (failed jobs carry one) and, when ``files``
    are listed, at least one completed file (a cancelled job's files are not)."""
    raw = job.raw if isinstance(job.raw, dict) else {}
    history = _history(raw)
    if history is not None:
        return any(s in RESULT_STATUSES for s in history)
    if not raw.get("completedAt") or raw.get("error"):
        return False
    files = raw.get("files")
    if isinstance(files, list) and files:
        return any(isinstance(f, dict) and f.get("status") == "completed" for f in files)
    return True


@dataclass(frozen=True)
class Decision:
    action: str   # one of the actions above
    reason: str

    @property
    def needs_work(self) -> bool:
        return self.action == ARCHIVE


def decide(job: Job, previous: str | None, *, explicit: bool = False) -> Decision:
    """What to do with ``job`` given the ledger's ``previous`` state (None: never seen).

    ``explicit``: the user named this job (``archiver archive``), so a settled job is
    looked at again (stored copies are still skipped object by object)."""
    if previous in SETTLED and not explicit:
        return Decision(SKIP, f"already {previous}")
    if not job.terminal:
        return Decision(WAIT, f"not finished ({job.status})")
    if job.has_result:
        return Decision(ARCHIVE, job.status)
    if job.status == "expired" and previous in (INCOMPLETE, WAITING, QUEUED):
        return Decision(LOSE, "expired before it was archived")
    if job.status == "expired" and previous is None and had_completed(job):
        when = job.raw.get("completedAt") if isinstance(job.raw, dict) else None
        return Decision(LOSE, "expired before archiver first saw it (it had completed"
                              + (f" at {when})" if when else ")"))
    return Decision(NOTHING_TO_STORE, job.status)

"""Does this job need work? The one place that decides, for run, watch, workers and dry-run.

The decision depends only on the job as the API shows it now and on the state the ledger
holds for it; recording the outcome is the caller's business (a dry run records nothing).
"""

from __future__ import annotations

from dataclasses import dataclass

from .ledger import INCOMPLETE, QUEUED, SETTLED, WAITING
from .model import Job

# Actions.
SKIP, WAIT, ARCHIVE, LOSE, NOTHING_TO_STORE = "skip", "wait", "archive", "lost", "nothing_to_store"


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
    return Decision(NOTHING_TO_STORE, job.status)

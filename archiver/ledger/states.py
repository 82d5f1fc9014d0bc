"""Job states as the ledger records them.

A job is *settled* once nothing more will be done to it without being asked
(``archiver archive JOB``): archived, nothing to store, or lost (expired before it was
archived). *Open* jobs are waiting (not finished at the source), queued (to be archived by
a pull worker) or incomplete (a previous attempt failed; it will be retried). Only queued
and incomplete jobs can be claimed by workers (:meth:`RunLedger.claim_next`).
"""

from __future__ import annotations

ARCHIVED = "archived"
INCOMPLETE = "incomplete"
NOTHING = "nothing_to_store"
LOST = "lost"
WAITING = "waiting"
QUEUED = "queued"

#: States nothing changes any more unless a job is archived again explicitly.
SETTLED = frozenset({ARCHIVED, NOTHING, LOST})
#: States a worker may claim (``claim_next``) when the job is not parked or leased.
CLAIMABLE = (QUEUED, INCOMPLETE)
#: Every state, in the order reports list them.
STATES = (ARCHIVED, INCOMPLETE, NOTHING, LOST, WAITING, QUEUED)

__all__ = ["ARCHIVED", "CLAIMABLE", "INCOMPLETE", "LOST", "NOTHING", "QUEUED", "SETTLED",
           "STATES", "WAITING"]

"""The ledger: what was seen, what was stored where, what failed, why, and who works on
what. A seam: the core talks to the :class:`Ledger` protocols only, and
:func:`open_ledger` picks the backend the configuration names (SQLite by default; see
docs/ledger.md). Secrets never reach the ledger: it stores job objects, keys, digests and
messages built by archiver itself.

Modules, one concept each: :mod:`.states` (job states), :mod:`.rows` (typed rows, worker
ids, claim results), :mod:`.protocols`, :mod:`.claims` (lease rules),
:mod:`.chainrules` / :mod:`.auditchain` (the audit log's format and appends), :mod:`.coordination`
(named leases and token buckets),
:mod:`.groupcommit`, :mod:`.migrations`, :mod:`.sqlite` (the SQLite backend),
:mod:`.readonly` (dry runs), :mod:`.factory` (``open_ledger``).
"""

from ..errors import LeaseLost, LedgerError, LedgerMissing, LedgerSchemaError
from .factory import SCHEMES, open_ledger, register_scheme
from .protocols import ComplianceLedger, Ledger, ReportLedger, RunLedger
from .readonly import ReadOnlyLedger
from .rows import (
    AuditRow,
    BagFileRow,
    Claim,
    ClaimRefused,
    CopyRow,
    EventRow,
    JobRow,
    LeaseRow,
    OpenJobRow,
    PendingRow,
    WorkerId,
    WorkerRow,
    new_worker_id,
    pid_alive,
)
from .sqlite import SQLiteLedger
from .states import (
    ARCHIVED,
    CLAIMABLE,
    INCOMPLETE,
    LOST,
    NOTHING,
    QUEUED,
    SETTLED,
    STATES,
    WAITING,
)

__all__ = [
    "ARCHIVED",
    "CLAIMABLE",
    "INCOMPLETE",
    "LOST",
    "NOTHING",
    "QUEUED",
    "SCHEMES",
    "SETTLED",
    "STATES",
    "WAITING",
    "AuditRow",
    "BagFileRow",
    "Claim",
    "ClaimRefused",
    "ComplianceLedger",
    "CopyRow",
    "EventRow",
    "JobRow",
    "LeaseLost",
    "LeaseRow",
    "Ledger",
    "LedgerError",
    "LedgerMissing",
    "LedgerSchemaError",
    "OpenJobRow",
    "PendingRow",
    "ReadOnlyLedger",
    "ReportLedger",
    "RunLedger",
    "SQLiteLedger",
    "WorkerId",
    "WorkerRow",
    "new_worker_id",
    "open_ledger",
    "pid_alive",
    "register_scheme",
]

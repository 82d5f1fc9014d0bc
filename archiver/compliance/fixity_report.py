"""What a fixity audit reports: each :class:`Finding` (its kinds are listed in
:mod:`archiver.compliance.fixity`) and the :class:`FixityReport` of one audit, with the
exit code it stands for (1: tampering found, 3: other problems, 0: none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TAMPERING = ("altered", "missing", "added", "manifest", "tag", "unreadable", "retention")


@dataclass
class Finding:
    """One problem found, naming what is at fault."""

    kind: str
    sink: str
    job_id: str
    where: str
    detail: str
    key: str | None = None    # the sink key of the object or tag file, where there is one
    path: str | None = None   # the object's ledger path (payload findings)

    def __str__(self) -> str:
        return (f"{self.kind.upper()} sink {self.sink} job {self.job_id}: {self.where}: "
                f"{self.detail}")


@dataclass
class FixityReport:
    objects: int = 0              # copies eligible (after --sink / --since)
    checked: int = 0
    bytes: int = 0
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if any(f.kind in TAMPERING for f in self.findings):
            return 1
        return 3 if self.findings else 0

    def as_dict(self) -> dict[str, Any]:
        return {"objects": self.objects, "checked": self.checked, "bytes": self.bytes,
                "findings": [vars(f) for f in self.findings], "notes": self.notes,
                "exit_code": self.exit_code}

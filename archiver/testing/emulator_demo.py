"""The emulator's demo dataset: two projects, seven jobs, every status family, awkward paths.

Deterministic except for timestamps, which are relative to the emulator clock so that
nothing but the deliberately old job is past its ``expiresAt``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from .emulator_data import ArtifactSpec

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import Emulator

TOWER, SCHOOL = "proj_demo_harbour_tower", "proj_demo_riverside_school"

# (project, job id, status, age, artifacts)
DEMO_JOBS = [
    (TOWER, "job_demo_tower_ifc", "completed", timedelta(hours=6), [
        ArtifactSpec("results/job_demo_tower_ifc/normalized-output.json", 6000),
        ArtifactSpec("thumbnails/Sheet A-101 (rev 2).png", 3000, type="thumbnail"),
        ArtifactSpec("résumé/plan é.json", 2500),
        ArtifactSpec("regions/level 1/region 07.svg", 1800, type="vector_crop"),  # project entity
        ArtifactSpec("exports/full-set.bin", (1 << 20) + 4321),
        ArtifactSpec("exports/cost report 100% + tax.csv.gz", 20_000, compress="gzip"),
    ]),
    (TOWER, "job_demo_tower_rev_b", "completed_with_errors", timedelta(hours=3), [
        ArtifactSpec("results/job_demo_tower_rev_b/normalized-output.json", 4000),
        ArtifactSpec("thumbnails/S-201.png", 2200, type="thumbnail"),
        ArtifactSpec("crops/S-201 detail 4.svg", 1500, type="vector_crop",
                     content_disposition='attachment; filename="../../etc/passwd"'),
    ]),
    (TOWER, "job_demo_tower_failed", "failed", timedelta(hours=2), []),
    (SCHOOL, "job_demo_school_plans", "completed", timedelta(hours=5), [
        ArtifactSpec("results/job_demo_school_plans/normalized-output.json", 5000),
        ArtifactSpec("thumbnails/A-001.png", 2048, type="thumbnail"),
        ArtifactSpec("plans/Grundriß EG.json.zst", 30_000, compress="zstd"),
        ArtifactSpec("specs/sections/03 30 00.json", 1200),  # project entity
    ]),
    (SCHOOL, "job_demo_school_cancelled", "cancelled", timedelta(hours=4), []),
    (SCHOOL, "job_demo_school_old", "expired", timedelta(days=8), [
        ArtifactSpec("results/job_demo_school_old/normalized-output.json", 3000),
        ArtifactSpec("thumbnails/old.png", 1000, type="thumbnail"),
        ArtifactSpec("old/notes.txt", 500),
    ]),
    (SCHOOL, "job_demo_school_live", "processing", timedelta(minutes=10), [
        ArtifactSpec("results/job_demo_school_live/normalized-output.json", 1000),
    ]),
]


def load_demo(emu: Emulator) -> list[dict]:
    """Add the demo projects and jobs (idempotent); returns the demo Jobs as served."""
    emu.add_project(project_id=TOWER, name="Harbour Tower")
    emu.add_project(project_id=SCHOOL, name="Riverside School")
    now = emu._now()
    jobs = []
    for n, (project, job_id, status, age, artifacts) in enumerate(DEMO_JOBS):
        try:
            jobs.append(emu.job(job_id))
            continue
        except KeyError:
            pass
        if status == "expired":
            # never finished before it expired: nothing to store (a job that had completed
            # and expired unseen would be lost, see archiver.triage)
            emu.add_job(project, status="processing", job_id=job_id, artifacts=artifacts,
                        created_at=now - age, external_id=f"demo-{n + 1:02d}")
            jobs.append(emu.expire(job_id))
            continue
        jobs.append(emu.add_job(project, status=status, job_id=job_id, artifacts=artifacts,
                                created_at=now - age, external_id=f"demo-{n + 1:02d}"))
    return jobs

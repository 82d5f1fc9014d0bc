"""``archiver demo``: the emulator's demo jobs archived into ./archive, end to end.

Starts the emulator on a free 127.0.0.1 port, writes ``archiver-demo.yaml`` next to the
archive (the API key comes from an environment variable, as in production), runs one
pass, checks every stored file against the emulator's bytes and prints the layout.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import click

DEMO_CONFIG = """\
# Written by `archiver demo`; the emulator it points at is gone once the demo ends.
source:
  type: plangrep
  base_url: {base_url}
  api_key: ${{PLANGREP_API_KEY}}
transforms:
  - type: checksum
    algorithms: [sha256, crc32c]
sinks:
  - name: primary
    type: local
    root: {root}
state_dir: {state}
concurrency: 8
"""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_demo(directory: str = ".") -> int:
    from . import api
    from .config import load_config
    from .ledger import open_ledger
    from .plugins import build_plugin_manager
    from .runtime import Runtime
    from .testing.emulator import Emulator

    base = Path(directory).resolve()
    root, state = base / "archive", base / ".archiver"
    cfg_file = base / "archiver-demo.yaml"
    with Emulator() as emu:
        emu.load_demo()
        cfg_file.write_text(DEMO_CONFIG.format(base_url=emu.base_url, root=root, state=state))
        plugins = build_plugin_manager()
        env = {**os.environ, "PLANGREP_API_KEY": emu.api_key}
        loaded = load_config(cfg_file, plugins.registry, env=env)
        ledger = open_ledger(loaded.settings)
        where = ledger.location
        rt = Runtime(loaded, plugins, ledger)
        try:
            report = api.run(rt)
            checked, bad = 0, []
            for job_id in report.archived:
                for copy in ledger.job_report(job_id)["copies"]:
                    if copy["path"] in ("job.json", "result.json"):
                        continue
                    want = hashlib.sha256()
                    for chunk in emu.iter_artifact_bytes(job_id, copy["path"]):
                        want.update(chunk)
                    checked += 1
                    if _sha256_file(Path(copy["location"])) != want.hexdigest():
                        bad.append(copy["location"])
            summary = ledger.summary()
        finally:
            rt.close()
            ledger.close()
    click.echo(f"emulator: {len(emu.requests)} requests served")
    click.echo(f"config written to {cfg_file}")
    click.echo(f"archive: {root}")
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        click.echo(f"  {path.relative_to(root)}  ({path.stat().st_size} bytes)")
    click.echo(f"ledger: {where}  jobs: {summary['jobs']}")
    click.echo(f"archived {len(report.archived)} job(s); nothing to store for "
               f"{len(report.nothing_to_store)}; not finished {len(report.waiting)}; "
               f"already archived {report.already.get('archived', 0)}")
    click.echo(f"verified {checked} artifact file(s) against the emulator's bytes: "
               f"{'all match' if not bad else f'{len(bad)} MISMATCH'}")
    for loc in bad:
        click.echo(f"  MISMATCH {loc}", err=True)
    click.echo(f"next: archiver status -c {cfg_file}   (the ledger outlives the emulator)")
    return 0 if report.exit_code == 0 and not bad else 1

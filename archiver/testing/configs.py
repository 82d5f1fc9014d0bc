"""Config texts for tests: the emulator as source, local sinks under a temporary dir."""

from __future__ import annotations

import textwrap
from pathlib import Path


def basic_config(emu, tmp_path: Path, extra_sink: str = "", top: str = "",
                 temp_files: str | None = None) -> str:
    """A complete config: plangrep source on ``emu`` (key from ``$PLANGREP_API_KEY``),
    checksum sha256+md5, a local sink ``primary`` at ``tmp_path/archive``; ``extra_sink``
    is YAML for more list items of ``sinks:`` (``  - name: ...``), ``top`` more top-level
    keys; ``temp_files``: the local sink's option (``named``: the temporary files a crash
    can leave, recorded in the ledger; unset: the default, unnamed where possible)."""
    return textwrap.dedent(f"""\
        source:
          type: plangrep
          base_url: {emu.base_url}
          api_key: ${{PLANGREP_API_KEY}}
          backoff_base: 0.01
        transforms:
          - type: checksum
            algorithms: [sha256, md5]
        sinks:
          - name: primary
            type: local
            root: {tmp_path / 'archive'}
        """) + (f"    temp_files: {temp_files}\n" if temp_files else "") + extra_sink + textwrap.dedent(f"""\
        state_dir: {tmp_path / 'state'}
        concurrency: 4
        """) + textwrap.dedent(top)

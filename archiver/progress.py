"""Progress on a TTY (rich), silence otherwise."""

from __future__ import annotations

from typing import Any


class Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._bar = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.progress import Progress as RichProgress, SpinnerColumn, TextColumn
            self._bar = RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                                     TextColumn("jobs {task.fields[jobs]}"),
                                     TextColumn("objects {task.completed:.0f}"),
                                     TextColumn("failed {task.fields[failed]}"), transient=True)
            self._bar.start()
            self._task = self._bar.add_task("archiving", total=None, jobs=0, failed=0)
        return self

    def update(self, kind: str, data: dict[str, Any]) -> None:
        if self._bar is None:
            return
        task = self._bar.tasks[0]
        if kind == "job":
            self._bar.update(self._task, jobs=task.fields["jobs"] + 1)
        elif kind == "artifact":
            self._bar.update(self._task, advance=1,
                             failed=task.fields["failed"] + (0 if data.get("ok") else 1))

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

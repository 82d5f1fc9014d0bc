"""Progress on a terminal (rich), nothing otherwise.

:class:`Progress` takes the runtime's progress events (``Runtime.on_progress``; worker
processes forward theirs to the supervisor as JSON lines):

* ``("job", {"job"})``: a job is being archived;
* ``("bytes", {"job", "path", "done", "total"})``: an object in flight (``done`` bytes so
  far, ``total`` its announced size or None); at most ~10 per second per object, and
  none for objects that take less than 0.1 s (the fan-out throttles them);
* ``("artifact", {"job", "path", "ok", "size", "skipped"})``: an object is finished.

It shows one line for the whole (jobs, objects, failures, bytes done and the total known
so far, rate, ETA, elapsed) and one per object in flight (its path, bytes, rate, ETA).
Disabled (stderr is not a terminal, ``--json``, ``-q``), every method returns at once and
rich is never imported; callers then pass no progress callback at all, so that the
fan-out does not even look at the clock for it.

:func:`metered` does the same throttling for commands that read stored objects
(``verify``, ``replicate``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Callable

INTERVAL = 0.1  # seconds between two "bytes" events of one object
# "0": nobody shows progress (set by a supervisor without a display for its workers)
ENV = "ARCHIVER_PROGRESS"
_NAME_WIDTH = 36


class Progress:
    """See the module doc. ``label``: what the whole line says (``archiving``,
    ``verifying``, ``replicating``); ``total``: the bytes of the whole, when known in
    advance (``verify``, ``replicate``)."""

    def __init__(self, enabled: bool, label: str = "archiving", *, total: int | None = None):
        self.enabled = enabled
        self.label = label
        self.total = total
        self._bar: Any = None
        self._lock = threading.Lock()
        self._files: dict[tuple[str, str], list] = {}   # (job, path) -> [task, done, total]
        self._finished = 0       # bytes of finished objects
        self._jobs = self._objects = self._failed = 0

    @property
    def callback(self) -> Callable[[str, dict[str, Any]], None] | None:
        """What to hand to ``on_progress``: None when disabled (costs nothing then)."""
        return self.update if self.enabled else None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress as RichProgress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )
            console = Console(stderr=True)
            # 80 columns: name, bytes, rate, ETA and counts; wider terminals get a bar and
            # the elapsed time too
            wide = console.width >= 120
            self._width = max(12, min(_NAME_WIDTH, console.width - (90 if wide else 58)))
            columns = [SpinnerColumn(), TextColumn("{task.description}")]
            if wide:
                columns.append(BarColumn(bar_width=16))
            columns += [DownloadColumn(binary_units=True), _speed_column(TransferSpeedColumn),
                        TextColumn("ETA"), TimeRemainingColumn(compact=True),
                        TextColumn("{task.fields[info]}")]
            if wide:
                columns.append(TimeElapsedColumn())
            self._bar = RichProgress(*columns, console=console, transient=True,
                                     refresh_per_second=8, speed_estimate_period=10)
            self._bar.start()
            self._task = self._bar.add_task(self._name(self.label), total=self.total,
                                            info=self._info())
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _name(self, text: str) -> str:
        width = getattr(self, "_width", _NAME_WIDTH)
        text = text if len(text) <= width else "…" + text[-(width - 1):]
        return text.ljust(width)

    def _info(self) -> str:
        jobs = f"{self._jobs} job(s) " if self.label == "archiving" else ""
        failed = f" {self._failed} failed" if self._failed else ""
        return f"{jobs}{self._objects} obj{failed}"

    def update(self, kind: str, data: dict[str, Any]) -> None:
        bar = self._bar
        if bar is None:
            return
        with self._lock:
            if kind == "job":
                self._jobs += 1
            elif kind == "total":
                self.total = int(data.get("bytes") or 0) or None
            elif kind == "bytes":
                self._bytes(bar, data)
            elif kind == "artifact":
                self._done(bar, data)
            else:
                return
            self._overall(bar)

    def _bytes(self, bar, data: dict[str, Any]) -> None:
        key = (str(data.get("job")), str(data.get("path")))
        done, total = int(data.get("done") or 0), data.get("total")
        entry = self._files.get(key)
        if entry is None:
            task = bar.add_task(self._name("  " + key[1]), total=total, info="")
            entry = self._files[key] = [task, 0, total]
        entry[1], entry[2] = done, total
        bar.update(entry[0], completed=done, total=total)

    def _done(self, bar, data: dict[str, Any]) -> None:
        entry = self._files.pop((str(data.get("job")), str(data.get("path"))), None)
        if entry is not None:
            bar.remove_task(entry[0])
        if data.get("skipped"):
            return
        self._objects += 1
        self._failed += 0 if data.get("ok", True) else 1
        self._finished += int(data.get("size") or 0)

    def _overall(self, bar) -> None:
        done = self._finished + sum(e[1] for e in self._files.values())
        total = self.total
        if total is None and all(e[2] is not None for e in self._files.values()):
            total = self._finished + sum(e[2] for e in self._files.values())  # known so far
        bar.update(self._task, completed=done, total=total or None, info=self._info())


def _speed_column(base):
    """rich's transfer speed, in binary units like the byte counts (MiB/s)."""
    from rich.text import Text

    from .humanize import size

    class BinarySpeed(base):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{size(speed)}/s",
                        style="progress.data.speed")

    return BinarySpeed()


def metered(chunks: Iterable[bytes], emit: Callable[[str, dict[str, Any]], None] | None,
            job: str, path: str, total: int | None) -> Iterator[bytes]:
    """``chunks`` unchanged, with throttled ``("bytes", ...)`` events on the way (none
    when ``emit`` is None, nor for objects done within :data:`INTERVAL`)."""
    if emit is None:
        yield from chunks
        return
    done, next_at = 0, time.monotonic() + INTERVAL
    for chunk in chunks:
        done += len(chunk)
        now = time.monotonic()
        if now >= next_at:
            next_at = now + INTERVAL
            emit("bytes", {"job": job, "path": path, "done": done, "total": total})
        yield chunk


__all__ = ["ENV", "INTERVAL", "Progress", "metered"]

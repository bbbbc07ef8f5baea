"""Progress of long jobs: rich's live bars on a terminal, a plain line per task every ~30 s elsewhere.

A log file or a SLURM job's output gets no live display (rich draws it only at the end there),
so :class:`JobProgress` prints each unfinished task's count, rate and ETA as one line at most
every ``every`` seconds instead.
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from typing import Any, Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

#: Seconds between plain progress lines when the output is not a terminal.
PLAIN_EVERY_SECONDS = 30.0


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}"


def plain_line(task: Task) -> str:
    """One task's progress as text: "training cdrl/seed0: 120/500 (24%), 3.10/s, 0:00:39 elapsed, ETA 0:02:03"."""
    parts = [f"{task.completed:,.0f}/{task.total:,.0f} ({task.percentage:.0f}%)" if task.total else
             f"{task.completed:,.0f}"]
    if task.speed:
        parts.append(f"{task.speed:.3g}/s")
    parts.append(f"{_clock(task.elapsed)} elapsed")
    if task.total:
        parts.append(f"ETA {_clock(task.time_remaining)}")
    fields = " ".join(str(value) for value in task.fields.values() if value)
    return f"{task.description}: {', '.join(parts)}" + (f" | {fields}" if fields else "")


class JobProgress(Progress):
    """:class:`rich.progress.Progress` that also reports in plain lines when its console is not a terminal."""

    def __init__(self, *columns: str | ProgressColumn, console: Console | None = None,
                 every: float = PLAIN_EVERY_SECONDS, **options: Any) -> None:
        super().__init__(*(columns or self.default_columns()), console=console or Console(), **options)
        self._plain = not self.console.is_terminal and not self.disable
        self._every = every
        self._last_line = time.monotonic()
        self._reported: dict[TaskID, float] = {}

    # In a log the live display is never started: rich would end it with its last frame drawn at the
    # console's width (a bar with its count cut to "6000/6…") or, when transient, a stray blank line.
    # The tasks still standing end with a plain line instead, where it says more than the last one.
    def start(self) -> None:
        if not self._plain:
            super().start()

    def stop(self) -> None:
        if not self._plain:
            super().stop()
            return
        for task in self.tasks:
            if task.visible and self._reported.get(task.id) != task.completed:
                self._print(task)

    @classmethod
    def default_columns(cls) -> tuple[ProgressColumn, ...]:
        return (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("ETA"), TimeRemainingColumn())

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report()

    def update(self, task_id: TaskID, **changes: Any) -> None:
        super().update(task_id, **changes)
        self._report()

    def _report(self) -> None:
        if not self._plain or time.monotonic() - self._last_line < self._every:
            return
        self._last_line = time.monotonic()
        for task in self.tasks:
            if task.visible and not task.finished:
                self._print(task)

    def _print(self, task: Task) -> None:
        self._reported[task.id] = task.completed
        self.console.print(plain_line(task), highlight=False, markup=False, soft_wrap=True)


#: The progress display of the command that is running, if it shows one (see :func:`shown_in`).
_shown: ContextVar[Progress | None] = ContextVar("cdrl_progress", default=None)


@contextlib.contextmanager
def shown_in(progress: Progress) -> Iterator[Progress]:
    """Make ``progress`` the display that :func:`stage` adds its tasks to, for the block."""
    token = _shown.set(progress)
    try:
        yield progress
    finally:
        _shown.reset(token)


@contextlib.contextmanager
def stage(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A task of the running command's display (none when it shows none): yields ``advance(count)``.

    Deep steps (sampling, feature extraction) report here without every caller passing a callback down.
    """
    progress = _shown.get()
    if progress is None:
        yield lambda count: None
        return
    task = progress.add_task(description, total=total)
    try:
        yield lambda count: progress.advance(task, count)
    finally:
        progress.remove_task(task)

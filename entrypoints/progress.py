"""Progress bars for the long commands (compaction at ``--compact-now``, verify, repair): rich,
on stderr, only when stderr is a terminal and only once the work has taken longer than a moment.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

PHASES = {
    "scan": "reading the log",
    "copy": "writing the new log",
    "check": "checking data",
    "pages": "reading every page back",
}


class ProgressBar:
    """Callable as ``(phase, done, total)``; a context manager that removes the bar at the end."""

    DELAY = 0.5  # seconds of work before a bar appears

    def __init__(self, title: str, *, stream: Any = None, delay: float | None = None) -> None:
        self.title = title
        self.stream = stream if stream is not None else sys.stderr
        self.delay = self.DELAY if delay is None else delay
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._started = time.monotonic()
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            if time.monotonic() - self._started < self.delay:
                return
            self._start()
        task = self._tasks.get(phase)
        if task is None:
            label = f"{self.title}: {PHASES.get(phase, phase)}"
            task = self._tasks[phase] = self._progress.add_task(label, total=max(total, 1))
        self._progress.update(task, completed=done, total=max(total, 1))

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeRemainingColumn(),
            console=Console(file=self.stream, stderr=True),
            transient=True,
        )
        self._progress.start()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""Progress of long measurements: a rich progress bar on a terminal, one plain line per step otherwise.

Steps are phases (compiling, latency, throughput), never individual timed calls, so reporting progress
adds nothing to the numbers being measured.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn


class StepProgress:
    """`with StepProgress("bench smolvlm-f4", total=7) as p: p.step("eager: latency")` ..."""

    def __init__(self, title: str, total: int, console: Console | None = None) -> None:
        self.title = title
        self.total = total
        self.done = 0
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self._start = time.perf_counter()
        self._bar: Progress | None = None
        self._task = None

    def __enter__(self) -> StepProgress:
        if self.live:
            self._bar = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=self.console, transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.title, total=self.total)
        return self

    def step(self, what: str) -> None:
        """Mark the previous step done and announce the next one."""
        if self.done < self.total and self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, description=f"{self.title}: {what}")
        elif not self.live:
            elapsed = time.perf_counter() - self._start
            print(f"vtlab: {self.title} [{self.done + 1}/{self.total}] {what} ({elapsed:.1f}s)", file=sys.stderr,
                  flush=True)
        self.done += 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._bar is not None:
            self._bar.stop()

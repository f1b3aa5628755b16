"""Progress on stderr with rich: build stages (a spinner while running, a line with the time
after, or why the stage was skipped) and a bar over eval's windows. Nothing animates when
stderr is not a terminal; stdout stays for results."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.status import Status

console = Console(file=sys.stderr, highlight=False)  # bound now: build stages redirect sys.stderr


class _Report:
    def __init__(self, name: str, status: Status):
        self.name, self.status, self.skipped = name, status, None

    def update(self, what: str, done: int, total: int) -> None:
        if total > 1:
            self.status.update(f"{self.name}... {what} {done}/{total}")

    def skip(self, why: str) -> None:
        self.skipped = why


@contextlib.contextmanager
def stage(name: str) -> Iterator[_Report]:
    start = time.perf_counter()
    with console.status(f"{name}...") as status:
        report = _Report(name, status)
        yield report
    if report.skipped:
        console.print(f"[yellow]-[/yellow] {name} skipped: {report.skipped}", soft_wrap=True)
    else:
        console.print(f"[green]✓[/green] {name} [dim]({time.perf_counter() - start:.1f}s)[/dim]")


class Timings:
    """Wraps a stage function and keeps the time of every stage it ran (`ingot build --json`)."""

    def __init__(self, inner: Callable = stage):
        self.inner, self.stages, self.start = inner, [], time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[_Report]:
        start = time.perf_counter()
        with self.inner(name) as report:
            yield report
        self.stages.append((name, round(time.perf_counter() - start, 3), getattr(report, "skipped", None)))

    def total(self) -> float:
        return time.perf_counter() - self.start


@contextlib.contextmanager
def bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar; yields `count(done, total)`."""
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(what, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)

"""Build stages on stderr with rich: a spinner while running, a line with the time after."""

from __future__ import annotations

import contextlib
import sys
import time

from rich.console import Console

console = Console(file=sys.stderr, highlight=False)  # bound now: build stages redirect sys.stderr


@contextlib.contextmanager
def stage(name: str):
    start = time.perf_counter()
    with console.status(f"{name}..."):
        yield
    console.print(f"[green]✓[/green] {name} [dim]({time.perf_counter() - start:.1f}s)[/dim]")

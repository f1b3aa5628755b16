"""What a build tells its caller while it runs: stages, counts inside them, stages skipped.

The pipeline opens each stage with `stage(name)`; the context manager yields a StageReport.
The CLI (cli/progress.py) shows them on stderr; the library default shows nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Protocol

# Count: (what, done, total), e.g. ("calibration sample", 3, 32); loops that take a while call it
from ingot.quant.report import Progress as Count
from ingot.quant.report import silent as no_count

__all__ = ["Count", "Stage", "StageReport", "no_count", "no_progress"]


class StageReport(Protocol):
    def update(self, what: str, done: int, total: int) -> None:
        """`done` of `total` `what`s (layers, samples) of this stage are through."""

    def skip(self, why: str) -> None:
        """This stage did not run, because `why`."""


Stage = Callable[[str], AbstractContextManager[StageReport]]


class _Silent:
    def update(self, what: str, done: int, total: int) -> None:
        pass

    def skip(self, why: str) -> None:
        pass


@contextlib.contextmanager
def no_progress(_: str) -> Iterator[StageReport]:
    yield _Silent()


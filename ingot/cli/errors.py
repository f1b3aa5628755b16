"""One place that turns exceptions into exit codes: 0 ok, 1 failure, 2 usage, 130 Ctrl-C.

A user error prints one line on stderr and no traceback; `--debug` (anywhere on the
command line) or INGOT_DEBUG=1 shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from ingot.builder.errors import BuildError
from ingot.plans import BundleError
from ingot.runtime.errors import InputError, RunError


class UsageError(InputError):
    """A bad option value: one error line and exit 2, as click's own usage errors."""


USER_ERRORS = (BundleError, BuildError, RunError)
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130  # 130: 128 + SIGINT, as shells report


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    debug = "--debug" in argv or os.environ.get("INGOT_DEBUG") == "1"
    return [a for a in argv if a != "--debug"], debug


def run_guarded(entry: Callable[[], object], debug: bool) -> int:
    try:
        entry()
    except SystemExit as e:  # click/typer: usage errors exit 2, --help exits 0
        if _interrupted(e):  # typer turns Ctrl-C into a silent exit 130
            return _interrupt()
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_FAILURE)
    except KeyboardInterrupt:
        return _interrupt()
    except USER_ERRORS as e:
        if debug:
            raise
        _line(str(e))
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_FAILURE
    except Exception as e:
        if debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        _line(f"internal error: {type(e).__name__}: {first} (run with --debug for the traceback)")
        return EXIT_FAILURE
    return 0


def _interrupted(e: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the exceptions that led to `e`."""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def _interrupt() -> int:
    _line("interrupted")
    return EXIT_INTERRUPTED


def _line(message: str) -> None:
    message = " ".join(message.split())  # one line, always
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()

"""One place that turns exceptions into exit codes: 0 ok, 1 failure, 2 usage.

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
EXIT_FAILURE, EXIT_USAGE = 1, 2


def split_debug(argv: list[str]) -> tuple[list[str], bool]:
    debug = "--debug" in argv or os.environ.get("INGOT_DEBUG") == "1"
    return [a for a in argv if a != "--debug"], debug


def run_guarded(entry: Callable[[], object], debug: bool) -> int:
    try:
        entry()
    except SystemExit as e:  # click/typer: usage errors exit 2, --help exits 0
        return e.code if isinstance(e.code, int) else (0 if e.code is None else EXIT_FAILURE)
    except KeyboardInterrupt:
        _line("interrupted")
        return 130
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


def _line(message: str) -> None:
    message = " ".join(message.split())  # one line, always
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()

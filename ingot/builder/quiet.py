"""Keep library chatter (progress bars, exporter logs, warnings) off stdout and stderr.

Build output is ours: rich stages on stderr, `--json` on stdout. What the libraries print
is kept in a buffer, so an error message can still quote it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings


def quiet_transformers():
    """transformers, its logging set to errors only and its progress bars off."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@contextlib.contextmanager
def quiet():
    """The exporter prints progress and warnings; keep stdout clean for --json."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch", "torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)

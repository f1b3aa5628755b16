"""Build errors: each message is one line that says what failed and what to do."""


class BuildError(Exception):
    """The build cannot go on; nothing was written."""


class SourceError(BuildError):
    """The model source is missing, unreadable or of an unsupported type."""


class ExportError(BuildError):
    """torch → ONNX export failed (the message names the op or module)."""


class VerificationError(BuildError):
    """The built plan's outputs differ from the source model beyond tolerance."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for one-line errors."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]

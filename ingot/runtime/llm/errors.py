"""LLM runtime errors: one line a user (or the server's error mapping) can act on."""

from ingot.runtime.errors import RunError


class QueueFullError(RunError):
    """The waiting queue is at `max_waiting`; retry later (maps to RESOURCE_EXHAUSTED / 429)."""


class PromptTooLongError(RunError):
    """The prompt has more tokens than `max_model_len`; nothing was queued."""

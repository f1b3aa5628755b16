"""Serving errors: each names what a client can act on; the gRPC servicer maps them to
status codes in one place (`grpc_service.status_of`)."""

from ingot.runtime.errors import RunError


class ServeError(RunError):
    """A request or a repository operation cannot be done as asked."""


class InvalidArgument(ServeError):
    """The request does not match the model's inputs (the message lists what is expected)."""


class NotFound(ServeError):
    """No such model or version in the repository."""


class Unavailable(ServeError):
    """The model (or the server) is not ready: loading, failed, unloaded or draining."""


class ResourceExhausted(ServeError):
    """The model's queue is full; retry later."""


class DeadlineExceeded(ServeError):
    """The request's deadline or `timeout` passed before it finished."""


class Unimplemented(ServeError):
    """The model does not serve this RPC (ModelInfer on a decoupled LLM)."""


class LoadError(ServeError):
    """A model version failed to load (corrupt bundle, no target for this machine, ...);
    what was serving keeps serving."""


def classify(e: BaseException) -> str:
    """What an error means to a client, for every front end to map to its own status:
    invalid, not_found, exhausted, deadline, unimplemented, unavailable or internal."""
    from ingot.runtime.errors import InputError
    from ingot.runtime.llm.async_llm import EngineDeadError
    from ingot.runtime.llm.errors import PromptTooLongError, QueueFullError

    kinds = [  # most specific first
        ((InvalidArgument, InputError, PromptTooLongError), "invalid"), (NotFound, "not_found"),
        ((ResourceExhausted, QueueFullError), "exhausted"), ((DeadlineExceeded, TimeoutError), "deadline"),
        (Unimplemented, "unimplemented"), (Unavailable, "unavailable"), ((EngineDeadError, LoadError), "internal"),
        (ServeError, "invalid"),
    ]
    return next((kind for types, kind in kinds if isinstance(e, types)), "internal")

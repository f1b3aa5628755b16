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

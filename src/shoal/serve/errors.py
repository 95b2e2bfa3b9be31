"""The errors a request can end with, each carrying the HTTP answer it gets.

The buffer, the scheduler, the tokeniser, the engine and the runtime raise these; the API
(``api/errors.py``) turns any of them into TEI's error body from the class attributes alone, so
the status of each failure is decided here, beside its meaning, and nowhere else. Plain
classes: no torch, no HTTP imports.
"""

from __future__ import annotations

from shoal.errors import ShoalError


class ServingError(ShoalError):
    """Base of the serving errors: what the API answers for them.

    A 500 answer never shows the message to the client (it goes to the log under the request
    id); every other status sends ``public_message``.
    """

    status: int = 500
    """HTTP status of the answer."""
    error_type: str = "backend"
    """TEI's ``error_type``: validation, overloaded, unavailable, timeout or backend."""
    retry_after: bool = False
    """Whether the answer carries ``Retry-After`` (the same request may succeed later)."""

    def public_message(self, retry_after_s: int) -> str:
        """The message the client reads; ``retry_after_s`` is the ``Retry-After`` value."""
        return str(self)


class InputError(ServingError, ValueError):
    """An input the server will not take (empty, too long, too many); the message says why."""

    status = 422
    error_type = "validation"


class InputTooLong(InputError):
    """An input above the length limit while truncation is off."""

    status = 413


class InvalidRequest(ServingError, ValueError):
    """A request the scheduler can never serve (e.g. it asks for more students than exist)."""

    status = 422
    error_type = "validation"


class BufferFull(ServingError):
    """The buffer already holds ``capacity`` requests; the request is refused (HTTP 429)."""

    status = 429
    error_type = "overloaded"
    retry_after = True

    def public_message(self, retry_after_s: int) -> str:
        return f"the server is at capacity ({self}); retry after {retry_after_s} s"


class Draining(ServingError):
    """The server is shutting down and takes no new requests."""

    status = 503
    error_type = "unavailable"
    retry_after = True


class DeadlineExceeded(ServingError):
    """The request's deadline passed before it could run.

    408 (as Ray Serve answers), not a 5xx: the server is healthy, the client's budget ran out.
    """

    status = 408
    error_type = "timeout"


class BackendError(ServingError):
    """The runtime failed on the batch that held the request."""


class WorkerCrashed(ServingError, RuntimeError):
    """A worker process died or stopped answering; the batch it held failed.

    The worker has been restarted by the time this is raised, so the next batch can run.
    """


class WorkerError(ServingError, RuntimeError):
    """A worker raised while running a batch (bad input, out of memory); it is still alive."""

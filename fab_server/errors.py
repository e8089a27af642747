"""Errors the fab server's services raise; each transport maps them to its own status codes.

gRPC: InvalidArgument (and wafercore's InvalidInput) -> INVALID_ARGUMENT, NotFound -> NOT_FOUND,
Conflict -> FAILED_PRECONDITION. HTTP: InvalidArgument and InvalidInput -> 422, NotFound -> 404,
Conflict -> 409.
"""

from __future__ import annotations

from wafercore.errors import InvalidInput


class FabError(Exception):
    """Base of the service errors."""


class InvalidArgument(FabError, InvalidInput):
    """A request field is invalid; nothing of the request was stored.

    A `wafercore.errors.InvalidInput` too: the transports answer both (the shared validators
    raise the latter) the same way, naming ``field``.
    """

    def __init__(self, field: str, reason: str) -> None:
        InvalidInput.__init__(self, field, reason)


class NotFound(FabError):
    """The thing asked for does not exist."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class Conflict(FabError):
    """The request is valid but the current state does not allow it (e.g. a lapsed lease)."""

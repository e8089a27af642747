"""Errors the fab server's services raise; each transport maps them to its own status codes.

gRPC: InvalidArgument -> INVALID_ARGUMENT, NotFound -> NOT_FOUND, Conflict -> FAILED_PRECONDITION.
HTTP: InvalidArgument -> 422, NotFound -> 404, Conflict -> 409.
"""

from __future__ import annotations


class FabError(Exception):
    """Base of the service errors."""


class InvalidArgument(FabError):
    """A request field is invalid; nothing of the request was stored."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(FabError):
    """The thing asked for does not exist."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class Conflict(FabError):
    """The request is valid but the current state does not allow it (e.g. a lapsed lease)."""

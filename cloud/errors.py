"""Errors the cloud's services raise; the REST API maps each to one status.

Bad input is `wafercore.errors.InvalidInput` (422 naming the field), as in every tier.
"""

from __future__ import annotations


class NotFound(LookupError):
    """The named job, model version or token does not exist (404)."""

    def __init__(self, what: str, key: str) -> None:
        super().__init__(f"{what} {key!r} not found")
        self.what = what
        self.key = key


class Conflict(RuntimeError):
    """The request contradicts the current state, for example cancelling a finished job (409)."""

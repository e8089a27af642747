"""The bearer token of a gRPC call, read the same way by every tier's gRPC server."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def bearer_token(metadata: Iterable[tuple[str, Any]]) -> str | None:
    """The token of the call's ``authorization: Bearer`` header, or None when there is none.

    Raises:
        ValueError: the header is repeated or is not ``Bearer <token>`` (the caller answers
            UNAUTHENTICATED with the message).
    """
    values = [value for key, value in metadata if key.lower() == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        # Which one would count? Refused rather than guessed.
        raise ValueError("authorization: sent more than once")
    scheme, _, token = str(values[0]).strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ValueError("authorization: expected 'Bearer <token>'")
    return token.strip()

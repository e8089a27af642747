"""The people's (and tools') API tokens: who holds each, looked up in constant time.

Both transports use it: the HTTP API's bearer check (`fab_server.api.auth`) and FabService's
(`fab_server.rpc.auth`), so a token means the same person with the same role on either.
Every configured token is compared in constant time, and all of them on every lookup, so
neither the time of one comparison nor the position of the match tells an attacker anything.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from fab_server.settings import ApiToken, Role
from wafercore.validation import MAX_ID_CHARS


@dataclass(frozen=True)
class Principal:
    """Who is calling, as their token says."""

    user: str
    role: Role


class ApiTokenTable:
    """The configured API tokens (``settings.api_tokens``) and their holders."""

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        """Index the tokens (as bytes: ``compare_digest`` wants ASCII or bytes).

        Raises:
            ValueError: a token is configured twice (which holder would it be?), or a user name
                is longer than the database keeps.
        """
        if len({t.token for t in tokens}) != len(tokens):
            raise ValueError("settings.api_tokens: a token is configured more than once")
        if any(len(t.user) > MAX_ID_CHARS for t in tokens):
            # The user name is stored as claimant, reviewer and requester (columns of 128).
            raise ValueError(f"settings.api_tokens: user names are at most {MAX_ID_CHARS} chars")
        self._tokens = [(t.token.encode(), Principal(t.user, t.role)) for t in tokens]

    def authenticate(self, token: str) -> Principal | None:
        """The holder of ``token``, or None; constant time in the token's content."""
        presented = token.encode()
        found: Principal | None = None
        for known, principal in self._tokens:
            if hmac.compare_digest(presented, known):
                found = principal
        return found

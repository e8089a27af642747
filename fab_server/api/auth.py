"""Bearer-token authentication with two roles, engineer and admin (admin can do all else).

Tokens come from ``settings.api_tokens``. A missing or unknown token is 401 with
``WWW-Authenticate: Bearer``; a known token whose role is too low is 403. Every configured
token is compared in constant time, and all of them on every request, so neither the time of
one comparison nor the position of the match tells an attacker anything.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the guard's signature, which
# names the bearer scheme of the TokenAuth instance.
import hmac
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fab_server.services.review_rules import MAX_ID_CHARS
from fab_server.settings import ApiToken, Role

_RANK: dict[Role, int] = {"engineer": 0, "admin": 1}


@dataclass(frozen=True)
class Principal:
    """Who is calling, as their token says."""

    user: str
    role: Role


Guard = Callable[[HTTPAuthorizationCredentials | None], Awaitable[Principal]]


class TokenAuth:
    """The API's token table and the FastAPI dependencies that enforce a minimum role."""

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        """Index the configured tokens (as bytes: ``compare_digest`` wants ASCII or bytes).

        Raises:
            ValueError: a token is configured twice (which holder would it be?), or a user name
                is longer than the database keeps.
        """
        if len({t.token for t in tokens}) != len(tokens):
            raise ValueError("settings.api_tokens: a token is configured more than once")
        if any(len(t.user) > MAX_ID_CHARS for t in tokens):
            # The user name is stored as claimant and reviewer (columns of MAX_ID_CHARS).
            raise ValueError(f"settings.api_tokens: user names are at most {MAX_ID_CHARS} chars")
        self._tokens = [(t.token.encode(), Principal(t.user, t.role)) for t in tokens]
        # auto_error=False: a missing header must be our 401 with WWW-Authenticate, not a 403.
        self._scheme = HTTPBearer(auto_error=False)

    def authenticate(self, token: str) -> Principal | None:
        """The holder of ``token``, or None; constant time in the token's content."""
        presented = token.encode()
        found: Principal | None = None
        for known, principal in self._tokens:
            if hmac.compare_digest(presented, known):
                found = principal
        return found

    def require(self, role: Role) -> Guard:
        """A dependency that yields the caller when their token has ``role`` or a higher one."""
        scheme = self._scheme

        async def guard(
            credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(scheme)],
        ) -> Principal:
            principal = self.authenticate(credentials.credentials) if credentials else None
            if principal is None:
                raise HTTPException(
                    status.HTTP_401_UNAUTHORIZED,
                    "a valid bearer token is required",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if _RANK[principal.role] < _RANK[role]:
                raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {role} role")
            return principal

        return guard

"""Bearer-token authentication with two roles, engineer and admin (admin can do all else).

Tokens come from ``settings.api_tokens`` (looked up in constant time by
`fab_server.api_tokens`, which FabService uses too). A missing or unknown token is 401 with
``WWW-Authenticate: Bearer``; a known token whose role is too low is 403.

`BearerGate` refuses a request under ``/api`` without a known token before the app runs, so an
anonymous client cannot make the server read, parse or validate a body; the routes' guards
then check the role.
"""

# No ``from __future__ import annotations``: FastAPI evaluates the guard's signature, which
# names the bearer scheme of the TokenAuth instance.
from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from fab_server.api_tokens import ApiTokenTable, Principal
from fab_server.settings import ApiToken, Role
from wafercore.web import error_response

__all__ = ["BearerGate", "Guard", "Principal", "TokenAuth"]

_RANK: dict[Role, int] = {"engineer": 0, "admin": 1}
UNAUTHORIZED = "a valid bearer token is required"

Guard = Callable[[HTTPAuthorizationCredentials | None], Awaitable[Principal]]


class TokenAuth:
    """The API's token table and the FastAPI dependencies that enforce a minimum role."""

    def __init__(self, tokens: Sequence[ApiToken]) -> None:
        """Index the configured tokens.

        Raises:
            ValueError: a token is configured twice, or a user name is longer than the
                database keeps.
        """
        self._table = ApiTokenTable(tokens)
        # auto_error=False: a missing header must be our 401 with WWW-Authenticate, not a 403.
        self._scheme = HTTPBearer(auto_error=False)

    def authenticate(self, token: str) -> Principal | None:
        """The holder of ``token``, or None; constant time in the token's content."""
        return self._table.authenticate(token)

    def bearer(self, authorization: str | None) -> Principal | None:
        """The holder of the token in an ``Authorization`` header, or None.

        Parsed as FastAPI's ``HTTPBearer`` parses it (the scheme in any case), so the gate and
        the routes' guards agree on every header.
        """
        scheme, token = get_authorization_scheme_param(authorization)
        if scheme.lower() != "bearer" or not token:
            return None
        return self.authenticate(token)

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
                    UNAUTHORIZED,
                    headers={"WWW-Authenticate": "Bearer"},
                )
            if _RANK[principal.role] < _RANK[role]:
                raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {role} role")
            return principal

        return guard


class BearerGate:
    """ASGI middleware: a request under ``/api`` without a known bearer token is 401 at once.

    It runs before the app reads anything of the request but its headers (FastAPI would read
    and parse the body before a route's dependencies run). The body of a refused request is
    discarded by the server, within its body deadline.
    """

    def __init__(self, app: ASGIApp, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an anonymous ``/api`` request; pass everything else on."""
        if (
            scope["type"] == "http"
            and _is_api(scope["path"])
            and self.auth.bearer(Headers(scope=scope).get("authorization")) is None
        ):
            response = error_response(
                status.HTTP_401_UNAUTHORIZED,
                UNAUTHORIZED,
                loc=["header", "authorization"],
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _is_api(path: str) -> bool:
    return path == "/api" or path.startswith("/api/")

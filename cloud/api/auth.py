"""Bearer tokens with three roles for the cloud API: viewer < ml-engineer < admin.

Tokens live hashed in the cloud database (`cloud.services.tokens`). A missing, unknown or
revoked token is 401 with ``WWW-Authenticate: Bearer``; a valid token whose role is too low is
403. Only `OPEN_PATHS` (health, the OpenAPI document and its pages) need no token.

`BearerGate` refuses an anonymous request before the app runs, so an anonymous client cannot
make the server read, parse or validate a body; each route's `RoleGuard` then checks the role
(and the route table test checks that every route has one).
"""

# No ``from __future__ import annotations``: FastAPI evaluates the guard's signature.
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud.api.resources import Resources
from cloud.services import tokens
from cloud.services.tokens import Principal, Role
from wafercore.web import error_response

__all__ = ["OPEN_PATHS", "BearerGate", "Principal", "RoleGuard", "TokenAuth"]

UNAUTHORIZED = "a valid bearer token is required"
OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/redoc"})
"""Paths anyone may read: health (load balancers) and the API's description (holds no data)."""
_OPEN_PREFIXES = ("/docs/static/",)
_PRINCIPAL = "cloud.principal"
"""Key of the gate's verdict in the request's state, so the guard need not look it up again."""

# auto_error=False: a missing header must be our 401 with WWW-Authenticate, not FastAPI's 403.
BEARER = HTTPBearer(auto_error=False, description="A token from `wafer-cloud tokens add`.")


def unavailable_response() -> JSONResponse:
    """503: the database (or another backend) does not answer."""
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "a backend (database, broker or registry) is unavailable; retry shortly",
        kind="unavailable",
        headers={"Retry-After": "5"},
    )


def is_open(path: str) -> bool:
    """Whether ``path`` is served without a token."""
    return path in OPEN_PATHS or path.startswith(_OPEN_PREFIXES)


class TokenAuth:
    """Looks bearer tokens up in the cloud database of the running app."""

    def __init__(self, resources: Resources) -> None:
        """Authenticate against ``resources.db`` (opened when the app starts)."""
        self._resources = resources

    def authenticate(self, token: str) -> Principal | None:
        """The holder of an unrevoked ``token``, or None (blocking: a database query)."""
        return tokens.authenticate(self._resources.database(), token)

    def bearer(self, authorization: str | None) -> Principal | None:
        """The holder of the token in an ``Authorization`` header, or None.

        Parsed as FastAPI's ``HTTPBearer`` parses it, so the gate and the guards agree.
        """
        scheme, token = get_authorization_scheme_param(authorization)
        if scheme.lower() != "bearer" or not token:
            return None
        return self.authenticate(token)

    def require(self, role: Role, *, also: tuple[Role, ...] = ()) -> "RoleGuard":
        """A dependency yielding the caller when their token has ``role`` or a higher one, or
        one of the roles ``also`` names (``fab`` for artifact downloads)."""
        return RoleGuard(self, role, also)


class RoleGuard:
    """FastAPI dependency: the caller, when their token's role is at least `role`."""

    def __init__(self, auth: TokenAuth, role: Role, also: tuple[Role, ...] = ()) -> None:
        self.auth = auth
        self.role: Role = role
        self.also = frozenset(also)

    def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> Principal:
        """Check the caller (a plain function: FastAPI runs it in its thread pool).

        Raises:
            HTTPException: 401 without a valid token, 403 when its role is too low.
        """
        principal: Principal | None = request.scope.get("state", {}).get(_PRINCIPAL)
        if principal is None and credentials is not None:
            principal = self.auth.authenticate(credentials.credentials)
        if principal is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"}
            )
        if principal.role not in self.also and not tokens.role_at_least(principal.role, self.role):
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"this needs the {self.role} role")
        return principal


class BearerGate:
    """ASGI middleware: a request to anything but `OPEN_PATHS` without a valid token is 401.

    It runs before the app reads anything of the request but its headers. The principal it
    finds is left in the request's state for the route's `RoleGuard`.
    """

    def __init__(
        self, app: ASGIApp, auth: TokenAuth, unavailable: tuple[type[Exception], ...] = ()
    ) -> None:
        """Check tokens with ``auth``; ``unavailable``: what a database that is down raises
        (a 503 here: this middleware runs outside the app's exception handlers)."""
        self.app = app
        self.auth = auth
        self.unavailable = unavailable

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an anonymous request; pass everything else on."""
        if scope["type"] == "http" and not is_open(scope["path"]):
            header = Headers(scope=scope).get("authorization")
            try:
                principal = await run_in_threadpool(self.auth.bearer, header)
            except self.unavailable:
                await unavailable_response()(scope, receive, send)
                return
            if principal is None:
                response = error_response(
                    status.HTTP_401_UNAUTHORIZED,
                    UNAUTHORIZED,
                    loc=["header", "authorization"],
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})[_PRINCIPAL] = principal
        await self.app(scope, receive, send)

"""Sign-in sessions of the review UI: a signed cookie, CSRF tokens, and the FastAPI guards.

The session lives in one cookie (``wafer_ui``, path ``/ui``) signed with
``settings.ui_session_secret`` by itsdangerous, so the server keeps no session table: it holds
the user, their role, a CSRF token and the time it was signed (the signature's timestamp,
checked against ``settings.ui_session_max_age_s``). The cookie is HttpOnly (no script reads
it), SameSite=Strict (no other site's page sends it, so a link from elsewhere cannot act as
the engineer: opening an item claims it) and Secure when the server speaks TLS.

Every POST carries the session's CSRF token, in a form field (`csrf_field`) or the
``X-CSRF-Token`` header (scripts); `check_csrf` refuses a POST without it (403). Before sign-in
the cookie holds only a CSRF token, so the sign-in form is protected too; signing in issues a
new token (a token seen before sign-in is worth nothing after it).

A signed-in user who has since been disabled is signed out on their next request.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from markupsafe import Markup, escape
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.responses import Response

from fab_server.api_tokens import Principal
from fab_server.services import users
from fab_server.services.classify import Classifier
from fab_server.services.similar import SimilarityIndex
from fab_server.settings import FabSettings

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "Admin",
    "Forbidden",
    "Principal",
    "SignInRequired",
    "UiContext",
    "User",
    "admin_only",
    "check_csrf",
    "csrf_field",
    "form_data",
    "signed_in",
]

logger = logging.getLogger(__name__)

COOKIE = "wafer_ui"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
_PATH = "/ui"
_MAX_FORM_FIELDS = 200


class Forbidden(Exception):
    """A signed-in user may not do this, or a POST lacks its CSRF token: a 403 page."""


class SignInRequired(Exception):
    """Raised by `signed_in` without a valid session; the UI answers with the sign-in page."""

    def __init__(self, next_path: str) -> None:
        super().__init__("sign in required")
        self.next_path = next_path


@dataclass
class UiContext:
    """What the UI's routes share: settings, the database, the cookie signer, and the fab's
    model and similar-wafer index (for the novelty heatmap and similar wafers)."""

    settings: FabSettings
    sessions: async_sessionmaker[AsyncSession]
    serializer: URLSafeTimedSerializer
    classifier: Classifier
    index: SimilarityIndex

    @classmethod
    def create(
        cls,
        settings: FabSettings,
        sessions: async_sessionmaker[AsyncSession],
        classifier: Classifier | None = None,
        index: SimilarityIndex | None = None,
    ) -> UiContext:
        """The context for one server; a random signing key when none is configured."""
        if settings.ui_session_secret is None:
            logger.warning(
                "FAB_UI_SESSION_SECRET is not set: review UI sessions are signed with a random "
                "key and end when this process stops"
            )
            secret = secrets.token_urlsafe(32)
        else:
            secret = settings.ui_session_secret.get_secret_value()
        return cls(
            settings,
            sessions,
            URLSafeTimedSerializer(secret, salt="review-ui-session"),
            classifier or Classifier(settings.model_dir),
            index or SimilarityIndex(),
        )

    def read(self, request: Request) -> dict[str, Any]:
        """The session in the request's cookie; empty when absent, forged or expired."""
        raw = request.cookies.get(COOKIE)
        if not raw:
            return {}
        try:
            data = self.serializer.loads(raw, max_age=self.settings.ui_session_max_age_s)
        except BadSignature:  # also SignatureExpired
            return {}
        return data if isinstance(data, dict) else {}

    def write(self, response: Response, data: dict[str, Any]) -> None:
        """Set the session cookie on ``response``."""
        response.set_cookie(
            COOKIE,
            self.serializer.dumps(data),
            max_age=self.settings.ui_session_max_age_s,
            path=_PATH,
            httponly=True,
            samesite="strict",
            secure=self.settings.tls_cert is not None,
        )

    def clear(self, response: Response) -> None:
        """Remove the session cookie (sign-out)."""
        response.delete_cookie(
            COOKIE,
            path=_PATH,
            httponly=True,
            samesite="strict",
            secure=self.settings.tls_cert is not None,
        )

    def anonymous(self, request: Request) -> dict[str, Any]:
        """The session to keep before sign-in: the current one's CSRF token, or a new one."""
        token = self.read(request).get("csrf")
        return {"csrf": token if isinstance(token, str) else secrets.token_urlsafe(32)}

    @staticmethod
    def signed_in_as(principal: Principal) -> dict[str, Any]:
        """A fresh session for ``principal`` with a new CSRF token."""
        return {"user": principal.user, "role": principal.role, "csrf": secrets.token_urlsafe(32)}


def context(request: Request) -> UiContext:
    """The UI context the app was mounted with (see `review_ui.app.mount_ui`)."""
    ui: UiContext = request.app.state.review_ui
    return ui


def csrf_token(request: Request) -> str:
    """The session's CSRF token (set on the request by the guard or the sign-in page)."""
    token = getattr(request.state, "csrf", None)
    if token is None:
        token = context(request).read(request).get("csrf", "")
    return str(token)


def csrf_field(request: Request) -> Markup:
    """The hidden form input that carries the CSRF token (a Jinja global in every template)."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(
        CSRF_FIELD, escape(csrf_token(request))
    )


async def signed_in(request: Request) -> Principal:
    """The signed-in user of the request (FastAPI dependency).

    Raises:
        SignInRequired: no valid session, or its user was disabled since.
    """
    ui = context(request)
    data = ui.read(request)
    user, role, csrf = data.get("user"), data.get("role"), data.get("csrf")
    valid = isinstance(user, str) and role in ("engineer", "admin") and isinstance(csrf, str)
    if not valid or not await users.is_enabled(ui.sessions, user=str(user)):
        target = request.url.path if request.method == "GET" else "/ui/queue"
        if request.url.query and request.method == "GET":
            target += "?" + request.url.query
        raise SignInRequired(target)
    principal = Principal(str(user), "admin" if role == "admin" else "engineer")
    request.state.principal = principal
    request.state.csrf = csrf
    return principal


User = Annotated[Principal, Depends(signed_in)]


async def admin_only(principal: User) -> Principal:
    """The signed-in user when they are an admin (FastAPI dependency).

    Raises:
        Forbidden: an engineer (403).
    """
    if principal.role != "admin":
        raise Forbidden("this needs the admin role")
    return principal


Admin = Annotated[Principal, Depends(admin_only)]


async def form_data(request: Request) -> dict[str, str]:
    """The request's URL-encoded form (first value of each field; body read once, cached)."""
    body = await request.body()
    fields = urllib.parse.parse_qs(
        body.decode("utf-8", errors="replace"),
        keep_blank_values=True,
        max_num_fields=_MAX_FORM_FIELDS,
    )
    return {name: values[0] for name, values in fields.items()}


async def check_csrf(request: Request) -> None:
    """Refuse a POST whose CSRF token (form field or header) is not the session's (403).

    Use it on every state-changing route, after `signed_in` (or on the sign-in form alone).
    """
    expected = context(request).read(request).get("csrf")
    presented = request.headers.get(CSRF_HEADER)
    if presented is None:
        try:
            presented = (await form_data(request)).get(CSRF_FIELD)
        except ValueError:  # more fields than any form of ours has
            presented = None
    if (
        not isinstance(expected, str)
        or not presented
        or not hmac.compare_digest(presented.encode(), expected.encode())
    ):
        raise Forbidden(
            "the form has expired or did not come from this page: reload the page and retry"
        )

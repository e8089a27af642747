"""The review UI: engineers' web pages under ``/ui/``, served by the fab server's HTTP app.

`mount_ui` adds everything to the fab server's FastAPI app: the routes of `ui_router`, the
static files at ``/ui/static/`` (the UI's own CSS and JS) and the handlers that turn a missing
sign-in into the sign-in page and a refused action into a 403 page. Pages call the same
service functions as the JSON API (fab_server.services), never the database directly.

Sign-in is by the fab's users (``wafer-fab users add``), kept in a signed session cookie (see
`review_ui.session`); the API's bearer tokens are for machines and do not open the UI.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.services import users
from fab_server.services.classify import Classifier
from fab_server.services.similar import SimilarityIndex
from fab_server.settings import FabSettings
from review_ui import novelty, queue, review
from review_ui.pages import pages_router
from review_ui.session import (
    CSRF_FIELD,
    CSRF_HEADER,
    Forbidden,
    SignInRequired,
    UiContext,
    User,
    check_csrf,
    context,
    form_data,
)
from review_ui.templating import PAGE_HEADERS, render

STATIC = "/ui/static"
LOGIN_FAILED = "Sign-in failed: unknown user name or wrong password."
# One message for every failure, so the page does not tell which user names exist.


def mount_ui(
    app: FastAPI,
    settings: FabSettings,
    sessions: async_sessionmaker[AsyncSession],
    classifier: Classifier | None = None,
    index: SimilarityIndex | None = None,
) -> None:
    """Serve the review UI from ``app``: pages under ``/ui/``, static files, error pages.

    ``classifier`` and ``index`` are the API's, when it has them (one model, one index).
    """
    app.state.review_ui = UiContext.create(settings, sessions, classifier, index)
    app.include_router(ui_router())
    static = Path(__file__).parent / "static"
    app.mount(STATIC, StaticFiles(directory=static), name="review_ui_static")
    app.add_exception_handler(SignInRequired, _to_sign_in)
    app.add_exception_handler(Forbidden, _forbidden)


def ui_router() -> APIRouter:
    """Every page of the UI (sign-in, queue, wafer view, and the pages of other modules)."""
    router = APIRouter(prefix="/ui", include_in_schema=False)
    router.include_router(_auth_router())
    router.include_router(queue.router)
    router.include_router(review.router)
    router.include_router(novelty.router)
    router.include_router(pages_router())
    return router


def _auth_router() -> APIRouter:
    router = APIRouter()

    @router.get("/")
    async def home(_: User) -> RedirectResponse:
        """The queue is the start page."""
        return RedirectResponse("/ui/queue", status.HTTP_303_SEE_OTHER)

    @router.get("/login")
    async def login_page(request: Request, next: str = "/ui/queue") -> HTMLResponse:
        """The sign-in form (with a CSRF token kept in a pre-sign-in cookie)."""
        return _login_form(request, next_path=next)

    @router.post("/login", dependencies=[Depends(check_csrf)])
    async def login(request: Request) -> Response:
        """Check the user's name and password; on success start a session and go on."""
        ui = context(request)
        form = await form_data(request)
        principal = await users.authenticate(
            ui.sessions, user=form.get("user", ""), password=form.get("password", "")
        )
        next_path = _safe_next(form.get("next", ""))
        if principal is None:
            return _login_form(request, next_path=next_path, error=LOGIN_FAILED, status_code=401)
        response = RedirectResponse(next_path, status.HTTP_303_SEE_OTHER)
        ui.write(response, UiContext.signed_in_as(principal))
        return response

    @router.post("/logout", dependencies=[Depends(check_csrf)])
    async def logout(request: Request) -> RedirectResponse:
        """End the session (the cookie is removed) and show the sign-in page."""
        response = RedirectResponse("/ui/login", status.HTTP_303_SEE_OTHER)
        context(request).clear(response)
        return response

    return router


def _login_form(
    request: Request, *, next_path: str, error: str = "", status_code: int = 200
) -> HTMLResponse:
    ui = context(request)
    session = ui.anonymous(request)
    request.state.csrf = session["csrf"]
    response = render(
        request,
        "login.html",
        status_code=status_code,
        next_path=_safe_next(next_path),
        error=error,
        csrf_name=CSRF_FIELD,
    )
    ui.write(response, session)
    return response


def _safe_next(path: str) -> str:
    """``path`` when it is a page of this UI, else the queue: no redirect off the site."""
    if path.startswith("/ui/") and not path.startswith("/ui/static") and "\\" not in path:
        return path
    return "/ui/queue"


async def _to_sign_in(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    if request.headers.get(CSRF_HEADER) is not None:
        # A script's request: it cannot follow the sign-in page, so tell it plainly.
        return Response("sign in required", status.HTTP_401_UNAUTHORIZED, headers=PAGE_HEADERS)
    response = RedirectResponse(
        "/ui/login?" + urlencode({"next": exc.next_path}), status.HTTP_303_SEE_OTHER
    )
    context(request).clear(response)
    return response


async def _forbidden(request: Request, exc: Exception) -> Response:
    return render(request, "error.html", status_code=403, title="Not allowed", message=str(exc))

"""Jinja2 templates of the review UI, and `render` that fills in what every page needs.

Templates live in ``review_ui/templates`` (package data) and are autoescaped. Every page gets
``request``, ``user`` (the signed-in Principal or None), ``csrf_field()`` (the hidden input of
the session's CSRF token), ``csrf_token`` (for ``<meta>``, read by scripts), and
``class_names`` (display names by class id, wafercore.classes order).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from review_ui.session import csrf_field, csrf_token
from wafercore.classes import CLASS_NAMES

TEMPLATES = Path(__file__).parent / "templates"

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # No framing: a framed page could trick a click or keypress into a verdict.
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
"""Headers of every UI page."""

_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,  # a missing variable is a bug, not an empty string
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.globals["class_names"] = CLASS_NAMES


def environment() -> Environment:
    """The UI's Jinja2 environment (for filters or globals a page module adds)."""
    return _env


def render(request: Request, name: str, *, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    """The template ``name`` rendered with the request's user and CSRF token and ``ctx``.

    Pages are never cached: they show a live queue and carry a per-session token.
    """

    def field() -> Markup:
        return csrf_field(request)

    html = _env.get_template(name).render(
        request=request,
        user=getattr(request.state, "principal", None),
        csrf_field=field,
        csrf_token=csrf_token(request),
        **ctx,
    )
    return HTMLResponse(html, status_code=status_code, headers=PAGE_HEADERS)

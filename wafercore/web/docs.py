"""Swagger UI and ReDoc served from local files of a packaged dependency, not a CDN."""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_STATIC_PATH = "/docs/static"
"""Where Swagger UI's and ReDoc's files are served."""


def _docs_assets() -> Path:
    # fastapi-offline ships Swagger UI's and ReDoc's release files; only the files are used.
    return Path(str(files("fastapi_offline") / "static"))


_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def _content_security_policy(page: bytes) -> str:
    """Scripts from this server only, plus the page's own inline scripts, by their hashes."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page.decode())
    ]
    return "; ".join(
        [
            "default-src 'none'",
            " ".join(["script-src 'self'", *hashes]),
            # ReDoc builds its search index in a worker made from a blob of its own code.
            "worker-src 'self' blob:",
            # Both set styles from script (ReDoc through <style> elements it adds).
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "font-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = _content_security_policy(bytes(page.body))
    return page


def mount_docs(app: FastAPI) -> None:
    """Serve Swagger UI at ``/docs`` and ReDoc at ``/redoc`` from this server's own files.

    The app must be made with ``docs_url=None, redoc_url=None`` (FastAPI's pages load their
    scripts from a CDN: a fab is often offline, and third-party code would run on its address).
    The pages carry a Content-Security-Policy that lets only this server's scripts run.
    """
    app.mount(DOCS_STATIC_PATH, StaticFiles(directory=_docs_assets()), name="docs-static")
    title = app.title
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=root + openapi_url,
                title=f"{title} - Swagger UI",
                swagger_js_url=f"{root}{DOCS_STATIC_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{root}{DOCS_STATIC_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{root}{DOCS_STATIC_PATH}/favicon.png",
                oauth2_redirect_url=None,
                swagger_ui_parameters=app.swagger_ui_parameters,
            )
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return _with_policy(
            get_redoc_html(
                openapi_url=root + openapi_url,
                title=f"{title} - ReDoc",
                redoc_js_url=f"{root}{DOCS_STATIC_PATH}/redoc.standalone.js",
                redoc_favicon_url=f"{root}{DOCS_STATIC_PATH}/favicon.png",
                with_google_fonts=False,
            )
        )

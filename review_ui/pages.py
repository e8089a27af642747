"""The pages beyond the queue and the wafer view: lots, alerts, models and nodes, audit.

`pages_router` is included by `review_ui.app.ui_router` under ``/ui``.
"""

from __future__ import annotations

from fastapi import APIRouter

from review_ui import alerts, audit, lots, models


def pages_router() -> APIRouter:
    """The lots, alerts, models & nodes and audit pages (paths relative to ``/ui``)."""
    router = APIRouter()
    for module in (lots, alerts, models, audit):
        router.include_router(module.router)
    return router

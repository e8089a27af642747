"""``/analytics/drift``: the drift report (JSON) and its plot (PNG); ``/analytics/drift/compute``
computes one now.

Viewers read the newest report (beat computes one every ``drift.every_s``, weekly) and its
plot; an ml-engineer may compute one now, which starts a retraining job where PSI says so.
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route signatures,
# which name the role dependencies defined inside the router factory.
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response, status
from pydantic import BaseModel

from cloud.api.auth import Principal, TokenAuth
from cloud.api.resources import Resources
from cloud.services import drift
from cloud.storage.drift_reports import StoredDriftReport
from wafercore.web import error_responses


class DriftReportOut(BaseModel):
    """A stored drift report and the retraining jobs it started."""

    id: int
    computed_at: datetime
    report: dict[str, Any]
    job_ids: list[str]


def _out(stored: StoredDriftReport) -> DriftReportOut:
    return DriftReportOut(
        id=stored.id,
        computed_at=stored.computed_at,
        report=stored.report,
        job_ids=list(stored.job_ids),
    )


def analytics_router(resources: Resources, auth: TokenAuth) -> APIRouter:
    """The analytics routes, on the resources of the running app."""
    router = APIRouter(
        prefix="/analytics", tags=["analytics"], responses=error_responses((401, 403, 503))
    )
    Viewer = Annotated[Principal, Depends(auth.require("viewer"))]  # noqa: N806
    Engineer = Annotated[Principal, Depends(auth.require("ml-engineer"))]  # noqa: N806

    @router.get("/drift", response_model=DriftReportOut, responses=error_responses((404,)))
    def latest(_: Viewer) -> DriftReportOut:
        """The newest drift report: PSI per fab and node with its band, halting-steps trends,
        KS on novelty scores (when reported), reviewed accuracy per class, retraining started.
        404 before the first report (`POST /analytics/drift/compute` computes one)."""
        return _out(drift.latest(resources.database()))

    @router.get(
        "/drift.png",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "Each signal per fab per day."},
            **error_responses((404,)),
        },
    )
    def plot(_: Viewer) -> Response:
        """PSI (with its bands), average halting steps and reviewed accuracy per fab per day."""
        png = drift.plot(
            resources.database(),
            resources.model_registry(),
            resources.settings,
            now=datetime.now(UTC),
        )
        return Response(png, media_type="image/png")

    @router.post(
        "/drift/compute",
        status_code=status.HTTP_201_CREATED,
        response_model=DriftReportOut,
        responses=error_responses((404,)),
    )
    def compute(caller: Engineer) -> DriftReportOut:
        """Compute a drift report now (a fab over the PSI threshold starts retraining)."""
        stored = drift.compute(
            resources.database(),
            resources.model_registry(),
            resources.job_dispatcher(),
            resources.settings,
            now=datetime.now(UTC),
            requested_by=caller.user,
        )
        return _out(stored)

    return router

"""``/api/alerts``: list alerts (engineers) and acknowledge one (admins)."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.api.auth import Principal, TokenAuth
from fab_server.api.schemas import AlertOut
from fab_server.services.alerts import MAX_LIST_LIMIT, acknowledge_alert, list_alerts
from wafercore.web import error_responses

# Alert ids are BIGINT: a larger id is a 422 here rather than a database error.
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def alerts_router(sessions: async_sessionmaker[AsyncSession], auth: TokenAuth) -> APIRouter:
    """The alert routes: acknowledging is an admin's (shift lead's) decision."""
    router = APIRouter(
        prefix="/api/alerts", tags=["alerts"], responses=error_responses((401, 422, 503))
    )
    Engineer = Annotated[Principal, Depends(auth.require("engineer"))]  # noqa: N806
    Admin = Annotated[Principal, Depends(auth.require("admin"))]  # noqa: N806

    @router.get("", response_model=list[AlertOut])
    async def get_alerts(
        _: Engineer,
        state: Literal["active", "acknowledged", "resolved"] | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 100,
    ) -> list[AlertOut]:
        """Stored alerts, newest first, optionally in one state."""
        alerts = await list_alerts(
            sessions, state=domain.AlertState(state) if state else None, limit=limit
        )
        return [AlertOut.from_domain(a) for a in alerts]

    @router.post("/{alert_id}/ack", response_model=AlertOut, responses=error_responses((403, 404)))
    async def ack(caller: Admin, alert_id: AlertId) -> AlertOut:
        """Acknowledge an alert: it stays listed, as acknowledged, until its condition clears."""
        alert = await acknowledge_alert(sessions, alert_id=alert_id, user=caller.user)
        return AlertOut.from_domain(alert)

    return router

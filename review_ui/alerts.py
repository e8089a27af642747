"""``/ui/alerts``: open alerts (active, then acknowledged), acknowledging (admins) and history.

Acknowledging is the shift lead's decision, as in the API (``POST /api/alerts/{id}/ack`` needs
an admin token): engineers see no button, and their POST is refused with 403.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fab_server import domain
from fab_server.errors import NotFound
from fab_server.services import alerts
from review_ui.session import Admin, User, check_csrf, context
from review_ui.templating import render

router = APIRouter()

OPEN_SHOWN = 500
HISTORY_SHOWN = 200
# Alert ids are BIGINT: anything larger is no alert of ours (422, not a database error).
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1)]

_NOTICES = {"acked": "Alert acknowledged.", "gone": "That alert no longer exists."}


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(request: Request, user: User) -> HTMLResponse:
    """Open alerts, most severe and newest first, then the resolved ones (history)."""
    sessions = context(request).sessions
    active = await alerts.list_alerts(sessions, state=domain.AlertState.ACTIVE, limit=OPEN_SHOWN)
    acked = await alerts.list_alerts(
        sessions, state=domain.AlertState.ACKNOWLEDGED, limit=OPEN_SHOWN
    )
    history = await alerts.list_alerts(
        sessions, state=domain.AlertState.RESOLVED, limit=HISTORY_SHOWN
    )
    # Critical before warning; within a severity the list stays newest first (stable sort).
    open_alerts = sorted(
        active + acked, key=lambda a: a.severity is not domain.AlertSeverity.CRITICAL
    )
    return render(
        request,
        "alerts.html",
        open_alerts=open_alerts,
        active_count=len(active),
        history=history,
        can_ack=user.role == "admin",
        notice=_NOTICES.get(request.query_params.get("notice", ""), ""),
        history_shown=HISTORY_SHOWN,
    )


@router.post("/alerts/{alert_id}/ack", dependencies=[Depends(check_csrf)])
async def acknowledge(request: Request, alert_id: AlertId, admin: Admin) -> Response:
    """Acknowledge an alert as the signed-in admin, then show the alerts again."""
    try:
        await alerts.acknowledge_alert(
            context(request).sessions, alert_id=alert_id, user=admin.user
        )
    except NotFound:
        return RedirectResponse("/ui/alerts?notice=gone", status.HTTP_303_SEE_OTHER)
    return RedirectResponse("/ui/alerts?notice=acked", status.HTTP_303_SEE_OTHER)

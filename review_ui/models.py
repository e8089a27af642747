"""``/ui/models``: the models and nodes page (``/ui/nodes`` leads there too).

Per edge node: the installed (and kept previous) model version, its newest metrics push with
throughput, p99 latency and review rate, and the version assigned to it (its own or the
fab-wide default). Rollout status comes from the cloud tier, which does not report it yet.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse

from fab_server.services import fleet
from review_ui.session import User, context
from review_ui.templating import render

router = APIRouter()

ROLLOUT_STATUS = "cloud rollout: not available yet"
"""What the rollout column says until the cloud tier reports rollouts (issue 13)."""

_STAGES = {0: "", 1: "canary", 2: "production"}  # the contract's RolloutStage


@router.get("/models", response_class=HTMLResponse)
async def models_page(request: Request, _: User) -> HTMLResponse:
    """Every edge node with its versions, newest metrics and model assignment."""
    overview = await fleet.fleet_overview(context(request).sessions)
    return render(
        request,
        "models.html",
        nodes=overview.nodes,
        default=overview.default,
        rollout_status=ROLLOUT_STATUS,
        stages=_STAGES,
    )


@router.get("/nodes")
async def nodes_page(_: User) -> RedirectResponse:
    """The page's other name."""
    return RedirectResponse("/ui/models", status.HTTP_303_SEE_OTHER)

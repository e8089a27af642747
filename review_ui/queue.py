"""``/ui/queue``: the open review items, least confident (and most novel) first.

The order is the review service's priority, ``min(confidence, 1 - novelty)`` ascending, so the
item the model was least sure of, or that looked least like anything it was trained on, is at
the top. Filters are GET parameters (see `review_ui.filters`); the counts are the whole queue's
(open, claimed) and the claims list shows who holds what and until when.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from fab_server import domain
from fab_server.services import review
from review_ui.filters import REASON_LABELS, REASONS, QueueFilters
from review_ui.session import User, context
from review_ui.templating import render

router = APIRouter()

PAGE_SIZE = 100
"""Open items listed (the top of the queue; the counts say how many there are in all)."""
CLAIMS_SHOWN = 200


@router.get("/queue", response_class=HTMLResponse)
async def queue_page(request: Request, user: User) -> HTMLResponse:
    """The open items matching the filters, the claims held, and the queue's counts."""
    ui = context(request)
    filters = QueueFilters.from_request(request)
    wanted = filters.to_domain()
    items = await review.list_queue(ui.sessions, filters=wanted, limit=PAGE_SIZE)
    claims = await review.list_queue(
        ui.sessions, state=domain.ReviewState.CLAIMED, filters=wanted, limit=CLAIMS_SHOWN
    )
    depth = await review.queue_depth(ui.sessions)
    return render(
        request,
        "queue.html",
        items=items,
        claims=claims,
        mine=[c for c in claims if c.claimed_by == user.user],
        open_count=depth.get(domain.ReviewState.OPEN, 0),
        claimed_count=depth.get(domain.ReviewState.CLAIMED, 0),
        filters=filters,
        reasons=REASONS,
        reason_labels=REASON_LABELS,
        notice=_notice(request.query_params.get("notice", "")),
        page_size=PAGE_SIZE,
    )


_NOTICES = {
    "done": "No more items to review in this queue. Well done.",
    "taken": "That item was taken by another engineer meanwhile.",
}


def _notice(key: str) -> str:
    return _NOTICES.get(key, "")

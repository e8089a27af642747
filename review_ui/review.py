"""``/ui/review/{item}``: one wafer to judge, worked with the keyboard.

Opening an item claims it for the signed-in engineer (the review service's lease); an item
someone else holds is shown with who holds it and cannot be judged. Every action is a POST
form with the session's CSRF token, so the page works without JavaScript; ``static/review.js``
only maps keys to those forms (1-9 relabel to that class, Enter confirms, U unusable, J/K
next/previous, ? the key list).

After a verdict, and on J/K, the server answers with a redirect to the next item in queue
order after this one (the queue's filters kept in the URL), wrapping round to the top; with
none left it goes back to the queue. J/K give the current claim back first, so a skipped
wafer is not locked away from colleagues for the lease's length.
"""

from __future__ import annotations

import contextlib
import uuid

from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from fab_server import domain
from fab_server.errors import Conflict, InvalidArgument, NotFound
from fab_server.services import review
from review_ui.filters import REASON_LABELS, QueueFilters
from review_ui.session import User, check_csrf, context, form_data
from review_ui.templating import render
from review_ui.wafer_view import WaferView, lot_thumbnails_of, wafer_view

router = APIRouter()

_VERDICTS = {
    "confirm": domain.ReviewOutcome.CONFIRMED,
    "relabel": domain.ReviewOutcome.RELABELLED,
    "unusable": domain.ReviewOutcome.UNUSABLE,
}


@router.get("/review/{item_id}", response_class=HTMLResponse)
async def review_page(request: Request, item_id: str, user: User) -> Response:
    """The wafer of a review item, claimed for the engineer when nobody else holds it."""
    ui = context(request)
    found = await _load(request, item_id)
    if isinstance(found, Response):
        return found
    item, result = found
    problem = ""
    if item.state is not domain.ReviewState.RESOLVED and item.claimed_by in (None, user.user):
        try:
            item = await review.claim_item(
                ui.sessions, item_id=item.id, user=user.user, settings=ui.settings
            )
        except Conflict as exc:  # someone claimed it between our read and our claim
            problem = str(exc)
            item, result = await review.get_item(ui.sessions, item_id=item.id)
    return await _show(request, item, result, user.user, problem=problem)


@router.get("/review/{item_id}/lot", response_class=HTMLResponse)
async def lot_thumbnails(request: Request, item_id: str, _: User) -> Response:
    """The other wafers of the item's lot, drawn small: a fragment the wafer view loads after
    it is shown, so a verdict's next page does not wait for the whole lot."""
    found = await _load(request, item_id)
    if isinstance(found, Response):
        return found
    item, _result = found
    thumbnails = await lot_thumbnails_of(context(request).sessions, item)
    return render(request, "lot_thumbnails.html", item=item, thumbnails=thumbnails)


@router.post("/review/{item_id}/verdict", dependencies=[Depends(check_csrf)])
async def verdict(request: Request, item_id: str, user: User) -> Response:
    """Resolve the item (confirm, relabel to a class, unusable), then open the next one."""
    ui = context(request)
    found = await _load(request, item_id)
    if isinstance(found, Response):
        return found
    item, _ = found
    try:
        resolution = _resolution((await form_data(request)).get("choice", ""), item)
        resolved = await review.resolve(
            ui.sessions, item_id=item.id, resolution=resolution, user=user.user
        )
    except (Conflict, InvalidArgument) as exc:
        code = 409 if isinstance(exc, Conflict) else 422
        current, result = await review.get_item(ui.sessions, item_id=item.id)
        return await _show(request, current, result, user.user, problem=str(exc), status_code=code)
    return await _go_next(request, resolved, user.user, forward=True)


@router.post("/review/{item_id}/move", dependencies=[Depends(check_csrf)])
async def move(request: Request, item_id: str, user: User) -> Response:
    """Give this item back to the queue and open the next (J) or previous (K) one."""
    ui = context(request)
    found = await _load(request, item_id)
    if isinstance(found, Response):
        return found
    item, _ = found
    if item.state is domain.ReviewState.CLAIMED and item.claimed_by == user.user:
        # Resolved or taken meanwhile: moving on is still what was asked.
        with contextlib.suppress(Conflict):
            await review.release(ui.sessions, item_id=item.id, user=user.user)
    forward = (await form_data(request)).get("dir", "next") != "prev"
    return await _go_next(request, item, user.user, forward=forward)


def _resolution(choice: str, item: domain.ReviewItem) -> domain.Resolution:
    """The verdict of a form's ``choice``: ``confirm``, ``unusable`` or ``relabel:<class>``."""
    action, _, label = choice.partition(":")
    outcome = _VERDICTS.get(action)
    if outcome is None:
        raise InvalidArgument("choice", f"unknown action {action!r}")
    if outcome is not domain.ReviewOutcome.RELABELLED:
        return domain.Resolution(outcome=outcome)
    if not label.isdigit():
        raise InvalidArgument("choice", "relabel needs a class id")
    if int(label) == item.predicted_class:
        # The key of the predicted class means "yes, that": a confirmation.
        return domain.Resolution(outcome=domain.ReviewOutcome.CONFIRMED)
    return domain.Resolution(outcome=outcome, true_label=int(label))


async def _go_next(
    request: Request, item: domain.ReviewItem, user: str, *, forward: bool
) -> RedirectResponse:
    filters = QueueFilters.from_request(request)
    following = await review.adjacent(
        context(request).sessions,
        item=item,
        user=user,
        forward=forward,
        filters=filters.to_domain(),
        wrap=True,
    )
    if following is None:
        query = filters.query()
        target = f"/ui/queue{query}{'&' if query else '?'}notice=done"
    else:
        target = f"/ui/review/{following.id}{filters.query()}"
    return RedirectResponse(target, status.HTTP_303_SEE_OTHER)


async def _load(
    request: Request, item_id: str
) -> tuple[domain.ReviewItem, domain.Result | None] | Response:
    """The item and its result, or the 404 page."""
    try:
        canonical = str(uuid.UUID(item_id))
        return await review.get_item(context(request).sessions, item_id=canonical)
    except (ValueError, NotFound):
        return render(
            request,
            "error.html",
            status_code=404,
            title="No such review item",
            message=f"There is no review item {item_id!r}.",
        )


async def _show(
    request: Request,
    item: domain.ReviewItem,
    result: domain.Result | None,
    user: str,
    *,
    problem: str = "",
    status_code: int = 200,
) -> Response:
    """Render the wafer view of ``item`` as it is now."""
    view: WaferView = wafer_view(item, result)
    held_elsewhere = item.state is domain.ReviewState.CLAIMED and item.claimed_by != user
    if held_elsewhere and not problem:
        problem = f"This wafer is being reviewed by {item.claimed_by}; it cannot be taken."
    return render(
        request,
        "review.html",
        status_code=409 if held_elsewhere and status_code == 200 else status_code,
        item=item,
        view=view,
        problem=problem,
        can_judge=item.state is domain.ReviewState.CLAIMED and item.claimed_by == user,
        filters=QueueFilters.from_request(request),
        reason_label=REASON_LABELS.get(item.reason, "?"),
    )

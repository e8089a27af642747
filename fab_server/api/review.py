"""``/api/review/*``: the review queue over HTTP, for the review UI and engineers' scripts.

Engineers list, claim, release and resolve; what they claim is theirs until the lease lapses.
The ``/api/review/admin/*`` routes need the admin role: they release or resolve an item
whoever holds it (a supervisor clearing a colleague's abandoned claim).
"""

# No ``from __future__ import annotations``: FastAPI must evaluate the route signatures,
# which name the role dependencies defined inside the router factory.
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Query, Response, status
from pydantic import AfterValidator, BeforeValidator
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.api.auth import Principal, TokenAuth
from fab_server.api.schemas import (
    ClaimRequest,
    FlagRequest,
    ReasonName,
    ResolveRequest,
    ResultOut,
    ReviewDetailOut,
    ReviewedAccuracyOut,
    ReviewItemOut,
    StateName,
    reason_from_name,
)
from fab_server.services import review
from fab_server.services.review_rules import MAX_LIST_LIMIT
from fab_server.settings import FabSettings
from wafercore.validation import MAX_ID_CHARS, valid_id, valid_time
from wafercore.web import error_responses

IdQuery = Annotated[
    str | None, Query(min_length=1, max_length=MAX_ID_CHARS), AfterValidator(valid_id)
]
# ISO 8601 with a zone only: a bare number is not read as a Unix time.
TimeQuery = Annotated[datetime | None, Query(), BeforeValidator(valid_time)]
Limit = Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)]
# Error statuses beyond every route's 401, 422 and 503: of a route with a body (late, too
# large); of a route on one item (none such, or in a state that does not allow it).
_BODY = (408, 413)
_ITEM = (404, 409)


def review_router(
    settings: FabSettings, sessions: async_sessionmaker[AsyncSession], auth: TokenAuth
) -> APIRouter:
    """The review routes, bound to one database and token table."""
    router = APIRouter(
        prefix="/api/review", tags=["review"], responses=error_responses((401, 422, 503))
    )
    Engineer = Annotated[Principal, Depends(auth.require("engineer"))]  # noqa: N806
    Admin = Annotated[Principal, Depends(auth.require("admin"))]  # noqa: N806

    @router.get("/items", response_model=list[ReviewItemOut])
    async def list_items(
        _: Engineer,
        state: StateName = "open",
        reason: ReasonName | None = None,
        node_id: IdQuery = None,
        lot_id: IdQuery = None,
        model_version: IdQuery = None,
        claimed_by: IdQuery = None,
        limit: Limit = 50,
    ) -> list[ReviewItemOut]:
        """The queue in ``state``: open and claimed items most uncertain first."""
        filters = domain.ReviewFilter(
            reason=reason_from_name(reason) if reason else None,
            node_id=node_id,
            lot_id=lot_id,
            model_version=model_version,
            claimed_by=claimed_by,
        )
        items = await review.list_queue(
            sessions, state=domain.ReviewState(state), filters=filters, limit=limit
        )
        return [ReviewItemOut.from_domain(item) for item in items]

    @router.post(
        "/claim",
        response_model=ReviewItemOut,
        responses={204: {"description": "Nothing to claim."}, **error_responses((*_BODY, 409))},
    )
    async def claim_next(
        caller: Engineer, body: Annotated[ClaimRequest | None, Body()] = None
    ) -> ReviewItemOut | Response:
        """Claim the most uncertain open item (matching the optional filters)."""
        wanted = body or ClaimRequest()
        filters = domain.ReviewFilter(
            reason=reason_from_name(wanted.reason) if wanted.reason else None,
            node_id=wanted.node_id,
            lot_id=wanted.lot_id,
            model_version=wanted.model_version,
        )
        item = await review.claim_next(
            sessions, user=caller.user, settings=settings, filters=filters
        )
        if item is None:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        return ReviewItemOut.from_domain(item)

    @router.post("/flag", response_model=ReviewItemOut, responses=error_responses((*_BODY, 409)))
    async def flag(caller: Engineer, body: FlagRequest) -> ReviewItemOut:
        """Put a classification on the queue; the same idempotency key returns the same item."""
        item = await review.flag_for_review(
            sessions, request=body.to_domain(requested_by=caller.user), settings=settings
        )
        return ReviewItemOut.from_domain(item)

    @router.get(
        "/items/{item_id}", response_model=ReviewDetailOut, responses=error_responses((404,))
    )
    async def get_item(_: Engineer, item_id: uuid.UUID) -> ReviewDetailOut:
        """One item with its result: probabilities per class and the raw map when stored."""
        item, result = await review.get_item(sessions, item_id=str(item_id))
        return ReviewDetailOut(
            item=ReviewItemOut.from_domain(item),
            result=ResultOut.from_domain(result) if result else None,
        )

    @router.post(
        "/items/{item_id}/claim", response_model=ReviewItemOut, responses=error_responses(_ITEM)
    )
    async def claim_item(caller: Engineer, item_id: uuid.UUID) -> ReviewItemOut:
        """Claim this item, or renew the caller's lease on it."""
        item = await review.claim_item(
            sessions, item_id=str(item_id), user=caller.user, settings=settings
        )
        return ReviewItemOut.from_domain(item)

    @router.post(
        "/items/{item_id}/release", response_model=ReviewItemOut, responses=error_responses(_ITEM)
    )
    async def release(caller: Engineer, item_id: uuid.UUID) -> ReviewItemOut:
        """Give the caller's claim back to the queue."""
        item = await review.release(sessions, item_id=str(item_id), user=caller.user)
        return ReviewItemOut.from_domain(item)

    @router.post(
        "/items/{item_id}/resolve",
        response_model=ReviewItemOut,
        responses=error_responses((*_ITEM, *_BODY)),
    )
    async def resolve(caller: Engineer, item_id: uuid.UUID, body: ResolveRequest) -> ReviewItemOut:
        """Record the caller's verdict on an item they hold."""
        item = await review.resolve(
            sessions, item_id=str(item_id), resolution=body.to_domain(), user=caller.user
        )
        return ReviewItemOut.from_domain(item)

    @router.post(
        "/admin/items/{item_id}/release",
        response_model=ReviewItemOut,
        responses=error_responses((403, *_ITEM)),
    )
    async def admin_release(caller: Admin, item_id: uuid.UUID) -> ReviewItemOut:
        """Release an item whoever holds it (admin)."""
        item = await review.release(sessions, item_id=str(item_id), user=caller.user, override=True)
        return ReviewItemOut.from_domain(item)

    @router.post(
        "/admin/items/{item_id}/resolve",
        response_model=ReviewItemOut,
        responses=error_responses((403, *_ITEM, *_BODY)),
    )
    async def admin_resolve(
        caller: Admin, item_id: uuid.UUID, body: ResolveRequest
    ) -> ReviewItemOut:
        """Resolve an item whoever holds it, or nobody (admin); the admin is the reviewer."""
        item = await review.resolve(
            sessions,
            item_id=str(item_id),
            resolution=body.to_domain(),
            user=caller.user,
            override=True,
        )
        return ReviewItemOut.from_domain(item)

    @router.get("/history", response_model=list[ReviewItemOut])
    async def history(
        _: Engineer,
        resolved_by: IdQuery = None,
        node_id: IdQuery = None,
        wafer_id: IdQuery = None,
        model_version: IdQuery = None,
        since: TimeQuery = None,
        limit: Limit = 50,
    ) -> list[ReviewItemOut]:
        """Resolved items, newest first."""
        items = await review.history(
            sessions,
            resolved_by=resolved_by,
            node_id=node_id,
            wafer_id=wafer_id,
            model_version=model_version,
            since=since,
            limit=limit,
        )
        return [ReviewItemOut.from_domain(item) for item in items]

    @router.get("/stats", response_model=list[ReviewedAccuracyOut])
    async def stats(
        _: Engineer,
        model_version: IdQuery = None,
        since: TimeQuery = None,
        until: TimeQuery = None,
    ) -> list[ReviewedAccuracyOut]:
        """Reviewed accuracy per model version and predicted class over ``[since, until)``."""
        figures = await review.reviewed_accuracy(
            sessions, model_version=model_version, since=since, until=until
        )
        return [ReviewedAccuracyOut.from_domain(f) for f in figures]

    return router

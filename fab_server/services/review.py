"""The review queue: which wafers engineers review, in which order, and who may do what.

State machine: ``open -> claimed -> resolved``. A claim is a lease of
``settings.review_lease_seconds``; when it lapses the item is open again. Claiming, listing and
the queue depth all treat ``claimed`` with ``lease_expires_at < now`` as open, so no sweeper
has to run. The claimant whose lease lapsed may still resolve or release the item as long as
nobody else has claimed it since; once someone has, the late resolution is a Conflict. Only the
claimant resolves or releases; ``override=True`` (the API grants it to admins only) lets a
supervisor resolve or release any unresolved item.

Priority (ascending: reviewed first) measures how unsure the model was:
``min(confidence, 1 - clamp(novelty, 0, 1))``, so low confidence and high novelty both come
first; an item without a prediction (a manual flag whose result has not arrived) gets 0 and
comes before everything, and gets its prediction and priority when the result is ingested.

Every resolution writes a ``labels`` row with who, when, the verdict and the model's
prediction: the ground truth of :func:`reviewed_accuracy`, the alerts and retraining.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import Conflict, InvalidArgument, NotFound
from fab_server.repository import review as repo
from fab_server.services import review_rules as rules
from fab_server.settings import FabSettings

# SQLite only: claimers that lose the guarded UPDATE to another writer try the next item.
# Every loss is another claimer's success, so this bounds only pathological contention (8 was
# exhausted by 8 claimers on a loaded 2-core machine).
_CLAIM_ATTEMPTS = 64
_ALL = domain.ReviewFilter()

Sessions = async_sessionmaker[AsyncSession]


async def enqueue_from_results(
    session: AsyncSession,
    *,
    results: Sequence[domain.Result],
    settings: FabSettings,
    now: datetime,
) -> int:
    """Queue the newly stored results that need review, inside the caller's transaction.

    Called by ingest before it commits (this never commits). A result is queued when it is
    flagged, its confidence is below ``review_confidence_threshold``, its novelty is at least
    ``review_novelty_threshold`` or it is a canary sample; its key is ``auto:{node}:{sequence}``,
    so a re-delivered result is never queued twice. Items flagged before their result arrived
    get its prediction now, and the result is not queued a second time.

    Returns:
        How many items were added to the queue.
    """
    now = rules.now_utc(now)
    by_node: dict[str, list[domain.Result]] = defaultdict(list)
    for result in results:
        by_node[result.node_id].append(result)
    new_items: list[domain.ReviewItem] = []
    for node_id, node_results in by_node.items():
        sequences = [r.sequence for r in node_results]
        existing: dict[int, list[domain.ReviewItem]] = defaultdict(list)
        for item in await repo.items_for_sequences(
            session, node_id=node_id, first_sequence=min(sequences), last_sequence=max(sequences)
        ):
            existing[item.sequence].append(item)
        for result in node_results:
            queued = existing.get(result.sequence, [])
            for item in queued:
                if item.model_version is None and item.state is not domain.ReviewState.RESOLVED:
                    priority = rules.review_priority(result.confidence, result.novelty)
                    await repo.set_prediction(
                        session, item_id=item.id, result=result, priority=priority
                    )
            reason = rules.auto_reason(result, settings)
            if reason is None or queued:
                continue
            new_items.append(
                rules.new_item(
                    key=f"{rules.AUTO_KEY_PREFIX}{node_id}:{result.sequence}",
                    node_id=node_id,
                    sequence=result.sequence,
                    wafer_id=result.wafer_id,
                    reason=reason,
                    result=result,
                    now=now,
                    requested_by=node_id,
                )
            )
    return await repo.insert_items(session, items=new_items)


async def flag_for_review(
    sessions: Sessions,
    *,
    request: domain.FlagRequest,
    settings: FabSettings,
    now: datetime | None = None,
) -> domain.ReviewItem:
    """Put a wafer on the queue on request; the same idempotency key returns the same ticket.

    The result (node_id, sequence) may not be stored yet (a station flags before its outbox is
    delivered): the item is then created without prediction (priority 0) and completed when
    the result arrives. A reason of UNSPECIFIED means MANUAL.

    Raises:
        InvalidArgument: an empty or oversized field, a reserved key, or a wafer_id that differs
            from the stored result's.
        Conflict: the key was already used for another wafer.
    """
    del settings  # part of the shared signature; flags are queued whatever the thresholds
    now = rules.now_utc(now)
    rules.validate_flag(request)
    reason = request.reason
    if reason is domain.ReviewReason.UNSPECIFIED:
        reason = domain.ReviewReason.MANUAL
    async with sessions.begin() as session:
        stored = await repo.get_item_by_key(session, idempotency_key=request.idempotency_key)
        if stored is None:
            result = await repo.load_result(
                session, node_id=request.node_id, sequence=request.sequence, with_map=False
            )
            if result is not None and result.wafer_id != request.wafer_id:
                raise InvalidArgument(
                    "wafer_id",
                    f"result ({request.node_id}, {request.sequence}) is wafer "
                    f"{result.wafer_id!r}, not {request.wafer_id!r}",
                )
            item = rules.new_item(
                key=request.idempotency_key,
                node_id=request.node_id,
                sequence=request.sequence,
                wafer_id=request.wafer_id,
                reason=reason,
                result=result,
                now=now,
                comment=request.comment,
                requested_by=request.requested_by,
            )
            # A concurrent flag with the same key may win the insert: read back whichever did.
            await repo.insert_items(session, items=[item])
            stored = await repo.get_item_by_key(session, idempotency_key=request.idempotency_key)
            assert stored is not None
    return rules.effective(rules.same_wafer(stored, request), now)


async def _locked_item(session: AsyncSession, item_id: str) -> domain.ReviewItem:
    item = await repo.get_item(session, item_id=item_id, for_update=True)
    if item is None:
        raise NotFound(f"review item {item_id}")
    return item


def _changed(item_id: str) -> Conflict:
    return Conflict(f"review item {item_id} changed meanwhile; reload it and retry")


async def get_item(
    sessions: Sessions, *, item_id: str, now: datetime | None = None
) -> tuple[domain.ReviewItem, domain.Result | None]:
    """A review item with its stored result (probabilities and raw map, when stored).

    Raises:
        NotFound: no such item.
    """
    now = rules.now_utc(now)
    async with sessions() as session:
        item = await repo.get_item(session, item_id=item_id)
        if item is None:
            raise NotFound(f"review item {item_id}")
        result = await repo.load_result(
            session, node_id=item.node_id, sequence=item.sequence, with_map=True
        )
    return rules.effective(item, now), result


async def list_queue(
    sessions: Sessions,
    *,
    state: domain.ReviewState = domain.ReviewState.OPEN,
    filters: domain.ReviewFilter = _ALL,
    limit: int = 50,
    now: datetime | None = None,
) -> list[domain.ReviewItem]:
    """Items in ``state`` (effective at ``now``): open/claimed by priority, resolved newest first.

    Raises:
        InvalidArgument: ``limit`` outside 1..500.
    """
    rules.check_limit(limit)
    now = rules.now_utc(now)
    async with sessions() as session:
        items = await repo.list_items(session, state=state, filters=filters, now=now, limit=limit)
    return [rules.effective(item, now) for item in items]


async def claim_next(
    sessions: Sessions,
    *,
    user: str,
    settings: FabSettings,
    filters: domain.ReviewFilter = _ALL,
    now: datetime | None = None,
) -> domain.ReviewItem | None:
    """Claim the most urgent claimable item matching ``filters``; None when there is none.

    Concurrent claimers never get the same item (PostgreSQL: ``FOR UPDATE SKIP LOCKED``;
    SQLite: a guarded UPDATE, retried on the next item when another writer won).

    Raises:
        Conflict: SQLite only, every attempt lost to other claimers.
    """
    now = rules.now_utc(now)
    lease = now + timedelta(seconds=settings.review_lease_seconds)
    lost: list[str] = []
    for _ in range(_CLAIM_ATTEMPTS):
        async with sessions.begin() as session:
            item = await repo.next_claimable(session, filters=filters, now=now, exclude=lost)
            if item is None:
                return None
            claimed = await repo.claim(session, expected=item, user=user, lease_expires_at=lease)
        if claimed is not None:
            return claimed
        lost.append(item.id)
    raise Conflict("the review queue is busy; retry the claim")


async def claim_item(
    sessions: Sessions,
    *,
    item_id: str,
    user: str,
    settings: FabSettings,
    now: datetime | None = None,
) -> domain.ReviewItem:
    """Claim one item, or renew the lease when ``user`` already holds it.

    Raises:
        NotFound: no such item.
        Conflict: it is resolved, or someone else holds a valid lease on it.
    """
    now = rules.now_utc(now)
    async with sessions.begin() as session:
        item = await _locked_item(session, item_id)
        current = rules.effective(item, now)
        if current.state is domain.ReviewState.RESOLVED:
            raise Conflict(f"review item {item_id} is already resolved")
        if current.state is domain.ReviewState.CLAIMED and current.claimed_by != user:
            raise Conflict(
                f"review item {item_id} is claimed by {current.claimed_by} until "
                f"{current.lease_expires_at:%Y-%m-%dT%H:%M:%SZ}"
            )
        lease = now + timedelta(seconds=settings.review_lease_seconds)
        claimed = await repo.claim(session, expected=item, user=user, lease_expires_at=lease)
    if claimed is None:
        raise _changed(item_id)
    return claimed


async def adjacent(
    sessions: Sessions,
    *,
    item: domain.ReviewItem,
    user: str,
    forward: bool = True,
    filters: domain.ReviewFilter = _ALL,
    wrap: bool = False,
    now: datetime | None = None,
) -> domain.ReviewItem | None:
    """The next (or previous) item in queue order after ``item`` that ``user`` may open.

    For a reviewer moving through the queue (the review UI's J/K and the item after a
    verdict): candidates are claimable or already held by ``user``, ``item`` excluded. With
    ``wrap`` the search starts over from the other end when nothing follows ``item``. Nothing
    is claimed here.
    """
    now = rules.now_utc(now)
    async with sessions() as session:
        found = await repo.adjacent_item(
            session, item=item, forward=forward, user=user, filters=filters, now=now
        )
        if found is None and wrap:
            edge = dataclasses.replace(item, priority=math.inf if not forward else -math.inf, id="")
            found = await repo.adjacent_item(
                session, item=edge, forward=forward, user=user, filters=filters, now=now
            )
    if found is not None and found.id == item.id:
        return None
    return rules.effective(found, now) if found else None


async def release(
    sessions: Sessions,
    *,
    item_id: str,
    user: str,
    override: bool = False,
    now: datetime | None = None,
) -> domain.ReviewItem:
    """Give a claimed item back to the queue (a no-op on an item that is already open).

    Raises:
        NotFound: no such item.
        Conflict: it is resolved, or someone else holds it and ``override`` is not set.
    """
    now = rules.now_utc(now)
    async with sessions.begin() as session:
        item = await _locked_item(session, item_id)
        if item.state is domain.ReviewState.RESOLVED:
            raise Conflict(f"review item {item_id} is already resolved")
        if item.state is domain.ReviewState.OPEN:
            return item
        lapsed = rules.effective(item, now).state is domain.ReviewState.OPEN
        if item.claimed_by != user and not override:
            if lapsed:
                return rules.effective(item, now)
            raise Conflict(
                f"review item {item_id} is claimed by {item.claimed_by}; only they or an "
                "admin can release it"
            )
        released = await repo.release(session, expected=item)
    if released is None:
        raise _changed(item_id)
    return released


async def resolve(
    sessions: Sessions,
    *,
    item_id: str,
    resolution: domain.Resolution,
    user: str,
    override: bool = False,
    now: datetime | None = None,
) -> domain.ReviewItem:
    """Record an engineer's verdict on an item they hold (``override``: any unresolved item).

    Repeating the same verdict by the same user returns the resolved item (a safe retry).

    Raises:
        NotFound: no such item.
        InvalidArgument: the label does not fit the outcome (relabelled needs a class other
            than the prediction, confirmed needs a prediction, unusable takes no label).
        Conflict: already resolved otherwise, not claimed, or claimed by someone else.
    """
    now = rules.now_utc(now)
    async with sessions.begin() as session:
        item = await _locked_item(session, item_id)
        checked = rules.checked_resolution(resolution, item)
        if item.state is domain.ReviewState.RESOLVED:
            retry = (item.resolved_by, item.outcome, item.true_label) == (
                user,
                checked.outcome,
                checked.true_label,
            )
            if retry:
                return item
            raise Conflict(f"review item {item_id} is already resolved by {item.resolved_by}")
        if not override:
            if item.state is domain.ReviewState.OPEN:
                raise Conflict(f"review item {item_id} is not claimed; claim it first")
            if item.claimed_by != user:
                raise Conflict(f"review item {item_id} is claimed by {item.claimed_by}")
        resolved = await repo.resolve(
            session, expected=item, resolution=checked, user=user, now=now
        )
    if resolved is None:
        raise _changed(item_id)
    return resolved


async def history(
    sessions: Sessions,
    *,
    resolved_by: str | None = None,
    node_id: str | None = None,
    wafer_id: str | None = None,
    model_version: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
) -> list[domain.ReviewItem]:
    """Resolved items, newest first, optionally narrowed to a reviewer, node, wafer or model.

    Raises:
        InvalidArgument: ``limit`` outside 1..500.
    """
    rules.check_limit(limit)
    async with sessions() as session:
        return await repo.history(
            session,
            resolved_by=resolved_by,
            node_id=node_id,
            wafer_id=wafer_id,
            model_version=model_version,
            since=rules.as_utc(since) if since else None,
            limit=limit,
        )


async def reviewed_accuracy(
    sessions: Sessions,
    *,
    model_version: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[domain.ReviewedAccuracy]:
    """Reviewed accuracy per model version and per predicted class, over ``[since, until)``.

    Accuracy is confirmed / reviewed, where reviewed counts confirmed and relabelled verdicts
    on wafers with a prediction; unusable wafers are excluded. Classes are the model's
    predictions, so a class's accuracy is how often engineers agreed when the model said it.
    """
    async with sessions() as session:
        counts = await repo.reviewed_counts(
            session,
            model_version=model_version,
            since=rules.as_utc(since) if since else None,
            until=rules.as_utc(until) if until else None,
        )
    per_version: dict[str, list[domain.ClassAccuracy]] = defaultdict(list)
    for version, predicted, reviewed, confirmed in counts:
        per_version[version].append(
            domain.ClassAccuracy(predicted, reviewed, confirmed, confirmed / reviewed)
        )
    out: list[domain.ReviewedAccuracy] = []
    for version, classes in per_version.items():
        reviewed = sum(c.reviewed for c in classes)
        confirmed = sum(c.confirmed for c in classes)
        out.append(
            domain.ReviewedAccuracy(
                version, reviewed, confirmed, confirmed / reviewed, tuple(classes)
            )
        )
    return out


async def queue_depth(
    sessions: Sessions, *, now: datetime | None = None
) -> dict[domain.ReviewState, int]:
    """How many items are open and claimed at ``now`` (lapsed claims count as open)."""
    async with sessions() as session:
        return await repo.depth_by_state(session, now=rules.now_utc(now))

"""Review queue storage: review items, their labels, and the aggregates over them.

Every state change is a *guarded* UPDATE: it names the state, claimant and lease the service
last read, and changes nothing (returns None) when another transaction got there first. On
PostgreSQL the service also holds the row lock (``FOR UPDATE`` / ``SKIP LOCKED``), so the guard
only matters on SQLite, whose single writer makes the guarded UPDATE atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    func,
    insert,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server import domain
from fab_server.models import LabelRow, ResultRow, ReviewItemRow, WaferMapRow
from fab_server.repository import is_postgres, records_json, recordset_insert

_OPEN = domain.ReviewState.OPEN.value
_CLAIMED = domain.ReviewState.CLAIMED.value
_RESOLVED = domain.ReviewState.RESOLVED.value


def _claimable(now: datetime) -> ColumnElement[bool]:
    """Open, or claimed with a lease that has run out (a lapsed lease frees the item)."""
    return or_(
        ReviewItemRow.state == _OPEN,
        and_(ReviewItemRow.state == _CLAIMED, ReviewItemRow.lease_expires_at < now),
    )


def _in_state(state: domain.ReviewState, now: datetime) -> ColumnElement[bool]:
    """Items whose *effective* state is ``state`` at ``now``."""
    if state is domain.ReviewState.OPEN:
        return _claimable(now)
    if state is domain.ReviewState.CLAIMED:
        return and_(ReviewItemRow.state == _CLAIMED, ReviewItemRow.lease_expires_at >= now)
    return ReviewItemRow.state == _RESOLVED


def _filtered(filters: domain.ReviewFilter) -> list[ColumnElement[bool]]:
    clauses: list[ColumnElement[bool]] = []
    if filters.reason is not None:
        clauses.append(ReviewItemRow.reason == int(filters.reason))
    if filters.node_id is not None:
        clauses.append(ReviewItemRow.node_id == filters.node_id)
    if filters.lot_id is not None:
        clauses.append(ReviewItemRow.lot_id == filters.lot_id)
    if filters.model_version is not None:
        clauses.append(ReviewItemRow.model_version == filters.model_version)
    if filters.claimed_by is not None:
        clauses.append(ReviewItemRow.claimed_by == filters.claimed_by)
    if filters.predicted_class is not None:
        clauses.append(ReviewItemRow.predicted_class == filters.predicted_class)
    return clauses


_ITEM_RECORD: tuple[tuple[str, str], ...] = (
    ("id", "text"),
    ("idempotency_key", "text"),
    ("node_id", "text"),
    ("sequence", "int8"),
    ("wafer_id", "text"),
    ("lot_id", "text"),
    ("reason", "int2"),
    ("state", "text"),
    ("priority", "float8"),
    ("predicted_class", "int2"),
    ("confidence", "float8"),
    ("novelty", "float8"),
    ("model_version", "text"),
    ("created_at", "timestamptz"),
    ("claimed_by", "text"),
    ("lease_expires_at", "timestamptz"),
    ("resolved_at", "timestamptz"),
    ("outcome", "text"),
    ("true_label", "int2"),
    ("resolved_by", "text"),
    ("comment", "text"),
    ("requested_by", "text"),
)
_PG_INSERT_ITEMS = text(
    recordset_insert(
        ReviewItemRow.__tablename__,
        _ITEM_RECORD,
        conflict=("idempotency_key",),
        returning="id",
    )
)


def _row_values(item: domain.ReviewItem) -> dict[str, Any]:
    # Shallow on purpose: asdict() deep-copies and cost a third of ingest throughput.
    values = {f.name: getattr(item, f.name) for f in fields(item)}
    values["reason"] = int(item.reason)
    values["state"] = item.state.value
    values["outcome"] = item.outcome.value if item.outcome else None
    return values


async def insert_items(session: AsyncSession, *, items: Sequence[domain.ReviewItem]) -> int:
    """Insert new items, skipping those whose idempotency key is already stored.

    Returns:
        How many items were inserted.
    """
    if not items:
        return 0
    rows = [_row_values(item) for item in items]
    if is_postgres(session):
        stored = await session.execute(_PG_INSERT_ITEMS, {"records": records_json(rows)})
        return len(stored.all())
    stmt = (
        sqlite.insert(ReviewItemRow)
        .on_conflict_do_nothing(index_elements=[ReviewItemRow.idempotency_key])
        .returning(ReviewItemRow.id)
    )
    # One statement, batched by SQLAlchemy's insertmanyvalues under the drivers' parameter limits.
    inserted = await session.scalars(stmt, rows)
    return len(inserted.all())


async def get_item(
    session: AsyncSession, *, item_id: str, for_update: bool = False
) -> domain.ReviewItem | None:
    """The stored item (its raw state: a lapsed claim still reads ``claimed``), or None."""
    stmt = select(ReviewItemRow).where(ReviewItemRow.id == item_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = (await session.scalars(stmt)).one_or_none()
    return row.to_domain() if row else None


async def get_item_by_key(
    session: AsyncSession, *, idempotency_key: str
) -> domain.ReviewItem | None:
    """The item created for ``idempotency_key``, or None."""
    stmt = select(ReviewItemRow).where(ReviewItemRow.idempotency_key == idempotency_key)
    row = (await session.scalars(stmt)).one_or_none()
    return row.to_domain() if row else None


async def items_for_sequences(
    session: AsyncSession, *, node_id: str, first_sequence: int, last_sequence: int
) -> list[domain.ReviewItem]:
    """Items of one node within a sequence range (index ``ix_review_items_node_id_sequence``)."""
    stmt = select(ReviewItemRow).where(
        ReviewItemRow.node_id == node_id,
        ReviewItemRow.sequence.between(first_sequence, last_sequence),
    )
    return [row.to_domain() for row in await session.scalars(stmt)]


async def list_items(
    session: AsyncSession,
    *,
    state: domain.ReviewState,
    filters: domain.ReviewFilter,
    now: datetime,
    limit: int,
) -> list[domain.ReviewItem]:
    """Items in effective ``state``: open and claimed by priority, resolved newest first."""
    stmt = select(ReviewItemRow).where(_in_state(state, now), *_filtered(filters))
    if state is domain.ReviewState.RESOLVED:
        stmt = stmt.order_by(ReviewItemRow.resolved_at.desc(), ReviewItemRow.id)
    else:
        stmt = stmt.order_by(ReviewItemRow.priority, ReviewItemRow.created_at, ReviewItemRow.id)
    return [row.to_domain() for row in await session.scalars(stmt.limit(limit))]


async def next_claimable(
    session: AsyncSession,
    *,
    filters: domain.ReviewFilter,
    now: datetime,
    exclude: Sequence[str] = (),
) -> domain.ReviewItem | None:
    """The most urgent claimable item; on PostgreSQL it is row-locked, skipping locked rows.

    ``SKIP LOCKED`` lets concurrent claimers each take a different item instead of queueing
    behind the first one's lock.
    """
    stmt = select(ReviewItemRow).where(_claimable(now), *_filtered(filters))
    if exclude:
        stmt = stmt.where(ReviewItemRow.id.not_in(exclude))
    stmt = stmt.order_by(ReviewItemRow.priority, ReviewItemRow.created_at, ReviewItemRow.id)
    stmt = stmt.limit(1)
    if is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    row = (await session.scalars(stmt)).one_or_none()
    return row.to_domain() if row else None


async def adjacent_item(
    session: AsyncSession,
    *,
    item: domain.ReviewItem,
    forward: bool,
    user: str,
    filters: domain.ReviewFilter,
    now: datetime,
) -> domain.ReviewItem | None:
    """The item after (``forward``) or before ``item`` in queue order that ``user`` may open.

    Queue order is (priority, created_at, id); candidates are claimable or held by ``user``.
    """
    key = (ReviewItemRow.priority, ReviewItemRow.created_at, ReviewItemRow.id)
    mine = and_(
        ReviewItemRow.state == _CLAIMED,
        ReviewItemRow.claimed_by == user,
        ReviewItemRow.lease_expires_at >= now,
    )
    at = (item.priority, item.created_at, item.id)
    position = tuple_(*key) > tuple_(*at) if forward else tuple_(*key) < tuple_(*at)
    order = [k.asc() if forward else k.desc() for k in key]
    stmt = (
        select(ReviewItemRow)
        .where(or_(_claimable(now), mine), position, *_filtered(filters))
        .order_by(*order)
        .limit(1)
    )
    row = (await session.scalars(stmt)).one_or_none()
    return row.to_domain() if row else None


async def _guarded_update(
    session: AsyncSession, expected: domain.ReviewItem, values: dict[str, Any]
) -> domain.ReviewItem | None:
    stmt = (
        update(ReviewItemRow)
        .where(
            ReviewItemRow.id == expected.id,
            ReviewItemRow.state == expected.state.value,
            ReviewItemRow.claimed_by.is_not_distinct_from(expected.claimed_by),
            ReviewItemRow.lease_expires_at.is_not_distinct_from(expected.lease_expires_at),
        )
        .values(**values)
        .returning(ReviewItemRow)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    row = (await session.scalars(stmt)).one_or_none()
    return row.to_domain() if row else None


async def claim(
    session: AsyncSession, *, expected: domain.ReviewItem, user: str, lease_expires_at: datetime
) -> domain.ReviewItem | None:
    """Claim (or renew) ``expected`` for ``user``; None if it changed since it was read."""
    values = {"state": _CLAIMED, "claimed_by": user, "lease_expires_at": lease_expires_at}
    return await _guarded_update(session, expected, values)


async def release(
    session: AsyncSession, *, expected: domain.ReviewItem
) -> domain.ReviewItem | None:
    """Put ``expected`` back to open; None if it changed since it was read."""
    values = {"state": _OPEN, "claimed_by": None, "lease_expires_at": None}
    return await _guarded_update(session, expected, values)


async def resolve(
    session: AsyncSession,
    *,
    expected: domain.ReviewItem,
    resolution: domain.Resolution,
    user: str,
    now: datetime,
) -> domain.ReviewItem | None:
    """Resolve ``expected`` and record the verdict with the model's prediction in ``labels``.

    The reviewer's comment is appended to the requester's (``user: comment``), not put in
    its place, so the item keeps both.

    Returns:
        The resolved item, or None (nothing written) if it changed since it was read.
    """
    notes = [expected.comment]
    if resolution.comment:
        notes.append(f"{user}: {resolution.comment}")
    values = {
        "state": _RESOLVED,
        "lease_expires_at": None,
        "resolved_at": now,
        "outcome": resolution.outcome.value,
        "true_label": resolution.true_label,
        "resolved_by": user,
        "comment": "\n".join(note for note in notes if note),
    }
    item = await _guarded_update(session, expected, values)
    if item is None:
        return None
    await session.execute(
        insert(LabelRow).values(
            review_item_id=item.id,
            node_id=item.node_id,
            sequence=item.sequence,
            wafer_id=item.wafer_id,
            outcome=resolution.outcome.value,
            true_label=resolution.true_label,
            predicted_class=item.predicted_class,
            model_version=item.model_version,
            resolved_by=user,
            resolved_at=now,
        )
    )
    return item


async def set_prediction(
    session: AsyncSession, *, item_id: str, result: domain.Result, priority: float
) -> None:
    """Fill in the prediction of an item that was flagged before its result arrived."""
    await session.execute(
        update(ReviewItemRow)
        .where(ReviewItemRow.id == item_id, ReviewItemRow.model_version.is_(None))
        .values(
            lot_id=result.lot_id,
            predicted_class=result.prediction,
            confidence=result.confidence,
            novelty=result.novelty,
            model_version=result.model_version,
            priority=priority,
        )
        .execution_options(synchronize_session=False)
    )


async def load_result(
    session: AsyncSession, *, node_id: str, sequence: int, with_map: bool
) -> domain.Result | None:
    """The stored result (node_id, sequence), with its raw map if asked and stored, or None."""
    if not with_map:
        stmt = select(ResultRow).where(ResultRow.node_id == node_id, ResultRow.sequence == sequence)
        row = (await session.scalars(stmt)).one_or_none()
        return row.to_domain() if row else None
    joined = (
        select(ResultRow, WaferMapRow)
        .outerjoin(
            WaferMapRow,
            and_(
                WaferMapRow.node_id == ResultRow.node_id, WaferMapRow.sequence == ResultRow.sequence
            ),
        )
        .where(ResultRow.node_id == node_id, ResultRow.sequence == sequence)
    )
    found = (await session.execute(joined)).one_or_none()
    if found is None:
        return None
    result_row, map_row = found
    return result_row.to_domain(map_row.to_domain() if map_row else None)


async def history(
    session: AsyncSession,
    *,
    resolved_by: str | None,
    node_id: str | None,
    wafer_id: str | None,
    model_version: str | None,
    since: datetime | None,
    limit: int,
) -> list[domain.ReviewItem]:
    """Resolved items, newest resolution first (driven by ``labels``' resolved_at index)."""
    stmt = select(ReviewItemRow).join(LabelRow, LabelRow.review_item_id == ReviewItemRow.id)
    if resolved_by is not None:
        stmt = stmt.where(LabelRow.resolved_by == resolved_by)
    if node_id is not None:
        stmt = stmt.where(LabelRow.node_id == node_id)
    if wafer_id is not None:
        stmt = stmt.where(LabelRow.wafer_id == wafer_id)
    if model_version is not None:
        stmt = stmt.where(LabelRow.model_version == model_version)
    if since is not None:
        stmt = stmt.where(LabelRow.resolved_at >= since)
    stmt = stmt.order_by(LabelRow.resolved_at.desc(), LabelRow.id.desc()).limit(limit)
    return [row.to_domain() for row in await session.scalars(stmt)]


async def reviewed_counts(
    session: AsyncSession,
    *,
    model_version: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[tuple[str, int, int, int]]:
    """(model_version, predicted_class, reviewed, confirmed) over usable labels with a prediction.

    One aggregate over ``labels`` (index on model_version, resolved_at); unusable verdicts and
    wafers whose prediction never arrived are left out.
    """
    confirmed = func.sum(case((LabelRow.true_label == LabelRow.predicted_class, 1), else_=0))
    stmt = select(LabelRow.model_version, LabelRow.predicted_class, func.count(), confirmed).where(
        LabelRow.outcome != domain.ReviewOutcome.UNUSABLE.value,
        LabelRow.predicted_class.is_not(None),
        LabelRow.model_version.is_not(None),
        LabelRow.true_label.is_not(None),
    )
    if model_version is not None:
        stmt = stmt.where(LabelRow.model_version == model_version)
    if since is not None:
        stmt = stmt.where(LabelRow.resolved_at >= since)
    if until is not None:
        stmt = stmt.where(LabelRow.resolved_at < until)
    stmt = stmt.group_by(LabelRow.model_version, LabelRow.predicted_class).order_by(
        LabelRow.model_version, LabelRow.predicted_class
    )
    rows = await session.execute(stmt)
    return [(str(mv), int(cls), int(n), int(ok)) for mv, cls, n, ok in rows]


async def depth_by_state(session: AsyncSession, *, now: datetime) -> dict[domain.ReviewState, int]:
    """How many items are effectively open and claimed (resolved items are not queue depth)."""
    # The lapsed count is an aggregate, not a GROUP BY key: PostgreSQL does not see two bound
    # copies of ``now`` as the same grouping expression.
    lapsed = func.sum(case((ReviewItemRow.lease_expires_at < now, 1), else_=0))
    stmt = (
        select(ReviewItemRow.state, func.count(), lapsed)
        .where(ReviewItemRow.state.in_([_OPEN, _CLAIMED]))
        .group_by(ReviewItemRow.state)
    )
    depth = {domain.ReviewState.OPEN: 0, domain.ReviewState.CLAIMED: 0}
    for state, count, lapsed_count in await session.execute(stmt):
        moved = int(lapsed_count or 0) if state == _CLAIMED else 0
        depth[domain.ReviewState(state)] += int(count) - moved
        depth[domain.ReviewState.OPEN] += moved
    return depth

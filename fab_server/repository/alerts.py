"""Alerts and the aggregates the alert rules read.

Every aggregate is computed by the database over an indexed time window (``edge_metrics``
by ``window_end``, ``labels`` by ``resolved_at``, ``results`` by ``lot_id``); only grouped
rows, never result rows, reach Python.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import case, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server import domain
from fab_server.models import (
    AlertRow,
    EdgeMetricsRow,
    LabelRow,
    LotRow,
    ResultConflictRow,
    ResultRow,
    utc,
)
from wafercore.classes import NUM_CLASSES

# Any constant works; it only has to be the same in every fab server process.
_EVALUATION_LOCK_KEY = 0x0FAB_A1E7

_UNRESOLVED = (domain.AlertState.ACTIVE.value, domain.AlertState.ACKNOWLEDGED.value)


@dataclass(frozen=True)
class NodeWindowStats:
    """One node's metrics windows in a time range, weighted by the wafers of each window."""

    node_id: str
    windows: int
    wafers: int
    latency_p99_ms: float  # wafer-weighted mean of the windows' p99
    review_rate: float  # wafer-weighted mean: flagged wafers / wafers


@dataclass(frozen=True)
class ReviewCounts:
    """Engineer verdicts on one model version's predictions in a time range."""

    model_version: str
    confirmed: int
    relabelled: int


@dataclass(frozen=True)
class ConfusionCell:
    """How many reviewed wafers of a model version had this (predicted, true) class pair."""

    model_version: str
    predicted: int
    true: int
    count: int


@dataclass(frozen=True)
class LotActivity:
    """A lot's predicted-class counts and its stored excursion state."""

    lot_id: str
    last_seen: datetime
    excursion: bool
    excursion_reason: str
    class_counts: tuple[int, ...]


async def lock_alert_evaluation(session: AsyncSession) -> None:
    """Serialise alert evaluations across server processes until the transaction ends.

    PostgreSQL only: SQLite already serialises writers, and a fab runs one SQLite process.
    """
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:key)"), {"key": _EVALUATION_LOCK_KEY}
        )


async def node_window_stats(
    session: AsyncSession, *, since: datetime, until: datetime
) -> list[NodeWindowStats]:
    """Per node, the metrics windows that ended in ``(since, until]`` and classified wafers."""
    m = EdgeMetricsRow
    wafers = func.sum(m.wafers_classified)
    stmt = (
        select(
            m.node_id,
            func.count(),
            wafers,
            func.sum(m.latency_p99_ms * m.wafers_classified),
            func.sum(m.review_rate * m.wafers_classified),
        )
        .where(m.window_end > since, m.window_end <= until, m.wafers_classified > 0)
        .group_by(m.node_id)
        .order_by(m.node_id)
    )
    return [
        NodeWindowStats(
            node_id=node_id,
            windows=int(windows),
            wafers=int(total),
            latency_p99_ms=float(latency) / int(total),
            review_rate=float(flagged) / int(total),
        )
        for node_id, windows, total, latency, flagged in (await session.execute(stmt)).all()
    ]


async def review_counts(
    session: AsyncSession, *, since: datetime, until: datetime
) -> list[ReviewCounts]:
    """Per model version, confirmed and relabelled verdicts resolved in ``(since, until]``."""
    lab = LabelRow
    confirmed = func.sum(case((lab.outcome == domain.ReviewOutcome.CONFIRMED.value, 1), else_=0))
    relabelled = func.sum(case((lab.outcome == domain.ReviewOutcome.RELABELLED.value, 1), else_=0))
    stmt = (
        select(lab.model_version, confirmed, relabelled)
        .where(lab.resolved_at > since, lab.resolved_at <= until, lab.model_version.is_not(None))
        .group_by(lab.model_version)
        .order_by(lab.model_version)
    )
    return [
        ReviewCounts(model_version=version, confirmed=int(c or 0), relabelled=int(r or 0))
        for version, c, r in (await session.execute(stmt)).all()
    ]


async def confusion_counts(
    session: AsyncSession, *, since: datetime, until: datetime
) -> list[ConfusionCell]:
    """Per model version, the confusion matrix of verdicts resolved in ``(since, until]``.

    Unusable verdicts say nothing about the prediction and are left out; a confirmation
    without a stored true label confirms the predicted class.
    """
    lab = LabelRow
    true = func.coalesce(lab.true_label, lab.predicted_class)
    outcomes = (domain.ReviewOutcome.CONFIRMED.value, domain.ReviewOutcome.RELABELLED.value)
    stmt = (
        select(lab.model_version, lab.predicted_class, true, func.count())
        .where(
            lab.resolved_at > since,
            lab.resolved_at <= until,
            lab.outcome.in_(outcomes),
            lab.model_version.is_not(None),
            lab.predicted_class.is_not(None),
        )
        .group_by(lab.model_version, lab.predicted_class, true)
    )
    # The WHERE clause rules out the NULLs the column types allow.
    return [
        ConfusionCell(
            model_version=cast(str, version), predicted=cast(int, p), true=int(t), count=int(n)
        )
        for version, p, t, n in (await session.execute(stmt)).all()
    ]


async def recent_lots(
    session: AsyncSession,
    *,
    active_since: datetime,
    until: datetime,
    baseline_lots: int,
    max_active: int,
) -> list[LotActivity]:
    """Lots last seen in ``(active_since, until]`` plus the ``baseline_lots`` before them.

    At most ``max_active`` active lots (the latest) are returned, so a backlog replay cannot
    make one evaluation scan the whole history. Ordered by ``last_seen`` ascending.
    """
    active = await session.scalar(
        select(func.count())
        .select_from(LotRow)
        .where(LotRow.last_seen > active_since, LotRow.last_seen <= until)
    )
    if not active:
        return []
    window = (
        select(LotRow.lot_id, LotRow.last_seen, LotRow.excursion, LotRow.excursion_reason)
        .where(LotRow.last_seen <= until)
        .order_by(LotRow.last_seen.desc(), LotRow.lot_id.desc())
        .limit(min(active, max_active) + baseline_lots)
        .subquery()
    )
    lots = (await session.execute(select(window))).all()
    counts = await session.execute(
        select(ResultRow.lot_id, ResultRow.prediction, func.count())
        .join(window, ResultRow.lot_id == window.c.lot_id)
        .group_by(ResultRow.lot_id, ResultRow.prediction)
    )
    per_lot: defaultdict[str, list[int]] = defaultdict(lambda: [0] * NUM_CLASSES)
    for lot_id, prediction, n in counts.all():
        if 0 <= prediction < NUM_CLASSES:
            per_lot[lot_id][prediction] += int(n)
    out = [
        LotActivity(
            lot_id=lot_id,
            last_seen=utc(last_seen) or last_seen,
            excursion=bool(excursion),
            excursion_reason=reason or "",
            class_counts=tuple(per_lot.get(lot_id, [0] * NUM_CLASSES)),
        )
        for lot_id, last_seen, excursion, reason in lots
    ]
    out.sort(key=lambda lot: (lot.last_seen, lot.lot_id))
    return out


async def set_lot_excursion(
    session: AsyncSession, *, lot_id: str, excursion: bool, reason: str
) -> None:
    """Store a lot's excursion flag and why (the lot summary reads both)."""
    await session.execute(
        update(LotRow)
        .where(LotRow.lot_id == lot_id)
        .values(excursion=excursion, excursion_reason=reason)
    )


async def conflict_counts(
    session: AsyncSession, *, since: datetime, until: datetime
) -> dict[str, int]:
    """Results refused as conflicts per node, received in [since, until)."""
    rows = await session.execute(
        select(ResultConflictRow.node_id, func.count())
        .where(ResultConflictRow.received_at >= since, ResultConflictRow.received_at < until)
        .group_by(ResultConflictRow.node_id)
    )
    return {node_id: int(count) for node_id, count in rows}


async def unresolved_alerts(session: AsyncSession) -> list[domain.Alert]:
    """Every active or acknowledged alert, oldest first."""
    rows = await session.scalars(
        select(AlertRow)
        .where(AlertRow.state.in_(_UNRESOLVED))
        .order_by(AlertRow.created_at, AlertRow.id)
    )
    return [row.to_domain() for row in rows]


async def insert_alert(
    session: AsyncSession,
    *,
    kind: str,
    subject: str,
    severity: domain.AlertSeverity,
    message: str,
    value: float | None,
    threshold: float | None,
    now: datetime,
) -> domain.Alert:
    """Store a new active alert."""
    row = AlertRow(
        kind=kind,
        subject=subject,
        severity=severity.value,
        message=message,
        value=value,
        threshold=threshold,
        state=domain.AlertState.ACTIVE.value,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    await session.flush()
    return row.to_domain()


async def refresh_alert(
    session: AsyncSession,
    *,
    alert_id: int,
    severity: domain.AlertSeverity,
    message: str,
    value: float | None,
    threshold: float | None,
    reactivate: bool,
    now: datetime,
) -> None:
    """Update a still-firing alert; ``reactivate`` drops an acknowledgement (escalation).

    Only unresolved alerts are touched, and the state is written only when reactivating, so a
    concurrent acknowledgement is never overwritten by a plain refresh.
    """
    values: dict[str, object] = {
        "severity": severity.value,
        "message": message,
        "value": value,
        "threshold": threshold,
        "updated_at": now,
    }
    if reactivate:
        values.update(
            state=domain.AlertState.ACTIVE.value, acknowledged_by=None, acknowledged_at=None
        )
    await session.execute(
        update(AlertRow)
        .where(AlertRow.id == alert_id, AlertRow.state.in_(_UNRESOLVED))
        .values(**values)
    )


async def resolve_alerts(session: AsyncSession, *, alert_ids: Iterable[int], now: datetime) -> None:
    """Mark alerts resolved (their condition cleared)."""
    ids = list(alert_ids)
    if not ids:
        return
    await session.execute(
        update(AlertRow)
        .where(AlertRow.id.in_(ids), AlertRow.state.in_(_UNRESOLVED))
        .values(state=domain.AlertState.RESOLVED.value, updated_at=now)
    )


async def list_alerts(
    session: AsyncSession, *, state: domain.AlertState | None, limit: int
) -> list[domain.Alert]:
    """Alerts, newest first; every state when ``state`` is None."""
    stmt = select(AlertRow).order_by(AlertRow.created_at.desc(), AlertRow.id.desc()).limit(limit)
    if state is not None:
        stmt = stmt.where(AlertRow.state == state.value)
    return [row.to_domain() for row in await session.scalars(stmt)]


async def acknowledge_alert(
    session: AsyncSession, *, alert_id: int, user: str, now: datetime
) -> domain.Alert | None:
    """Record who saw an alert; None when there is no such alert.

    An active alert becomes acknowledged. The first acknowledgement is kept on repeats, and a
    resolved alert stays resolved (the acknowledgement is still recorded if it had none).
    """
    row = await session.get(AlertRow, alert_id, with_for_update=True)
    if row is None:
        return None
    if row.acknowledged_by is None:
        row.acknowledged_by = user
        row.acknowledged_at = now
    if row.state == domain.AlertState.ACTIVE.value:
        row.state = domain.AlertState.ACKNOWLEDGED.value
    await session.flush()
    return row.to_domain()

"""The audit trail: every verdict recorded in ``labels``, with its review item's context.

``labels`` is written once per resolved item (verdicts are final: a second, different verdict
is refused), so it is the complete history of who decided what; nothing else needs storing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server.models import LabelRow, ReviewItemRow, utc


@dataclass(frozen=True)
class AuditEntry:
    """One verdict: who, when, on which wafer, from the model's class to the engineer's."""

    label_id: int
    review_item_id: str
    wafer_id: str
    lot_id: str
    node_id: str
    sequence: int
    model_version: str | None
    predicted_class: int | None  # "from": the model's prediction (None if it never arrived)
    outcome: str  # confirmed, relabelled or unusable
    true_label: int | None  # "to": the engineer's class (None when unusable)
    resolved_by: str
    resolved_at: datetime
    claimed_by: str | None  # who held the claim; differs from resolved_by on an override
    comment: str


async def audit_entries(
    session: AsyncSession,
    *,
    wafer_id: str | None,
    resolved_by: str | None,
    limit: int,
) -> list[AuditEntry]:
    """Verdicts, newest first, optionally of one wafer and/or one user (``labels`` indexes)."""
    stmt = select(LabelRow, ReviewItemRow).join(
        ReviewItemRow, ReviewItemRow.id == LabelRow.review_item_id
    )
    if wafer_id is not None:
        stmt = stmt.where(LabelRow.wafer_id == wafer_id)
    if resolved_by is not None:
        stmt = stmt.where(LabelRow.resolved_by == resolved_by)
    stmt = stmt.order_by(LabelRow.resolved_at.desc(), LabelRow.id.desc()).limit(limit)
    return [
        AuditEntry(
            label_id=label.id,
            review_item_id=label.review_item_id,
            wafer_id=label.wafer_id,
            lot_id=item.lot_id,
            node_id=label.node_id,
            sequence=label.sequence,
            model_version=label.model_version,
            predicted_class=label.predicted_class,
            outcome=label.outcome,
            true_label=label.true_label,
            resolved_by=label.resolved_by,
            resolved_at=utc(label.resolved_at) or label.resolved_at,
            claimed_by=item.claimed_by,
            comment=item.comment,
        )
        for label, item in (await session.execute(stmt)).all()
    ]

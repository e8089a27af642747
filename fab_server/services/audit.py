"""The audit trail of review verdicts: listing (per wafer, per user) and CSV export."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server.errors import InvalidArgument
from fab_server.repository import audit as audit_repo
from fab_server.repository.audit import AuditEntry
from wafercore.classes import CLASS_NAMES
from wafercore.validation import check_id

MAX_AUDIT_ROWS = 100_000
"""Most verdicts one listing or export returns."""

CSV_COLUMNS = (
    "resolved_at",
    "resolved_by",
    "wafer_id",
    "lot_id",
    "node_id",
    "sequence",
    "model_version",
    "outcome",
    "from_class",
    "to_class",
    "override",
    "claimed_by",
    "review_item_id",
    "comment",
)
"""Header of `audit_csv`, in column order."""


async def audit_trail(
    sessions: async_sessionmaker[AsyncSession],
    *,
    wafer_id: str | None = None,
    user: str | None = None,
    limit: int = 200,
) -> list[AuditEntry]:
    """Every verdict, newest first, optionally of one wafer and/or one reviewer.

    Raises:
        InvalidArgument: a filter is not a valid id, or ``limit`` is outside 1..100,000.
    """
    if wafer_id is not None:
        check_id(wafer_id, "wafer_id")
    if user is not None:
        check_id(user, "user")
    if not 1 <= limit <= MAX_AUDIT_ROWS:
        raise InvalidArgument("limit", f"must be between 1 and {MAX_AUDIT_ROWS}, got {limit}")
    async with sessions() as session:
        return await audit_repo.audit_entries(
            session, wafer_id=wafer_id, resolved_by=user, limit=limit
        )


def class_name(class_id: int | None) -> str:
    """A class id as its name ("" for none, the number when out of range)."""
    if class_id is None:
        return ""
    return CLASS_NAMES[class_id] if 0 <= class_id < len(CLASS_NAMES) else str(class_id)


def is_override(entry: AuditEntry) -> bool:
    """Whether the verdict was given without holding the item's claim (an admin override)."""
    return entry.claimed_by != entry.resolved_by


def audit_csv(entries: Iterable[AuditEntry]) -> str:
    """The entries as CSV (`CSV_COLUMNS`), class names spelled out, times in ISO 8601 UTC."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for e in entries:
        writer.writerow(
            (
                e.resolved_at.isoformat(),
                e.resolved_by,
                e.wafer_id,
                e.lot_id,
                e.node_id,
                e.sequence,
                e.model_version or "",
                e.outcome,
                class_name(e.predicted_class),
                class_name(e.true_label),
                "yes" if is_override(e) else "no",
                e.claimed_by or "",
                e.review_item_id,
                # A leading = + - @ would run as a formula in a spreadsheet: quote it as text.
                _safe_cell(e.comment),
            )
        )
    return out.getvalue()


def _safe_cell(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text

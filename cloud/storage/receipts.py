"""Upload receipts (table ``upload_receipts``): the first answer to each idempotency key.

A fab that retries an upload (it never saw the answer) gets the first answer back and nothing is
stored twice. The receipt is written in the same transaction as what it acknowledges.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from cloud.storage.tables import UploadReceiptRow, utcnow


@dataclass(frozen=True)
class Receipt:
    """What an upload stored: items accepted and refused."""

    accepted: int
    rejected: int


def find_receipt(session: Session, *, fab_id: str, kind: str, key: str) -> Receipt | None:
    """The receipt of an earlier upload with this key, or None."""
    row = session.get(UploadReceiptRow, (fab_id, kind, key))
    return Receipt(row.accepted, row.rejected) if row is not None else None


def add_receipt(session: Session, *, fab_id: str, kind: str, key: str, receipt: Receipt) -> None:
    """Record the answer to an upload (fails on a key already used: the caller's transaction
    then rolls back, and a retry finds the first receipt)."""
    session.add(
        UploadReceiptRow(
            fab_id=fab_id,
            kind=kind,
            idempotency_key=key,
            accepted=receipt.accepted,
            rejected=receipt.rejected,
            at=utcnow(),
        )
    )
    session.flush()

"""Repository of the API's bearer tokens (table ``api_tokens``): only their SHA-256 is stored.

Keyword-only functions on a SQLAlchemy session; they return `ApiToken` records, never rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud.storage.tables import ApiTokenRow, utc, utcnow


@dataclass(frozen=True)
class ApiToken:
    """A token's holder and role (the token itself is never stored, only its digest).

    Attributes:
        id: the token's number, how ``wafer-cloud tokens revoke`` names it.
        user: who holds it (recorded as the actor of what they do).
        role: ``viewer``, ``ml-engineer`` or ``admin``.
        created_at: when it was issued.
        revoked_at: when it was revoked, or None while it is valid.
    """

    id: int
    user: str
    role: str
    created_at: datetime
    revoked_at: datetime | None


def _record(row: ApiTokenRow) -> ApiToken:
    created = utc(row.created_at)
    assert created is not None  # NOT NULL column
    return ApiToken(
        id=row.id,
        user=row.user,
        role=row.role,
        created_at=created,
        revoked_at=utc(row.revoked_at),
    )


def add_token(session: Session, *, user: str, role: str, digest: str) -> ApiToken:
    """Store a new token by its hex SHA-256 ``digest``."""
    row = ApiTokenRow(user=user, role=role, digest=digest, created_at=utcnow())
    session.add(row)
    session.flush()
    return _record(row)


def find_active(session: Session, *, digest: str) -> ApiToken | None:
    """The unrevoked token with this digest, or None."""
    row = session.scalars(
        select(ApiTokenRow).where(ApiTokenRow.digest == digest, ApiTokenRow.revoked_at.is_(None))
    ).one_or_none()
    return _record(row) if row is not None else None


def revoke_token(session: Session, *, token_id: int) -> ApiToken | None:
    """Revoke token ``token_id`` (a revoked one keeps its first revocation time).

    Returns:
        The token as it is now, or None when there is no such token.
    """
    row = session.get(ApiTokenRow, token_id)
    if row is None:
        return None
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        session.flush()
    return _record(row)


def list_tokens(session: Session, *, include_revoked: bool = False) -> list[ApiToken]:
    """Every token (valid ones only unless ``include_revoked``), oldest first."""
    query = select(ApiTokenRow).order_by(ApiTokenRow.id)
    if not include_revoked:
        query = query.where(ApiTokenRow.revoked_at.is_(None))
    return [_record(row) for row in session.scalars(query)]

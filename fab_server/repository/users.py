"""Review UI users: rows of the ``users`` table, as domain objects (and the stored hash)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server import domain
from fab_server.models import UserRow


async def insert_user(
    session: AsyncSession, *, user: str, role: str, password_hash: str, created_at: datetime
) -> domain.User:
    """Store a new user (the caller checked that the name is free)."""
    row = UserRow(
        user=user, role=role, password_hash=password_hash, created_at=created_at, disabled_at=None
    )
    session.add(row)
    await session.flush()
    return row.to_domain()


async def get_user(session: AsyncSession, *, user: str) -> domain.User | None:
    """The user named ``user``, enabled or not, or None."""
    row = await session.get(UserRow, user)
    return row.to_domain() if row is not None else None


async def get_credentials(session: AsyncSession, *, user: str) -> tuple[domain.User, str] | None:
    """The user and their stored password hash, or None when there is no such user."""
    row = await session.get(UserRow, user)
    return (row.to_domain(), row.password_hash) if row is not None else None


async def disable_user(session: AsyncSession, *, user: str, disabled_at: datetime) -> bool:
    """Mark ``user`` disabled (kept for the audit trail); False when none such is enabled."""
    changed = await session.scalars(
        update(UserRow)
        .where(UserRow.user == user, UserRow.disabled_at.is_(None))
        .values(disabled_at=disabled_at)
        .returning(UserRow.user)
        .execution_options(synchronize_session=False)
    )
    return changed.first() is not None


async def list_users(session: AsyncSession) -> list[domain.User]:
    """Every user, by name."""
    rows = await session.scalars(select(UserRow).order_by(UserRow.user))
    return [row.to_domain() for row in rows]

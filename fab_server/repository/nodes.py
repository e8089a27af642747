"""Edge nodes' credentials: the digests of the tokens and certificates the fab issued them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server import domain
from fab_server.models import NodeCredentialRow


async def insert_credential(
    session: AsyncSession,
    *,
    node_id: str,
    kind: domain.CredentialKind,
    digest: str,
    created_at: datetime,
) -> domain.NodeCredential:
    """Store a credential's digest (the caller checked that the digest is not stored yet)."""
    row = NodeCredentialRow(
        node_id=node_id, kind=kind.value, digest=digest, created_at=created_at, revoked_at=None
    )
    session.add(row)
    await session.flush()
    return row.to_domain()


async def find_by_digest(session: AsyncSession, *, digest: str) -> domain.NodeCredential | None:
    """The credential with this digest, revoked or not, or None (one unique-index lookup)."""
    row = await session.scalar(select(NodeCredentialRow).where(NodeCredentialRow.digest == digest))
    return row.to_domain() if row is not None else None


async def revoke_node(session: AsyncSession, *, node_id: str, revoked_at: datetime) -> int:
    """Revoke every credential of ``node_id`` not revoked yet.

    Returns:
        How many credentials this call revoked.
    """
    revoked = await session.scalars(
        update(NodeCredentialRow)
        .where(NodeCredentialRow.node_id == node_id, NodeCredentialRow.revoked_at.is_(None))
        .values(revoked_at=revoked_at)
        .returning(NodeCredentialRow.id)
        .execution_options(synchronize_session=False)
    )
    return len(revoked.all())


async def list_credentials(session: AsyncSession) -> list[domain.NodeCredential]:
    """Every credential ever issued, by node and then in issue order."""
    rows = await session.scalars(
        select(NodeCredentialRow).order_by(NodeCredentialRow.node_id, NodeCredentialRow.id)
    )
    return [row.to_domain() for row in rows]

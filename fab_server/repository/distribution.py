"""Model artifacts, model assignments and the versions each node reports."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import case, select
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server import domain
from fab_server.models import EdgeNodeRow, ModelArtifactRow, ModelAssignmentRow
from fab_server.repository import dialect_insert

DEFAULT_NODE = "*"
"""Node id of the fab-wide default assignment."""


async def insert_artifact(session: AsyncSession, *, artifact: domain.ModelArtifact) -> bool:
    """Store an artifact unless (version, format) is already registered.

    Returns:
        True when stored, False when an artifact of that version and format exists.
    """
    stmt = (
        dialect_insert(session, ModelArtifactRow)
        .values(
            version=artifact.version,
            artifact_format=artifact.artifact_format,
            sha256=artifact.sha256,
            size_bytes=artifact.size_bytes,
            signature=artifact.signature,
            signing_key_id=artifact.signing_key_id,
            path=artifact.path,
            created_at=artifact.created_at,
        )
        .on_conflict_do_nothing(index_elements=["version", "artifact_format"])
        .returning(ModelArtifactRow.id)
    )
    return (await session.execute(stmt)).first() is not None


async def get_artifact(
    session: AsyncSession, *, version: str, artifact_format: str
) -> domain.ModelArtifact | None:
    """The artifact of a version in a format, or None."""
    row = await session.scalar(
        select(ModelArtifactRow).where(
            ModelArtifactRow.version == version,
            ModelArtifactRow.artifact_format == artifact_format,
        )
    )
    return row.to_domain() if row is not None else None


async def version_registered(session: AsyncSession, *, version: str) -> bool:
    """Whether an artifact of ``version`` exists in any format."""
    found = await session.scalar(
        select(ModelArtifactRow.id).where(ModelArtifactRow.version == version).limit(1)
    )
    return found is not None


async def upsert_assignment(
    session: AsyncSession, *, assignment: domain.Assignment
) -> domain.Assignment:
    """Create or replace the assignment of ``assignment.node_id``."""
    values = {
        "node_id": assignment.node_id,
        "version": assignment.version,
        "rollout_id": assignment.rollout_id,
        "stage": assignment.stage,
        "rollback": assignment.rollback,
        "updated_at": assignment.updated_at,
    }
    stmt = dialect_insert(session, ModelAssignmentRow).values(**values)
    upsert = stmt.on_conflict_do_update(
        index_elements=["node_id"], set_={k: v for k, v in values.items() if k != "node_id"}
    ).returning(ModelAssignmentRow)
    row: ModelAssignmentRow = (await session.execute(upsert)).scalar_one()
    return row.to_domain()


async def assignment_for(session: AsyncSession, *, node_id: str) -> domain.Assignment | None:
    """The node's own assignment, else the fab-wide default, else None."""
    own_first = case((ModelAssignmentRow.node_id == node_id, 0), else_=1)
    row = await session.scalar(
        select(ModelAssignmentRow)
        .where(ModelAssignmentRow.node_id.in_([node_id, DEFAULT_NODE]))
        .order_by(own_first)
        .limit(1)
    )
    return row.to_domain() if row is not None else None


async def record_node_versions(
    session: AsyncSession,
    *,
    node_id: str,
    installed_version: str,
    previous_version: str,
    now: datetime,
) -> None:
    """Remember which versions a node reports (creating the node if it is new)."""
    stmt = dialect_insert(session, EdgeNodeRow).values(
        node_id=node_id,
        first_seen=now,
        last_seen=now,
        acked_sequence=0,
        installed_version=installed_version,
        previous_version=previous_version,
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["node_id"],
            set_={
                "installed_version": stmt.excluded.installed_version,
                "previous_version": stmt.excluded.previous_version,
                "last_seen": stmt.excluded.last_seen,
            },
        )
    )

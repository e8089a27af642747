"""Models and nodes: every edge node with its versions, its latest metrics window and the
model assignments, read in three statements whatever the number of nodes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fab_server import domain
from fab_server.models import EdgeMetricsRow, EdgeNodeRow, ModelAssignmentRow, utc


async def edge_nodes(session: AsyncSession, *, limit: int) -> list[domain.EdgeNode]:
    """Nodes the fab has heard from (results or model polls), by node id."""
    rows = await session.scalars(select(EdgeNodeRow).order_by(EdgeNodeRow.node_id).limit(limit))
    return [row.to_domain() for row in rows]


async def latest_metrics(
    session: AsyncSession,
) -> dict[str, tuple[domain.EdgeMetricsRecord, datetime]]:
    """Each node's newest metrics window and when it was received, by node id.

    The newest window per node is found by ``MAX(window_end)`` grouped by node (the unique
    index on (node_id, window_end) answers it), then joined back for the whole row.
    """
    newest = (
        select(EdgeMetricsRow.node_id, func.max(EdgeMetricsRow.window_end).label("window_end"))
        .group_by(EdgeMetricsRow.node_id)
        .subquery()
    )
    rows = await session.scalars(
        select(EdgeMetricsRow).join(
            newest,
            (EdgeMetricsRow.node_id == newest.c.node_id)
            & (EdgeMetricsRow.window_end == newest.c.window_end),
        )
    )
    return {row.node_id: (row.to_domain(), utc(row.received_at) or row.received_at) for row in rows}


async def assignments(session: AsyncSession) -> dict[str, domain.Assignment]:
    """Every model assignment by node id (``*`` is the fab-wide default)."""
    rows = await session.scalars(select(ModelAssignmentRow))
    return {row.node_id: row.to_domain() for row in rows}

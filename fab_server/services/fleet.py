"""Models and nodes: what each edge node runs, how it performs and what it should run."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.repository import fleet as fleet_repo
from fab_server.repository.distribution import DEFAULT_NODE

MAX_NODES = 1000
"""Most nodes one overview lists."""


@dataclass(frozen=True)
class NodeOverview:
    """One edge node on the models and nodes page.

    ``metrics`` is its newest pushed window (None when it never pushed one) and
    ``metrics_received_at`` when that arrived; ``assignment`` is the node's own assignment,
    else the fab-wide default, else None; ``default_assignment`` says which it is.
    """

    node_id: str
    installed_version: str
    previous_version: str
    last_seen: datetime | None
    metrics: domain.EdgeMetricsRecord | None
    metrics_received_at: datetime | None
    assignment: domain.Assignment | None
    default_assignment: bool


@dataclass(frozen=True)
class Fleet:
    """The nodes, by node id, and the fab-wide default assignment (None when there is none)."""

    nodes: list[NodeOverview]
    default: domain.Assignment | None


async def fleet_overview(sessions: async_sessionmaker[AsyncSession]) -> Fleet:
    """Every node known from results, model polls or metrics pushes, and the default model."""
    async with sessions() as session:
        nodes = {n.node_id: n for n in await fleet_repo.edge_nodes(session, limit=MAX_NODES)}
        metrics = await fleet_repo.latest_metrics(session)
        assigned = await fleet_repo.assignments(session)
    default = assigned.get(DEFAULT_NODE)
    out = []
    for node_id in sorted(set(nodes) | set(metrics))[:MAX_NODES]:
        node = nodes.get(node_id)
        record, received_at = metrics.get(node_id, (None, None))
        own = assigned.get(node_id)
        out.append(
            NodeOverview(
                node_id=node_id,
                installed_version=node.installed_version if node else "",
                previous_version=node.previous_version if node else "",
                last_seen=node.last_seen if node else None,
                metrics=record,
                metrics_received_at=received_at,
                assignment=own or default,
                default_assignment=own is None and default is not None,
            )
        )
    return Fleet(nodes=out, default=default)

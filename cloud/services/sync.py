"""What the fabs sync: reviewed labels and daily aggregates in, deployment plans out.

Uploads are idempotent twice over: a retried upload (same idempotency key) gets its first
receipt back and stores nothing, and a label re-sent under another key (a fab's overlap window)
is stored once by its natural key. The plan says which version each known node of a fab runs:
the fab's rollout decides (`plan_nodes`), else the champion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud.registry.artifacts import ArtifactCache
from cloud.registry.registry import ModelRegistry
from cloud.storage import aggregates, labels, receipts, rollouts
from cloud.storage.aggregates import DailyAggregate
from cloud.storage.db import Database
from cloud.storage.labels import ReviewedLabel
from cloud.storage.receipts import Receipt
from cloud.storage.rollouts import Rollout

LABELS, AGGREGATES = "labels", "aggregates"
STAGE_CANARY, STAGE_PRODUCTION = 1, 2
"""The contract's RolloutStage numbers."""


@dataclass(frozen=True)
class NodePlan:
    """Which version one node runs, at which stage, in which rollout ("" for none)."""

    node_id: str
    model_version: str
    stage: int
    rollout_id: str


@dataclass(frozen=True)
class PlanEntry(NodePlan):
    """A node's plan with what the fab needs to fetch and check the artifact."""

    sha256: str = ""
    size_bytes: int = 0
    signature: bytes = b""
    signing_key_id: str = ""


@dataclass(frozen=True)
class Plan:
    """A fab's deployment plan."""

    fab_id: str
    generated_at: datetime
    entries: tuple[PlanEntry, ...]


def _store_once(
    db: Database,
    *,
    fab_id: str,
    kind: str,
    key: str,
    rejected: int,
    store: Callable[[Session], int],
) -> Receipt:
    """Run ``store`` and record its receipt in one transaction, unless ``key`` was seen."""
    for attempt in range(2):
        try:
            with db.session() as session:
                found = receipts.find_receipt(session, fab_id=fab_id, kind=kind, key=key)
                if found is not None:
                    return found
                receipt = Receipt(accepted=store(session), rejected=rejected)
                receipts.add_receipt(session, fab_id=fab_id, kind=kind, key=key, receipt=receipt)
                return receipt
        except IntegrityError:  # the same key stored concurrently: read its receipt
            if attempt:
                raise
    raise AssertionError("unreachable")


def upload_labels(
    db: Database,
    *,
    fab_id: str,
    key: str,
    valid: Sequence[ReviewedLabel],
    rejected: int,
    now: datetime,
) -> Receipt:
    """Store a fab's reviewed labels (already validated) once per idempotency key."""

    def store(session: Session) -> int:
        labels.add_reviewed_labels(session, labels=valid, now=now)
        return len(valid)

    return _store_once(db, fab_id=fab_id, kind=LABELS, key=key, rejected=rejected, store=store)


def upload_aggregates(
    db: Database,
    *,
    fab_id: str,
    key: str,
    valid: Sequence[DailyAggregate],
    rejected: int,
    now: datetime,
) -> Receipt:
    """Store a fab's daily aggregates (already validated) once per idempotency key."""

    def store(session: Session) -> int:
        aggregates.upsert_aggregates(session, aggregates=valid, now=now)
        return len(valid)

    return _store_once(db, fab_id=fab_id, kind=AGGREGATES, key=key, rejected=rejected, store=store)


def plan_nodes(
    nodes: Sequence[str], rollout: Rollout | None, champion: str | None
) -> list[NodePlan]:
    """Which version each node runs.

    During a canary, the canary nodes run the candidate (stage canary) and every other node the
    baseline (production, same rollout id: the control arm). Promoted (watching), every node
    runs the new version in that rollout; completed, as plain production. Rolled back or
    stopped, every node runs the baseline. No rollout: the champion, or nothing without one.
    """
    if rollout is None:
        if champion is None:
            return []
        return [NodePlan(node, champion, STAGE_PRODUCTION, "") for node in nodes]
    if rollout.stage == rollouts.CANARY:
        canary = set(rollout.canary_nodes)
        return [
            NodePlan(node, rollout.model_version, STAGE_CANARY, rollout.id)
            if node in canary
            else NodePlan(node, rollout.baseline_version, STAGE_PRODUCTION, rollout.id)
            for node in nodes
        ]
    if rollout.stage == rollouts.WATCHING:
        return [NodePlan(n, rollout.model_version, STAGE_PRODUCTION, rollout.id) for n in nodes]
    if rollout.stage == rollouts.COMPLETED:
        return [NodePlan(n, rollout.model_version, STAGE_PRODUCTION, "") for n in nodes]
    return [NodePlan(n, rollout.baseline_version, STAGE_PRODUCTION, "") for n in nodes]


def deployment_plan(
    db: Database,
    registry: ModelRegistry,
    cache: ArtifactCache,
    *,
    fab_id: str,
    default_key_id: str,
    now: datetime,
) -> Plan:
    """The fab's plan: one entry per node it has reported, with each artifact's digest, size
    and signature (from the verified local copy of the registry's artifact); ``default_key_id``
    names the key of versions registered without one."""
    with db.session() as session:
        nodes = aggregates.fab_nodes(session, fab_id=fab_id)
        rollout = rollouts.latest_rollout(session, fab_id=fab_id)
    champion = None
    if rollout is None:
        held = registry.by_alias("champion")
        champion = held.version if held is not None else None
    planned = plan_nodes(nodes, rollout, champion)
    entries = []
    fetched = {}
    for node in planned:
        if node.model_version not in fetched:
            fetched[node.model_version] = cache.fetch(registry, node.model_version)
        local = fetched[node.model_version]
        entries.append(
            PlanEntry(
                node_id=node.node_id,
                model_version=node.model_version,
                stage=node.stage,
                rollout_id=node.rollout_id,
                sha256=local.model.artifact_sha256,
                size_bytes=local.path.stat().st_size,
                signature=local.signature_path.read_bytes(),
                signing_key_id=local.model.signing_key_id or default_key_id,
            )
        )
    return Plan(fab_id=fab_id, generated_at=now, entries=tuple(entries))

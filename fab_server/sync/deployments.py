"""Turning the cloud's deployment plan into the fab's model assignments.

For each version the plan names, the artifact is fetched from the cloud API (unless that
version is already registered with the plan's SHA-256), checked (its SHA-256 against the plan
and the API's header, its Ed25519 signature against ``sync.trusted_keys_dir`` with
`wafercore.signature`), registered (`services.distribution.register_artifact`) and assigned to
the plan's nodes (`services.distribution.assign`, with the rollout id and stage). An artifact
that fails a check registers nothing: its nodes keep their current model, the failure is logged
as an error, counted (``fab_sync_artifacts_rejected_total``) and reported in the summary.
A plan older than the one last applied is ignored.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import Conflict, FabError, NotFound
from fab_server.services import distribution
from fab_server.settings import FabSettings
from fab_server.sync import storage
from fab_server.sync.client import CloudClient, CloudRefused
from wafercore.errors import InvalidInput
from wafercore.signature import SignatureError, verify_artifact

logger = logging.getLogger(__name__)

Sessions = async_sessionmaker[AsyncSession]
PLAN_STATE = "deployments"
"""``sync_state`` name of the applied plan's ``generated_at``."""
MAX_ARTIFACT_BYTES = 4 << 30
"""Download cap when the plan does not give the artifact's size."""

ARTIFACTS_REJECTED = Counter(
    "fab_sync_artifacts_rejected_total",
    "Artifacts named by the cloud's plan that failed verification (nothing registered).",
    ["reason"],
)


class Rejected(Exception):  # noqa: N818 (an outcome, reported, not raised out of the module)
    """A version of the plan that cannot be registered."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def plan_time(plan: Any) -> datetime | None:
    """The plan's ``generated_at`` (UTC), None when unset."""
    if not plan.HasField("generated_at"):
        return None
    return plan.generated_at.ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


async def _registered_sha(sessions: Sessions, version: str) -> str | None:
    try:
        artifact = await distribution.find_artifact(
            sessions, version=version, artifact_format=distribution.DEFAULT_FORMAT
        )
    except NotFound:
        return None
    return artifact.sha256


async def _fetch_verify_register(
    sessions: Sessions, client: CloudClient, entry: Any, settings: FabSettings
) -> None:
    version = entry.model_version
    with tempfile.TemporaryDirectory(prefix="fab-sync-") as folder:
        download = await client.fetch_artifact(
            version,
            Path(folder) / "artifact",
            max_bytes=entry.size_bytes or MAX_ARTIFACT_BYTES,
        )
        signature = await client.fetch_signature(version)
        expected = entry.sha256.lower() or download.announced_sha256
        if download.announced_sha256 and expected != download.announced_sha256:
            raise Rejected(
                "sha256_mismatch",
                f"the plan says sha256 {expected}, the API {download.announced_sha256}",
            )
        if entry.signature and bytes(entry.signature) != signature:
            raise Rejected("bad_signature", "the API's signature differs from the plan's")
        key_id = entry.signing_key_id or download.key_id
        try:
            await asyncio.to_thread(
                verify_artifact,
                download.path,
                signature,
                key_id,
                settings.sync.trusted_keys_dir,
                expected_sha256=expected or None,
            )
        except SignatureError as exc:
            raise Rejected(exc.reason, exc.detail) from None
        await distribution.register_artifact(
            sessions,
            version=version,
            artifact_format=distribution.DEFAULT_FORMAT,
            path=download.path,
            signature=signature,
            signing_key_id=key_id,
            settings=settings,
        )


async def _ensure_registered(
    sessions: Sessions, client: CloudClient, entry: Any, settings: FabSettings
) -> bool:
    """Whether ``entry``'s version is registered now (True) or was already (False).

    Raises:
        Rejected: it cannot be (a failed check, other bytes registered, a refused download).
    """
    version = entry.model_version
    try:
        registered = await _registered_sha(sessions, version)
    except InvalidInput as exc:
        raise Rejected("invalid_version", str(exc)) from None
    if registered is not None:
        if entry.sha256 and registered != entry.sha256.lower():
            raise Rejected(
                "sha256_mismatch",
                f"{version} is registered here with sha256 {registered}, the plan says "
                f"{entry.sha256}: a version's bytes never change",
            )
        return False
    try:
        await _fetch_verify_register(sessions, client, entry, settings)
    except CloudRefused as exc:
        raise Rejected("fetch_failed", str(exc)) from None
    except (Conflict, InvalidInput) as exc:
        raise Rejected("not_registered", str(exc)) from None
    return True


def _unchanged(current: domain.Assignment | None, entry: Any) -> bool:
    return current is not None and (current.version, current.rollout_id, current.stage) == (
        entry.model_version,
        entry.rollout_id,
        int(entry.stage),
    )


async def _assign_nodes(sessions: Sessions, entries: list[Any], summary: dict[str, Any]) -> None:
    async with sessions() as session:
        current = await storage.own_assignments(
            session, node_ids=[entry.node_id for entry in entries]
        )
    for entry in entries:
        before = current.get(entry.node_id)
        if _unchanged(before, entry):
            summary["unchanged"] += 1
            continue
        # A rollout that ended by going back (rollback, stop): the node may still hold the
        # version as its previous one, and switches without a download.
        back = (
            before is not None
            and before.rollout_id != ""
            and entry.rollout_id == ""
            and before.version != entry.model_version
        )
        try:
            await distribution.assign(
                sessions,
                node_id=entry.node_id,
                version=entry.model_version,
                rollout_id=entry.rollout_id,
                stage=int(entry.stage),
                rollback=back,
            )
        except (FabError, InvalidInput) as exc:
            logger.error("cloud plan: cannot assign node %r: %s", entry.node_id, exc)
            summary["invalid"].append({"node_id": entry.node_id, "detail": str(exc)})
            continue
        summary["assigned"] += 1


async def apply_plan(
    sessions: Sessions, client: CloudClient, plan: Any, settings: FabSettings, *, now: datetime
) -> dict[str, Any]:
    """Register and assign what the cloud's GetDeployments plan says (see the module doc).

    Returns:
        A JSON-ready summary: the plan's time, whether it was ignored as stale, versions
        registered, nodes assigned, unchanged and refused, and the rejected versions.

    Raises:
        CloudUnavailable: the API could not be reached (the plan is applied again next time).
    """
    generated = plan_time(plan)
    summary: dict[str, Any] = {
        "generated_at": generated.isoformat() if generated else None,
        "stale": False,
        "nodes": len(plan.deployments),
        "registered": [],
        "assigned": 0,
        "unchanged": 0,
        "invalid": [],
        "rejected": [],
    }
    async with sessions() as session:
        held = await storage.get_state(session, name=PLAN_STATE)
    held_at = datetime.fromisoformat(str(held.value["generated_at"])) if held else None
    if generated is not None and held_at is not None and generated < held_at:
        logger.warning("cloud plan of %s is older than the applied %s: ignored", generated, held_at)
        summary["stale"] = True
        return summary
    by_version: dict[str, list[Any]] = defaultdict(list)
    for entry in plan.deployments:
        by_version[entry.model_version].append(entry)
    for version, entries in sorted(by_version.items()):
        try:
            if await _ensure_registered(sessions, client, entries[0], settings):
                summary["registered"].append(version)
        except Rejected as exc:
            ARTIFACTS_REJECTED.labels(exc.reason).inc()
            logger.error(
                "cloud plan: artifact %s REJECTED (%s): %s; nothing registered, nodes %s keep "
                "their model",
                version,
                exc.reason,
                exc.detail,
                ", ".join(e.node_id for e in entries),
            )
            summary["rejected"].append(
                {"version": version, "reason": exc.reason, "detail": exc.detail}
            )
            continue
        await _assign_nodes(sessions, entries, summary)
    if generated is not None:
        async with sessions() as session, session.begin():
            await storage.set_state(
                session, name=PLAN_STATE, value={"generated_at": generated.isoformat()}, now=now
            )
    return summary

"""Storing edge nodes' results: validation, idempotent batch writes, conflicts, acks.

A batch is all or nothing: one invalid result rejects the whole batch and nothing of it is
stored, so an ack always covers every sequence of the batches it answers. Redelivered results
(same node and sequence, same content) are counted as duplicates and change nothing. A result
whose (node, sequence) is stored with OTHER content is a conflict: it is not applied, it is kept
in ``result_conflicts`` for inspection, counted as ``rejected`` in the ack (resending cannot
succeed) and raises an alert (see `fab_server.services.alerts`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import InvalidArgument
from fab_server.repository import distribution as distribution_repo
from fab_server.repository import embeddings as embeddings_repo
from fab_server.repository import results as results_repo
from fab_server.services import review, review_rules
from fab_server.settings import FabSettings
from wafercore.classes import NUM_CLASSES
from wafercore.errors import InvalidInput
from wafercore.validation import check_id, check_time_range, id_problem, map_from_bytes

logger = logging.getLogger(__name__)

MAX_VERSION_CHARS = 64
"""Longest model version."""
MAX_SEQUENCE = 2**63 - 1
"""Largest sequence a BIGINT column holds."""
MAX_STEPS = 2**15 - 1
"""Largest step count a SMALLINT column holds."""
MAX_EMBEDDING = 512
"""Most values in a result's embedding (vae-v1 sends 32)."""
PROBABILITY_SUM_TOLERANCE = 1e-3
"""How far the sum of a result's probabilities may be from 1 (float32 rounding on the edge)."""
# What a redelivery must repeat exactly to be a duplicate rather than a conflict.
_CONTENT_FIELDS = (
    "wafer_id",
    "lot_id",
    "model_version",
    "prediction",
    "probabilities",
    "confidence",
    "steps",
    "latency_ms",
    "flagged",
    "review_reason",
    "novelty",
    "classified_at",
    "tested_at",
)

RESULTS_INGESTED = Counter(
    "fab_results_ingested_total", "Results stored for the first time (StreamResults)."
)
RESULTS_DUPLICATE = Counter(
    "fab_results_duplicate_total", "Redelivered results that were already stored."
)
RESULTS_REJECTED = Counter(
    "fab_results_rejected_total", "Results in batches rejected by validation (nothing stored)."
)


RESULTS_CONFLICTING = Counter(
    "fab_results_conflicting_total",
    "Results whose (node, sequence) was already stored with other content (set aside).",
)


def canonical_map(raw: domain.RawWaferMap, *, field: str) -> domain.StoredMap:
    """Check a map as its sender encoded it and return it in the canonical encoding.

    Args:
        raw: the map; WM-811K encoded values are converted by `wafercore.validation`.
        field: where the map is in the request (``results[3].wafer_map``), for errors.

    Raises:
        InvalidInput: a side outside 1..512, a length other than rows * cols, an unknown
            encoding or a value outside {0, 1, 2}.
    """
    grid = map_from_bytes(raw.rows, raw.cols, raw.values, encoding=raw.encoding, field=field)
    return domain.StoredMap(rows=raw.rows, cols=raw.cols, values=grid.tobytes())


def die_yield(wafer_map: domain.StoredMap) -> float | None:
    """Passing dies / (passing + failing dies) of a canonical map; None when it has no dies."""
    passing, failing = wafer_map.values.count(0), wafer_map.values.count(1)
    dies = passing + failing
    return passing / dies if dies else None


def _bad(index: int, name: str, reason: str) -> InvalidArgument:
    return InvalidArgument(f"results[{index}].{name}", reason)


def _check_probabilities(probabilities: tuple[float, ...], index: int) -> None:
    if len(probabilities) != NUM_CLASSES:
        raise _bad(
            index,
            "class_probabilities",
            f"has {len(probabilities)} entries, expected {NUM_CLASSES}",
        )
    total = math.fsum(probabilities)
    # The common, valid case in C builtins; a NaN fails the sum test.
    in_range = min(probabilities) >= 0.0 and max(probabilities) <= 1.0
    if in_range and abs(total - 1.0) <= PROBABILITY_SUM_TOLERANCE:
        return
    for k, p in enumerate(probabilities):
        if not 0.0 <= p <= 1.0:
            raise _bad(index, f"class_probabilities[{k}]", f"must be in [0, 1], got {p:g}")
    raise _bad(index, "class_probabilities", f"sum to {total:.6f}, not 1")


def _validate_result(result: domain.Result, index: int) -> None:
    """Raise InvalidInput naming ``results[index].<field>`` (names built only on failure)."""
    for name, value in (("wafer_id", result.wafer_id), ("lot_id", result.lot_id)):
        problem = id_problem(value)
        if problem is not None:
            raise _bad(index, name, problem)
    if not 1 <= result.sequence <= MAX_SEQUENCE:
        raise _bad(index, "sequence", f"must be in 1..{MAX_SEQUENCE}, got {result.sequence}")
    if not 0 < len(result.model_version) <= MAX_VERSION_CHARS:
        raise _bad(index, "model_version", f"must have 1 to {MAX_VERSION_CHARS} characters")
    _check_probabilities(result.probabilities, index)
    if not 0 <= result.prediction < NUM_CLASSES:
        raise _bad(
            index,
            "prediction",
            f"must be a class id 0..{NUM_CLASSES - 1}, got {result.prediction}",
        )
    if not 0.0 <= result.confidence <= 1.0:  # also false for NaN
        raise _bad(index, "confidence", f"must be in [0, 1], got {result.confidence:g}")
    if not 1 <= result.steps <= MAX_STEPS:
        raise _bad(index, "recursion_steps_used", f"must be in 1..{MAX_STEPS}, got {result.steps}")
    if not 0.0 <= result.latency_ms < math.inf:
        raise _bad(
            index,
            "inference_latency_ms",
            f"must be finite and >= 0, got {result.latency_ms:g}",
        )
    if result.novelty is not None and not math.isfinite(result.novelty):
        raise _bad(index, "novelty_score", f"must be finite, got {result.novelty}")
    if result.embedding is not None:
        if len(result.embedding) > MAX_EMBEDDING:
            raise _bad(
                index, "embedding", f"has {len(result.embedding)} values; at most {MAX_EMBEDDING}"
            )
        if not all(math.isfinite(v) for v in result.embedding):
            raise _bad(index, "embedding", "must hold finite numbers only")
    if result.classified_at.tzinfo is None:
        raise _bad(index, "classified_at", "must be timezone-aware (UTC)")
    if result.tested_at is not None:
        check_time_range(result.tested_at, f"results[{index}].tested_at")
    if result.wafer_map is not None:
        stored = result.wafer_map
        map_from_bytes(
            stored.rows, stored.cols, stored.values, encoding=0, field=f"results[{index}].wafer_map"
        )


def validate_batch(
    node_id: str, results: Sequence[domain.Result], *, max_batch: int
) -> list[domain.Result]:
    """Check a batch of one node's results.

    Args:
        node_id: the sending node.
        results: its results in increasing sequence order; an empty ``node_id`` on a result
            means the batch's node.
        max_batch: most results one batch may carry.

    Returns:
        The results, each with ``node_id`` set.

    Raises:
        InvalidInput: naming the first offending field (``results[3].confidence``).
    """
    check_id(node_id, "node_id")
    if not results:
        raise InvalidArgument("results", "is empty; a batch carries at least one result")
    if len(results) > max_batch:
        raise InvalidArgument("results", f"has {len(results)} results; at most {max_batch}")
    checked: list[domain.Result] = []
    previous = 0
    for i, result in enumerate(results):
        if not result.node_id:
            result = replace(result, node_id=node_id)
        elif result.node_id != node_id:
            raise _bad(i, "node_id", f"is {result.node_id!r}, but the batch is from {node_id!r}")
        _validate_result(result, i)
        if result.sequence <= previous:
            raise _bad(
                i,
                "sequence",
                f"is {result.sequence}, not above the previous result's {previous}: "
                "a batch is in strictly increasing sequence order",
            )
        previous = result.sequence
        checked.append(result)
    return checked


def _lot_spans(results: Sequence[domain.Result]) -> dict[str, tuple[datetime, datetime]]:
    spans: dict[str, tuple[datetime, datetime]] = {}
    for r in results:
        first, last = spans.get(r.lot_id, (r.classified_at, r.classified_at))
        spans[r.lot_id] = (min(first, r.classified_at), max(last, r.classified_at))
    return spans


async def ingest_batch(
    sessions: async_sessionmaker[AsyncSession],
    *,
    node_id: str,
    results: Sequence[domain.Result],
    settings: FabSettings,
    now: datetime | None = None,
) -> domain.IngestOutcome:
    """Store one batch of a node's results, idempotently, in one transaction.

    The results, their maps, the lots' first/last seen, the node's acked sequence and the
    review-queue entries of newly stored results commit together; the outcome (the ack) is
    returned only after the commit, so an acked result is durably stored.

    Args:
        sessions: session factory.
        node_id: the sending node.
        results: the batch, in strictly increasing sequence order.
        settings: limits and review thresholds.
        now: the receive time (UTC); the current time by default.

    Returns:
        The ack: the node's highest durably stored sequence, and how many results were new or
        duplicates.

    Raises:
        InvalidInput: the batch is invalid; nothing of it was stored.
    """
    now = now or datetime.now(UTC)
    try:
        batch = validate_batch(node_id, results, max_batch=settings.stream_max_batch)
    except InvalidInput:
        RESULTS_REJECTED.inc(len(results))
        raise
    yields = [die_yield(r.wafer_map) if r.wafer_map is not None else None for r in batch]
    async with sessions() as session, session.begin():
        stored = await results_repo.insert_results(
            session, results=batch, die_yields=yields, received_at=now
        )
        fresh = [r for r in batch if r.sequence in stored]
        conflicts = await _set_aside_conflicts(
            session, [r for r in batch if r.sequence not in stored], now=now
        )
        await results_repo.insert_maps(session, results=fresh)
        await embeddings_repo.insert_embeddings(session, results=fresh)
        await results_repo.upsert_lots(session, spans=_lot_spans(fresh))
        acked = await results_repo.advance_node(
            session, node_id=node_id, stored_up_to=batch[-1].sequence, now=now
        )
        if fresh:
            # During a rollout, canary samples are queued too (the stored results stay as sent).
            assignment = await distribution_repo.assignment_for(session, node_id=node_id)
            queued = [review_rules.with_canary_sample(r, assignment, settings) for r in fresh]
            await review.enqueue_from_results(session, results=queued, settings=settings, now=now)
    duplicates = len(batch) - len(fresh) - conflicts
    RESULTS_INGESTED.inc(len(fresh))
    RESULTS_DUPLICATE.inc(duplicates)
    RESULTS_CONFLICTING.inc(conflicts)
    return domain.IngestOutcome(
        node_id=node_id,
        acked_sequence=acked,
        accepted=len(fresh),
        duplicates=duplicates,
        rejected=conflicts,
    )


def differences(incoming: domain.Result, stored: domain.Result) -> list[str]:
    """The content fields in which a redelivered result differs from the stored one."""
    return [f for f in _CONTENT_FIELDS if getattr(incoming, f) != getattr(stored, f)]


async def _set_aside_conflicts(
    session: AsyncSession, redelivered: Sequence[domain.Result], *, now: datetime
) -> int:
    """Keep the redelivered results whose content differs from what is stored; count them."""
    if not redelivered:
        return 0
    stored = await results_repo.results_by_sequence(
        session, node_id=redelivered[0].node_id, sequences=[r.sequence for r in redelivered]
    )
    conflicts = []
    for result in redelivered:
        original = stored.get(result.sequence)
        fields = differences(result, original) if original is not None else []
        if fields:
            logger.error(
                "node %s sent sequence %d again with other content (%s): kept for inspection, "
                "the stored result is unchanged",
                result.node_id,
                result.sequence,
                ", ".join(fields),
            )
            conflicts.append(
                (result, original.wafer_id if original else "", fields, _as_json(result))
            )
    await results_repo.insert_conflicts(session, conflicts=conflicts, received_at=now)
    return len(conflicts)


def _as_json(result: domain.Result) -> dict[str, Any]:
    """The refused result as JSON (its map as rows x cols only: the bytes stay out)."""
    data = asdict(replace(result, wafer_map=None))
    for key, value in data.items():
        if isinstance(value, datetime):
            data[key] = value.isoformat()
    if result.wafer_map is not None:
        data["wafer_map"] = {"rows": result.wafer_map.rows, "cols": result.wafer_map.cols}
    return data

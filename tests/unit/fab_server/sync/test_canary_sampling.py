"""Canary sampling at ingest: both arms of a rollout sampled at the same rate, deterministically.

(The rule lives in `fab_server.services.review_rules` and is applied by
`fab_server.services.ingest`; its tests sit with the sync's because they belong to the rollout.)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.models import ResultRow, ReviewItemRow
from fab_server.services import distribution, ingest, review_rules
from fab_server.settings import FabSettings

from .conftest import NOW, make_result

Sessions = async_sessionmaker[AsyncSession]
RATE = 0.1
BASELINE, CANDIDATE = "trm-v1.0.0", "trm-v1.1.0"
WAFERS = 2000


def _settings(tmp_path: Path) -> FabSettings:
    return FabSettings(artifact_dir=tmp_path / "artifacts", canary_sample_rate=RATE)


def _confident(node_id: str, sequence: int, version: str, **changes: object) -> domain.Result:
    base = make_result(sequence, node_id=node_id, model_version=version, confidence=0.95)
    return dataclasses.replace(base, wafer_map=None, **changes)  # type: ignore[arg-type]


async def _register(sessions: Sessions, settings: FabSettings, tmp_path: Path) -> None:
    for version in (BASELINE, CANDIDATE):
        path = tmp_path / f"{version}.tar"
        path.write_bytes(version.encode())
        await distribution.register_artifact(
            sessions,
            version=version,
            artifact_format="onnx",
            path=path,
            signature=b"\x01" * 64,
            signing_key_id="cloud-test",
            settings=settings,
        )


async def _items(sessions: Sessions) -> dict[tuple[str, int], domain.ReviewReason]:
    async with sessions() as session:
        rows = (await session.execute(select(ReviewItemRow))).scalars().all()
    return {(r.node_id, r.sequence): domain.ReviewReason(r.reason) for r in rows}


async def _ingest(sessions: Sessions, settings: FabSettings, results: list[domain.Result]) -> None:
    await ingest.ingest_batch(
        sessions, node_id=results[0].node_id, results=results, settings=settings, now=NOW
    )


def test_the_uniform_draw_is_deterministic_and_uniform() -> None:
    draws = [review_rules.sample_uniform("edge-1", s) for s in range(1, 5001)]
    assert draws == [review_rules.sample_uniform("edge-1", s) for s in range(1, 5001)]
    assert all(0.0 <= d < 1.0 for d in draws)
    assert stats.kstest(draws, "uniform").pvalue > 0.001
    assert review_rules.sample_uniform("edge-1", 7) != review_rules.sample_uniform("edge-2", 7)


@pytest.mark.asyncio
async def test_both_arms_are_sampled_at_the_same_rate(sessions: Sessions, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    await _register(sessions, settings, tmp_path)
    await distribution.assign(
        sessions, node_id="edge-c", version=CANDIDATE, rollout_id="ro-1", stage=1
    )
    await distribution.assign(
        sessions, node_id="edge-p", version=BASELINE, rollout_id="ro-1", stage=2
    )
    for node, version in (("edge-c", CANDIDATE), ("edge-p", BASELINE)):
        await _ingest(
            sessions, settings, [_confident(node, s, version) for s in range(1, WAFERS + 1)]
        )
    items = await _items(sessions)
    assert set(items.values()) == {domain.ReviewReason.CANARY_SAMPLE}
    tolerance = 4 * math.sqrt(RATE * (1 - RATE) / WAFERS)
    for node in ("edge-c", "edge-p"):
        sampled = {s for (n, s) in items if n == node}
        # Exactly the draws below the rate: the rule, not chance, decides.
        assert sampled == {
            s for s in range(1, WAFERS + 1) if review_rules.sample_uniform(node, s) < RATE
        }
        assert abs(len(sampled) / WAFERS - RATE) < tolerance
    shares = [sum(1 for (n, _) in items if n == node) for node in ("edge-c", "edge-p")]
    # The two arms' sampling rates are statistically indistinguishable.
    table = np.array([[shares[0], WAFERS - shares[0]], [shares[1], WAFERS - shares[1]]])
    assert stats.chi2_contingency(table).pvalue > 0.001


@pytest.mark.asyncio
async def test_resent_results_sample_the_same_way(sessions: Sessions, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    await _register(sessions, settings, tmp_path)
    await distribution.assign(sessions, node_id="*", version=CANDIDATE, rollout_id="ro-2", stage=2)
    batch = [_confident("edge-1", s, CANDIDATE) for s in range(1, 301)]
    await _ingest(sessions, settings, batch)
    first = await _items(sessions)
    assert first
    await _ingest(sessions, settings, batch)  # redelivered: duplicates
    assert await _items(sessions) == first
    again = [review_rules.with_canary_sample(r, None, settings) for r in batch]
    assert again == batch  # no assignment: nothing sampled
    assignment = domain.Assignment(node_id="*", version=CANDIDATE, rollout_id="ro-2")
    twice = [
        [review_rules.with_canary_sample(r, assignment, settings).review_reason for r in batch]
        for _ in range(2)
    ]
    assert twice[0] == twice[1]
    assert {("edge-1", s) for s, reason in enumerate(twice[0], 1) if reason} == set(first)


@pytest.mark.asyncio
async def test_no_sample_outside_a_rollout_or_off_the_assigned_version(
    sessions: Sessions, tmp_path: Path
) -> None:
    settings = _settings(tmp_path)
    await _register(sessions, settings, tmp_path)
    await distribution.assign(sessions, node_id="edge-plain", version=BASELINE)
    await distribution.assign(
        sessions, node_id="edge-old", version=CANDIDATE, rollout_id="ro-3", stage=1
    )
    await _ingest(
        sessions, settings, [_confident("edge-plain", s, BASELINE) for s in range(1, 201)]
    )
    # Assigned the candidate but still running the baseline (not installed yet): not an arm.
    await _ingest(sessions, settings, [_confident("edge-old", s, BASELINE) for s in range(1, 201)])
    await _ingest(sessions, settings, [_confident("edge-none", s, BASELINE) for s in range(1, 201)])
    assert await _items(sessions) == {}


@pytest.mark.asyncio
async def test_the_draw_ignores_whether_the_model_flagged_the_result(
    sessions: Sessions, tmp_path: Path
) -> None:
    settings = _settings(tmp_path).model_copy(update={"canary_sample_rate": 1.0})
    await _register(sessions, settings, tmp_path)
    await distribution.assign(
        sessions, node_id="edge-c", version=CANDIDATE, rollout_id="ro-4", stage=1
    )
    unsure = _confident("edge-c", 1, CANDIDATE, confidence=0.2)
    novel = _confident("edge-c", 2, CANDIDATE, novelty=0.9)
    plain = _confident("edge-c", 3, CANDIDATE)
    await _ingest(sessions, settings, [unsure, novel, plain])
    # Every drawn wafer is a canary sample, unsure and novel ones too: a sample without them
    # would flatter the model that flags more of its mistakes.
    assert await _items(sessions) == {
        ("edge-c", 1): domain.ReviewReason.CANARY_SAMPLE,
        ("edge-c", 2): domain.ReviewReason.CANARY_SAMPLE,
        ("edge-c", 3): domain.ReviewReason.CANARY_SAMPLE,
    }
    # The stored result stays as the node sent it (a redelivery is not a conflict).
    async with sessions() as session:
        stored = await session.scalar(
            select(ResultRow.review_reason).where(
                ResultRow.node_id == "edge-c", ResultRow.sequence == 3
            )
        )
    assert stored == domain.ReviewReason.UNSPECIFIED

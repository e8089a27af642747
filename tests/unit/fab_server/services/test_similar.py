"""Similar wafers and novelty heatmaps on SQLite: stored embeddings, the index catching up, the
confirmed labels of the neighbours, and the errors that name what is wrong."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fab_server import domain
from fab_server.errors import Conflict, InvalidArgument, NotFound
from fab_server.services import ingest, review, similar
from fab_server.services.classify import Classifier
from fab_server.settings import FabSettings
from wafercore.encoding import OUT
from wafercore.errors import InvalidInput
from wafercore.synthetic import generate_dataset

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SETTINGS = FabSettings(stream_max_batch=100)
Sessions = async_sessionmaker[AsyncSession]
PROBABILITIES = (0.02, 0.02, 0.02, 0.84, 0.02, 0.02, 0.02, 0.02, 0.02)


def _result(sequence: int, embedding: tuple[float, ...] | None, **changes: Any) -> domain.Result:
    base = domain.Result(
        node_id="edge-1",
        sequence=sequence,
        wafer_id=f"W{sequence}",
        lot_id="LOT-1",
        model_version="cnn-v2.1.0",
        prediction=3,
        probabilities=PROBABILITIES,
        confidence=0.84,
        steps=1,
        latency_ms=2.0,
        flagged=False,
        classified_at=NOW + timedelta(seconds=sequence),
        embedding=embedding,
    )
    return dataclasses.replace(base, **changes)


def _near(centre: float, sequence: int) -> tuple[float, ...]:
    """A point of one of two far-apart clusters, a little further out with each sequence."""
    return (centre + 0.01 * sequence, centre, centre, centre)


async def _store(sessions: Sessions, results: list[domain.Result]) -> None:
    await ingest.ingest_batch(sessions, node_id="edge-1", results=results, settings=SETTINGS)


async def _confirm(sessions: Sessions, sequence: int, label: int) -> None:
    """An engineer relabels result ``sequence`` as ``label``."""
    item = await review.flag_for_review(
        sessions,
        request=domain.FlagRequest(
            idempotency_key=f"k{sequence}",
            node_id="edge-1",
            sequence=sequence,
            wafer_id=f"W{sequence}",
            reason=domain.ReviewReason.MANUAL,
            comment="",
            requested_by="station",
        ),
        settings=SETTINGS,
    )
    await review.claim_item(sessions, item_id=item.id, user="ana", settings=SETTINGS)
    await review.resolve(
        sessions,
        item_id=item.id,
        resolution=domain.Resolution(domain.ReviewOutcome.RELABELLED, true_label=label),
        user="ana",
    )


@pytest.mark.asyncio
async def test_the_nearest_stored_wafers_come_back_with_their_confirmed_labels(
    sessions: Sessions,
) -> None:
    index = similar.SimilarityIndex()
    await _store(
        sessions,
        [_result(s, _near(0.0, s)) for s in range(1, 11)]
        + [_result(s, _near(9.0, s)) for s in range(11, 21)]
        + [_result(21, None), _result(22, _near(0.0, 0), model_version="cnn-v9.0.0")],
    )
    await _confirm(sessions, 2, label=8)
    found = await similar.similar_wafers(sessions, index, wafer_id="W1", k=3)
    assert found.query.wafer_id == "W1"
    # Itself excluded; the same model's vectors only; nearest first.
    assert [n.result.wafer_id for n in found.neighbours] == ["W2", "W3", "W4"]
    assert [n.confirmed_label for n in found.neighbours] == [8, None, None]
    assert found.neighbours[0].distance == pytest.approx(0.01, abs=1e-6)

    # Wafers stored after the index was built are found by the next query.
    await _store(sessions, [_result(23, (0.01, 0.0, 0.0, 0.001), wafer_id="W-new")])
    again = await similar.similar_wafers(sessions, index, wafer_id="W1", k=1)
    assert [n.result.wafer_id for n in again.neighbours] == ["W-new"]


@pytest.mark.asyncio
async def test_bad_queries_say_what_is_wrong(sessions: Sessions) -> None:
    index = similar.SimilarityIndex()
    await _store(sessions, [_result(1, None), _result(2, _near(0.0, 2))])
    with pytest.raises(InvalidArgument, match="k"):
        await similar.similar_wafers(sessions, index, wafer_id="W2", k=0)
    with pytest.raises(NotFound, match="W9"):
        await similar.similar_wafers(sessions, index, wafer_id="W9")
    with pytest.raises(Conflict, match="no embedding"):
        await similar.similar_wafers(sessions, index, wafer_id="W1")
    with pytest.raises(InvalidArgument, match="node_id"):
        await similar.similar_wafers(sessions, index, wafer_id="W2", node_id="edge-1")
    with pytest.raises(NotFound, match="edge-1/1 of wafer W2"):
        await similar.similar_wafers(sessions, index, wafer_id="W2", node_id="edge-1", sequence=1)
    with pytest.raises(InvalidInput, match="wafer_id"):
        await similar.similar_wafers(sessions, index, wafer_id="W\x00")


@pytest.mark.asyncio
async def test_an_embedding_that_is_not_finite_is_refused_by_name(sessions: Sessions) -> None:
    with pytest.raises(InvalidInput, match=r"results\[0\]\.embedding"):
        await _store(sessions, [_result(1, (0.0, float("nan")))])
    with pytest.raises(InvalidInput, match=r"results\[0\]\.embedding.*at most"):
        await _store(sessions, [_result(1, (0.0,) * (ingest.MAX_EMBEDDING + 1))])


def _stored_map(wafer: np.ndarray) -> domain.StoredMap:
    rows, cols = wafer.shape
    return domain.StoredMap(rows=rows, cols=cols, values=wafer.astype(np.uint8).tobytes())


@pytest.mark.asyncio
async def test_the_heatmap_scores_the_stored_map_die_by_die(
    sessions: Sessions, tmp_path: Path, novelty_model: Callable[..., Path]
) -> None:
    wafer = generate_dataset(1, np.random.default_rng(5)).map(3)
    await _store(sessions, [_result(1, None, wafer_map=_stored_map(wafer)), _result(2, None)])
    classifier = Classifier(novelty_model(tmp_path / "m", threshold=0.0))
    found = await similar.heatmap(sessions, classifier, wafer_id="W1")
    assert (found.novelty_model, found.threshold, found.novel) == ("vae-v0.0.1", 0.0, True)
    values = np.array(found.values, dtype=float)
    assert values.shape == wafer.shape
    assert np.isnan(values[wafer == OUT]).all() and (values[wafer != OUT] >= 0).all()
    runtime = await classifier.runtime()
    assert runtime.novelty is not None
    expected = runtime.novelty.score(runtime.novelty.prepare([wafer])).score[0]
    assert found.score == pytest.approx(float(expected))

    with pytest.raises(Conflict, match="no map is stored"):
        await similar.heatmap(sessions, classifier, wafer_id="W2")
    plain = Classifier(Path(__file__).resolve().parents[4] / "models" / "cnn-v2.0.0")
    with pytest.raises(Conflict, match="has no novelty model"):
        await similar.heatmap(sessions, plain, wafer_id="W1")

"""Similar-wafer retrieval quality: the neighbour vote and precision@k by hand, the history and
query rows of the official split, and an end-to-end run on synthetic lots with a tiny VAE
trained here and the shipped 64x64 classifier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cloud.evaluation.retrieval import (
    KINDS,
    evaluate_retrieval,
    neighbour_vote,
    precision_at_k,
    precision_by_class,
    retrieval_metrics,
    select_rows,
)
from cloud.evaluation.retrieval_commands import retrieval
from cloud.pipeline.synthetic_data import write_tiny_dataset
from cloud.training.config import TrainConfig
from cloud.training.data import Part, PreparedData
from cloud.training.trainer import BEST
from cloud.training.vae import finalize_vae, train_vae
from wafercore.classes import CLASS_NAMES
from wafercore.dataset import WaferDataset
from wafercore.readers.npz import read_npz
from wafercore.shipped import shipped_model_dir
from wafercore.splits import TEST, TRAINING

CLASSIFIER = "cnn-v2.0.0"


def test_vote_and_precision_by_hand() -> None:
    neighbours = np.array(
        [
            [0, 1, 1, 0, 2],  # 0 and 1 tie at two: 0 is nearest -> 0
            [2, 1, 1, 3, 3],  # 1 and 3 tie at two: 1 is nearer -> 1
            [4, 4, 4, 5, 5],  # plain majority -> 4
            [3, 3, 3, 3, 3],
        ]
    )
    assert neighbour_vote(neighbours).tolist() == [0, 1, 4, 3]
    truth = np.array([1, 1, 5, 3])
    precision = precision_at_k(neighbours, truth)
    np.testing.assert_allclose(precision, [2 / 5, 2 / 5, 2 / 5, 1.0])
    summary = precision_by_class(precision, truth)
    assert summary["per_class"][CLASS_NAMES[1]] == pytest.approx(2 / 5)  # mean of 2/5, 2/5
    assert summary["per_class"][CLASS_NAMES[3]] == 1.0
    assert summary["per_class"][CLASS_NAMES[0]] is None  # no query of class 0
    assert summary["macro"] == pytest.approx((2 / 5 + 2 / 5 + 1.0) / 3)  # classes 1, 3, 5
    assert summary["micro"] == pytest.approx((3 * 2 / 5 + 1.0) / 4)


def test_the_vote_beats_the_classifier_only_where_its_f1_is_higher() -> None:
    truth = np.array([0, 0, 1, 1])
    neighbours = np.array([[0, 0, 1], [0, 1, 0], [1, 1, 0], [1, 0, 1]])  # vote: all right
    classifier = np.array([0, 0, 0, 1])  # misses one wafer of class 1
    result = retrieval_metrics(neighbours, truth, classifier)
    assert result["vote"]["macro_f1"] == 1.0
    assert result["vote_beats_classifier"] == [CLASS_NAMES[0], CLASS_NAMES[1]]
    assert retrieval_metrics(neighbours, truth, truth)["vote_beats_classifier"] == []


def test_history_is_training_lots_that_share_no_lot_with_the_queries() -> None:
    maps = [np.zeros((4, 4), np.uint8)] * 6
    dataset = WaferDataset.from_maps(
        maps,
        labels=[0, 1, 2, 3, -1, 4],
        split=[TRAINING, TRAINING, TRAINING, TEST, TEST, TEST],
        lot=["a", "b", "c", "c", "d", "e"],  # lot c is on both sides; row 4 is unlabelled
    )
    history, queries = select_rows(dataset, None, None, seed=0)
    assert history.tolist() == [0, 1] and queries.tolist() == [3, 5]
    history, queries = select_rows(dataset, 1, 1, seed=0)
    assert len(history) == 1 and len(queries) == 1


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny synthetic npz with Training and Test lots and a tiny VAE trained on it."""
    root = tmp_path_factory.mktemp("retrieval")
    data = write_tiny_dataset(root / "tiny.npz", train_per_class=8, test_per_class=3)
    dataset = read_npz(data)
    train = dataset.subset(np.flatnonzero(dataset.split == TRAINING))
    config = TrainConfig.model_validate(
        {
            "kind": "vae",
            "version": "vae-v0.0.1",
            "device": "cpu",
            "input": {"size": 32, "resample": "area", "channels": ["fail", "die"]},
            "vae": {"channels": [8, 16], "latent": 4},
            "optim": {"epochs": 1, "batch_size": 32, "warmup_steps": 1, "sampling": "sqrt"},
            "augment": {"flips_rotations": False, "noise": False, "resolution_scale": None},
        }
    )
    part = Part.of(train)
    prepared = PreparedData(
        train_raw=train, train=part, val=part, test=part, provenance={"path": "synthetic"}
    )
    train_vae(config, prepared, root / "run")
    finalize_vae(root / "run" / BEST, part, root / "vae")
    return data, root / "vae"


def test_end_to_end_reports_both_kinds_and_the_better_one(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    data, vae = setup
    result = evaluate_retrieval(
        shipped_model_dir(CLASSIFIER), vae, data, tmp_path, k=5, query_limit=20
    )
    assert result["data"]["history"] == 72 and result["data"]["queries"] == 20
    assert set(result["kinds"]) == set(KINDS) and result["k"] == 5
    macro = {kind: result["kinds"][kind]["precision_at_k"]["macro"] for kind in KINDS}
    assert result["best"] == max(KINDS, key=macro.__getitem__)
    for kind in KINDS:
        one = result["kinds"][kind]
        assert set(one) == {"dim", "precision_at_k", "vote", "vote_beats_classifier", "timing"}
        values = [v for v in one["precision_at_k"]["per_class"].values() if v is not None]
        assert values and all(0.0 <= v <= 1.0 for v in values)
        assert 0.0 <= one["vote"]["macro_f1"] <= 1.0
        assert one["timing"]["ms_per_wafer"] > 0 and one["timing"]["wafers"] == 92
    assert result["kinds"]["vae_latent"]["dim"] == 4
    assert result["kinds"]["classifier_features"]["dim"] == 128
    assert 0.0 <= result["classifier"]["macro_f1"] <= 1.0
    assert json.loads((tmp_path / "retrieval.json").read_text())["best"] == result["best"]
    markdown = (tmp_path / "retrieval.md").read_text()
    assert result["command"] in markdown and "--query-limit 20" in result["command"]


def test_the_command_writes_the_reports(setup: tuple[Path, Path], tmp_path: Path) -> None:
    data, vae = setup
    args = ["--classifier", str(shipped_model_dir(CLASSIFIER)), "--novelty", str(vae)]
    args += ["--data", str(data), "--out", str(tmp_path), "--k", "3", "--history-limit", "30"]
    outcome = CliRunner().invoke(retrieval, [*args, "--query-limit", "10"])
    assert outcome.exit_code == 0, outcome.output
    assert "best:" in outcome.output
    report = json.loads((tmp_path / "retrieval.json").read_text())
    assert report["data"]["history"] == 30 and report["k"] == 3

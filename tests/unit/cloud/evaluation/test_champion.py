"""The champion: the best validation macro-F1 within the edge's compute budget, on one gate."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cloud.cli import main
from cloud.evaluation.champion import Budget, choose_champion
from cloud.evaluation.metrics import macro_f1
from cloud.training.data import Part
from wafercore.model_input import InputSpec
from wafercore.readers.npz import file_sha256, read_npz, write_npz
from wafercore.runtime import ModelRuntime
from wafercore.shipped import shipped_model_dir
from wafercore.splits import protocol_split
from wafercore.synthetic import generate_dataset


@pytest.fixture
def candidates(tmp_path: Path) -> dict[str, Path]:
    """Copies of two shipped models with their evaluation reports."""
    out = {}
    for version in ("trm-v1.1.0", "cnn-v1.1.0"):
        out[version] = tmp_path / version
        shutil.copytree(shipped_model_dir(version), out[version])
    return out


def _report(path: Path, **changes: object) -> None:
    report = json.loads((path / "report.json").read_text())
    report.update(changes)
    (path / "report.json").write_text(json.dumps(report))


def test_the_best_validation_figure_within_the_budget_wins(candidates: dict[str, Path]) -> None:
    chosen, ranked = choose_champion(list(candidates.values()))
    assert chosen is not None and chosen.version == "cnn-v1.1.0"  # 0.812 against 0.804
    assert [c.version for c in ranked] == ["cnn-v1.1.0", "trm-v1.1.0"]
    assert ranked[0].validation_macro_f1 == pytest.approx(0.8121, abs=1e-4)
    assert ranked[0].test_macro_f1 == pytest.approx(0.5687, abs=1e-4)  # reported, not ranked


def test_a_candidate_over_the_budget_is_not_eligible(candidates: dict[str, Path]) -> None:
    _report(candidates["cnn-v1.1.0"], gflops_per_wafer=0.5)
    chosen, ranked = choose_champion(list(candidates.values()))
    assert chosen is not None and chosen.version == "trm-v1.1.0"
    assert ranked[-1].over_budget == ("0.500 GFLOP/wafer",)
    tight = Budget(latency_p99_ms=0.1)
    assert choose_champion(list(candidates.values()), tight)[0] is None


def test_the_cli_prints_the_ranking_and_refuses_an_unevaluated_model(
    candidates: dict[str, Path],
) -> None:
    args = [arg for path in candidates.values() for arg in ("--model", str(path))]
    answer = CliRunner().invoke(main, ["champion", *args])
    assert answer.exit_code == 0, answer.output
    assert answer.output.strip().endswith(f"champion: cnn-v1.1.0 ({candidates['cnn-v1.1.0']})")
    (candidates["trm-v1.1.0"] / "report.json").unlink()
    refused = CliRunner().invoke(main, ["champion", *args])
    assert refused.exit_code == 1 and "no report.json" in refused.output


# Candidates of different splits: judged on one gate part none of them trained on -----------


@pytest.fixture(scope="module")
def two_splits_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 lots of three wafers: the first 30 lots ``Training``, the rest ``Test``."""
    dataset = generate_dataset(20, np.random.default_rng(3), sizes=(16, 24))
    dataset.lot = np.array([f"L{i // 3}" for i in range(len(dataset))])
    dataset.split = np.where(np.arange(len(dataset)) < 90, "Training", "Test")
    path = tmp_path_factory.mktemp("data") / "labelled.npz"
    write_npz(dataset, path)
    return path


@pytest.fixture
def split_candidate(
    tmp_path: Path, area_classifier: Callable[..., Path], two_splits_file: Path
) -> Callable[..., Path]:
    """A tiny evaluated classifier trained (its provenance says) under ``protocol`` and ``seed``."""

    def make(seed: int, protocol: str, split_seed: int = 0, sha: str | None = None) -> Path:
        data = {
            "sha256": sha or file_sha256(two_splits_file),
            "protocol": protocol,
            "val_fraction": 0.3,
            "seed": split_seed,
        }
        extra = {"data": data, "validation": {"macro_f1_halted": 0.9 - seed / 10}}
        path = area_classifier(
            tmp_path / f"m{seed}", version=f"cnn-v0.0.{seed}", seed=seed, extra=extra
        )
        report = {
            "macro_f1": 0.5,
            "gflops_per_wafer": 0.01,
            "params": 100,
            "latency_ms": {"p99": 1},
        }
        report["data"] = {"split": "Test" if protocol == "official" else f"{protocol}-test"}
        (path / "report.json").write_text(json.dumps(report))
        return path

    return make


def test_candidates_of_different_splits_are_judged_on_lots_none_trained_on(
    split_candidate: Callable[..., Path], two_splits_file: Path
) -> None:
    official, production = split_candidate(1, "official"), split_candidate(2, "production")
    with pytest.raises(ValueError, match=r"validated on different lots.*--data"):
        choose_champion([official, production])
    _, ranked = choose_champion([official, production], data_path=two_splits_file)
    # The official candidate's validation lots are Training lots the production one trained on;
    # the production candidate's are reviewed Test lots the official one never saw.
    dataset = read_npz(two_splits_file)
    gate = Part.of(dataset.subset(protocol_split(dataset, "production", 0.3, 0).val))
    assert {c.judged_on for c in ranked} == {
        f"cnn-v0.0.2's validation lots (production, {len(gate):,} wafers)"
    }
    for candidate in ranked:
        inputs = gate.inputs(InputSpec(16, "area", ("fail", "die")), 0, len(gate))
        served = ModelRuntime.load(candidate.path).predict(inputs)
        assert candidate.validation_macro_f1 == pytest.approx(
            macro_f1(gate.labels, served.prediction)
        )
    answer = CliRunner().invoke(
        main,
        [
            "champion",
            "--model",
            str(official),
            "--model",
            str(production),
            "--data",
            str(two_splits_file),
        ],
    )
    assert answer.exit_code == 0, answer.output
    assert "judged on cnn-v0.0.2's validation lots (production" in answer.output
    assert "(Test)" in answer.output and "(production-test)" in answer.output  # test parts


def test_no_common_gate_and_another_file_are_refused(
    split_candidate: Callable[..., Path], two_splits_file: Path
) -> None:
    # A random split trains on wafers of every lot, and validates on lots the other trains on.
    crossed = [split_candidate(1, "random"), split_candidate(2, "production")]
    with pytest.raises(ValueError, match="every candidate's validation lots are training lots"):
        choose_champion(crossed, data_path=two_splits_file)
    elsewhere = [split_candidate(3, "official"), split_candidate(4, "production", sha="0" * 64)]
    with pytest.raises(ValueError, match="m4 was not trained on"):
        choose_champion(elsewhere, data_path=two_splits_file)

"""The champion: the best validation macro-F1 within the edge's compute budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from cloud.cli import main
from cloud.evaluation.champion import Budget, choose_champion
from wafercore.shipped import shipped_model_dir


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

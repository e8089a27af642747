import json
from pathlib import Path

import numpy as np

from cloud.models.rules import RulesModel
from cloud.training.config import TrainConfig
from cloud.training.data import Part, PreparedData
from cloud.training.rules_baseline import run_rules
from wafercore.synthetic import generate_dataset


def _part(n: int, seed: int) -> Part:
    raw = generate_dataset(n, np.random.default_rng(seed), sizes=(20, 50))
    return Part.of(raw)


def test_rules_baseline_writes_its_tree_and_a_report(tmp_path: Path) -> None:
    train_raw = generate_dataset(40, np.random.default_rng(1), sizes=(20, 50))
    data = PreparedData(
        train_raw=train_raw,
        train=Part.of(train_raw),
        val=_part(5, 2),
        test=_part(20, 3),
        provenance={"path": "synthetic", "sha256": "1" * 64, "protocol": "official", "seed": 0},
    )
    config = TrainConfig.model_validate({"kind": "rules", "version": "rules-v0.0.1"})
    report = run_rules(config, data, tmp_path)
    saved = json.loads((tmp_path / "rules.json").read_text())
    assert saved["data"]["sha256"] == "1" * 64
    model = RulesModel.from_dict(saved["tree"])
    probs = model.predict_proba_grids(data.test.grids)
    assert np.isclose(report["accuracy"], (probs.argmax(1) == data.test.labels).mean())
    assert report["macro_f1"] > 0.4  # synthetic classes are easy; chance is 0.11
    assert json.loads((tmp_path / "report.json").read_text())["model_version"] == "rules-v0.0.1"

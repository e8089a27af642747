import json
from typing import Any

import numpy as np
import pytest

from cloud.models.rules import RulesModel, fit_tree
from wafercore.classes import NUM_CLASSES
from wafercore.features import spatial_features
from wafercore.preprocessing import dataset_to_grids
from wafercore.synthetic import generate_dataset


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    dataset = generate_dataset(40, np.random.default_rng(7))
    grids = dataset_to_grids(dataset)
    features = spatial_features(grids).matrix()
    return {"grids": grids, "x": features, "y": dataset.labels, "train": 240}


@pytest.mark.parametrize("class_weight", ["balanced", None])
def test_numpy_predict_proba_equals_sklearn(data: dict[str, Any], class_weight: Any) -> None:
    n, x, y = data["train"], data["x"], data["y"]
    tree = fit_tree(x[:n], y[:n], class_weight=class_weight, min_samples_leaf=3)
    model = RulesModel.from_sklearn(tree)
    assert np.array_equal(model.leaves(x), tree.apply(x.astype(np.float32)))
    assert np.array_equal(model.predict_proba(x), tree.predict_proba(x))
    assert model.depth == tree.get_depth()


def test_features_on_a_threshold_go_the_way_sklearn_sends_them(data: dict[str, Any]) -> None:
    n, x, y = data["train"], data["x"], data["y"]
    tree = fit_tree(x[:n], y[:n])
    model = RulesModel.from_sklearn(tree)
    internal = np.flatnonzero(model.children_left >= 0)
    probe = np.repeat(x[:1], 3 * len(internal), axis=0)
    for k, node in enumerate(internal):
        t = model.threshold[node]
        # Exactly on the threshold and one float32/float64 ulp either side of it.
        probe[3 * k : 3 * k + 3, model.feature[node]] = [t, np.nextafter(t, -1), np.nextafter(t, 2)]
    assert np.array_equal(model.leaves(probe), tree.apply(probe.astype(np.float32)))


def test_classes_missing_from_training_get_probability_zero(data: dict[str, Any]) -> None:
    keep = data["y"] != 4
    tree = fit_tree(data["x"][keep], data["y"][keep])
    proba = RulesModel.from_sklearn(tree).predict_proba(data["x"])
    assert proba.shape == (len(data["x"]), NUM_CLASSES)
    assert np.all(proba[:, 4] == 0)
    assert np.array_equal(proba[:, tree.classes_], tree.predict_proba(data["x"]))


def test_json_round_trip_is_exact(data: dict[str, Any]) -> None:
    model = RulesModel.fit(data["x"], data["y"], seed=3)
    text = json.dumps(model.to_dict())
    restored = RulesModel.from_dict(json.loads(text))
    assert restored.to_dict() == model.to_dict()
    assert np.array_equal(restored.predict_proba(data["x"]), model.predict_proba(data["x"]))
    assert restored.params == {
        "max_depth": 10,
        "min_samples_leaf": 5,
        "class_weight": "balanced",
        "seed": 3,
    }


def test_from_dict_rejects_foreign_or_malformed_trees(data: dict[str, Any]) -> None:
    good = RulesModel.fit(data["x"], data["y"]).to_dict()
    with pytest.raises(ValueError, match="format"):
        RulesModel.from_dict({**good, "format": "pickle"})
    with pytest.raises(ValueError, match="features"):
        RulesModel.from_dict({**good, "feature_names": good["feature_names"][::-1]})
    cyclic = {**good, "children_left": [0, *good["children_left"][1:]]}
    with pytest.raises(ValueError, match="children"):
        RulesModel.from_dict(cyclic)


def test_beats_chance_on_synthetic_maps(data: dict[str, Any]) -> None:
    n, grids, y = data["train"], data["grids"], data["y"]
    model = RulesModel.fit(data["x"][:n], y[:n])
    proba = model.predict_proba_grids(grids[n:])
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert np.array_equal(proba, model.predict_proba(data["x"][n:]))
    accuracy = float(np.mean(proba.argmax(axis=1) == y[n:]))
    assert accuracy > 0.45  # chance is 1/9


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="24"):
        RulesModel.fit(np.zeros((10, 5)), np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="labels"):
        RulesModel.fit(np.zeros((10, 24)), np.full(10, 9))

import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from cloud.evaluation import metrics as m
from wafercore.classes import CLASS_NAMES


def _noisy_predictions(n: int, accuracy: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 9, n)
    return y, np.where(rng.random(n) < accuracy, y, rng.integers(0, 9, n))


def _probs_with_top(conf: np.ndarray, top: np.ndarray) -> np.ndarray:
    """(N, 9) rows whose largest probability is ``conf`` at class ``top``, the rest spread."""
    p = np.repeat(((1 - conf) / 8)[:, None], 9, axis=1)
    p[np.arange(len(top)), top] = conf
    return p


def test_confusion_matrix_and_per_class_by_hand() -> None:
    y_true = [0, 0, 1, 1, 1, 2]
    y_pred = [0, 1, 1, 1, 0, 0]
    cm = m.confusion_matrix(y_true, y_pred, k=3)
    assert cm.tolist() == [[1, 1, 0], [1, 2, 0], [1, 0, 0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        per = m.per_class(y_true, y_pred, names=("a", "b", "c"))
    assert per["a"] == pytest.approx({"precision": 1 / 3, "recall": 1 / 2, "f1": 0.4, "support": 2})
    assert per["b"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    # Never predicted: precision undefined → 0, no warning.
    assert per["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m.accuracy(y_true, y_pred) == pytest.approx(0.5)
    assert m.macro_f1(y_true, y_pred, k=3) == pytest.approx((0.4 + 2 / 3 + 0) / 3)
    assert list(m.per_class(y_true, y_pred)) == list(CLASS_NAMES)


def test_macro_f1_skips_absent_classes_and_matches_sklearn() -> None:
    # Class 8 is predicted but never true: it does not enter the mean.
    y_true, y_pred = [0, 1, 1, 2], [0, 1, 8, 2]
    expected = f1_score(y_true, y_pred, average="macro", labels=[0, 1, 2])
    assert m.macro_f1(y_true, y_pred) == pytest.approx(expected)
    assert m.macro_f1([], []) == 0.0
    assert m.accuracy([], []) == 0.0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=1, max_size=60))
def test_macro_f1_equals_sklearn_on_random_labels(pairs: list[tuple[int, int]]) -> None:
    y_true, y_pred = np.array(pairs).T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's own zero-division warnings
        expected = f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true))
    assert m.macro_f1(y_true, y_pred) == pytest.approx(expected)


def test_labels_are_validated() -> None:
    with pytest.raises(ValueError, match="lie in"):
        m.confusion_matrix([0, 9], [0, 1])
    with pytest.raises(ValueError, match="differ"):
        m.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="integer"):
        m.accuracy([0.5], [0])


def test_ece_is_small_when_calibrated_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(0)
    n = 20_000
    conf = rng.uniform(0.2, 1.0, n)
    y = rng.integers(0, 9, n)
    correct = rng.random(n) < conf
    top = np.where(correct, y, (y + rng.integers(1, 9, n)) % 9)
    assert m.ece(_probs_with_top(conf, top), y) < 0.02
    overconfident = _probs_with_top(np.full(n, 0.99), np.where(rng.random(n) < 0.5, y, (y + 1) % 9))
    assert m.ece(overconfident, y) == pytest.approx(0.49, abs=0.02)
    bins = m.reliability_bins(overconfident, y)
    assert sum(b["count"] for b in bins) == n and bins[-1]["count"] == n


def test_brier_by_hand() -> None:
    y = np.array([0, 3])
    assert m.brier(np.eye(9)[y], y) == 0.0
    assert m.brier(np.full((2, 9), 1 / 9), y) == pytest.approx(8 / 9)
    assert m.brier(np.eye(9)[[1, 2]], y) == pytest.approx(2.0)


def test_aucs_match_sklearn_and_skip_classes_without_positives() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 9, 400)
    logits = rng.normal(size=(400, 9)) + 1.5 * np.eye(9)[y]
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert m.macro_roc_auc(p, y) == pytest.approx(roc_auc_score(y, p, multi_class="ovr"))
    ap = np.mean([average_precision_score(y == c, p[:, c]) for c in range(9)])
    assert m.macro_pr_auc(p, y) == pytest.approx(ap)
    y_few = np.where(y == 5, 0, y)  # class 5 has no positives
    present = [c for c in range(9) if c != 5]
    expected = np.mean([roc_auc_score(y_few == c, p[:, c]) for c in present])
    assert m.macro_roc_auc(p, y_few) == pytest.approx(expected)
    assert np.isnan(m.macro_roc_auc(p[:3], np.zeros(3, np.int64)))  # one class: undefined


def test_bootstrap_ci_contains_estimate_and_narrows_with_n() -> None:
    widths = []
    for n in (500, 20_000):
        y, p = _noisy_predictions(n, 0.85, seed=n)
        ci = m.bootstrap_ci(y, p, n=1000, seed=0)
        assert ci["accuracy"][0] <= m.accuracy(y, p) <= ci["accuracy"][1]
        assert ci["macro_f1"][0] <= m.macro_f1(y, p) <= ci["macro_f1"][1]
        widths.append(ci["accuracy"][1] - ci["accuracy"][0])
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(40)
    assert m.bootstrap_ci(y, p, seed=1) == m.bootstrap_ci(y, p, seed=1)


def test_bootstrap_of_100k_rows_is_fast() -> None:
    y, p = _noisy_predictions(100_000, 0.9, seed=0)
    start = time.perf_counter()
    ci = m.bootstrap_ci(y, p, n=1000)
    assert time.perf_counter() - start < 2.0
    assert 0.0 < ci["accuracy"][1] - ci["accuracy"][0] < 0.01


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature(temperature: float) -> None:
    rng = np.random.default_rng(2)
    true_logits = 2.0 * rng.normal(size=(8000, 9))
    p = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((8000, 1))).argmax(axis=1)  # y ~ softmax(true logits)
    fitted = m.fit_temperature(true_logits * temperature, y)
    assert fitted == pytest.approx(temperature, rel=0.06)


def _steps_data(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three steps that get better, with a halting head that is confident when right."""
    rng = np.random.default_rng(seed)
    n = 600
    y = rng.integers(0, 9, n)
    probs, halt = [], []
    for s in range(3):
        logits = rng.normal(size=(n, 9)) + (1.0 + 1.5 * s) * np.eye(9)[y]
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        right = p.argmax(axis=1) == y
        probs.append(p)
        halt.append(np.clip(np.where(right, 0.75, 0.3) + rng.normal(0, 0.15, n), 0, 1))
    return np.stack(probs), np.stack(halt), y


def test_halted_predictions_follow_the_rule() -> None:
    probs, halt, _ = _steps_data()
    p0, steps0 = m.halted_predictions(probs, halt, 0.0)
    assert np.all(steps0 == 1) and np.array_equal(p0, probs[0])
    p_all, steps_all = m.halted_predictions(probs, halt, 1.01)
    assert np.all(steps_all == 3) and np.array_equal(p_all, probs[2])
    tiny = np.zeros((3, 3, 9))
    tiny_halt = np.array([[0.9, 0.1, 0.1], [0.9, 0.8, 0.1], [0.0, 0.9, 0.1]])
    _, steps = m.halted_predictions(tiny, tiny_halt, 0.8)
    assert steps.tolist() == [1, 2, 3]


@pytest.mark.parametrize("drop", [0.0, 0.005, 0.05])
def test_tuned_threshold_respects_max_f1_drop(drop: float) -> None:
    probs, halt, y = _steps_data()
    threshold, sweep = m.tune_halt_threshold(probs, halt, y, max_f1_drop=drop)
    reference = m.macro_f1(y, probs[-1].argmax(axis=1))
    chosen = next(r for r in sweep if r["threshold"] == threshold)
    assert chosen["macro_f1"] >= reference - drop - 1e-12
    ok = [r for r in sweep if r["macro_f1"] >= reference - drop - 1e-12]
    assert chosen["avg_steps"] == min(r["avg_steps"] for r in ok)
    assert [r["threshold"] for r in sweep] == list(m.DEFAULT_HALT_THRESHOLDS)
    assert sweep[-1]["avg_steps"] == 3.0


def test_a_looser_drop_buys_fewer_steps() -> None:
    probs, halt, y = _steps_data()
    strict, sweep = m.tune_halt_threshold(probs, halt, y, max_f1_drop=0.0)
    loose, _ = m.tune_halt_threshold(probs, halt, y, max_f1_drop=0.2)
    steps = {r["threshold"]: r["avg_steps"] for r in sweep}
    assert steps[loose] < steps[strict]


def test_per_step_accuracy_improves_on_the_synthetic_steps() -> None:
    probs, _, y = _steps_data()
    acc = m.per_step_accuracy(probs, y)
    assert len(acc) == 3 and acc[0] < acc[1] < acc[2]


def test_size_buckets_by_longest_side() -> None:
    shapes = np.array([[29, 10], [30, 5], [10, 49], [69, 69], [70, 1], [12, 80]])
    y_true = np.array([0, 1, 2, 3, 4, 5])
    y_pred = np.array([0, 1, 2, 0, 4, 0])
    buckets = m.size_bucket_accuracy(y_true, y_pred, shapes)
    assert [b["bucket"] for b in buckets] == ["<30", "30-39", "40-49", "50-69", ">=70"]
    assert [b["n"] for b in buckets] == [1, 1, 1, 1, 2]
    assert [b["accuracy"] for b in buckets] == [1.0, 1.0, 1.0, 0.0, 0.5]
    empty = m.size_bucket_accuracy([0], [0], [[20, 20]])
    assert empty[1] == {"bucket": "30-39", "n": 0, "accuracy": None, "macro_f1": None}


def test_confusion_pairs_and_top_errors() -> None:
    cm = np.zeros((9, 9), np.int64)
    cm[3, 4], cm[4, 3], cm[1, 2], cm[0, 0] = 5, 2, 7, 50
    pairs = m.confusion_pairs(cm, top=5)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        (1, 2, 7),
        (3, 4, 5),
        (4, 3, 2),
    ]
    probs = _probs_with_top(np.array([0.9, 0.95, 0.5, 0.99]), np.array([1, 2, 3, 0]))
    errors = m.top_errors(probs, np.array([1, 0, 0, 0]), top=5)
    assert [e["index"] for e in errors] == [1, 2]
    assert errors[0]["predicted"] == 2 and errors[0]["confidence"] == pytest.approx(0.95)

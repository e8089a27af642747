"""Drift and A/B statistics against hand-computed cases."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import pytest
from sklearn.metrics import f1_score

from cloud.analytics import stats as s
from cloud.settings import DriftSettings

REFERENCE = [40, 10, 10, 10, 10, 5, 5, 5, 5]  # shares 0.40, 0.10 x4, 0.05 x4


# ------------------------------------------------------------------------------------- PSI


def test_psi_by_hand() -> None:
    current = [30, 20, 10, 10, 10, 5, 5, 5, 5]
    # Only classes 0 and 1 differ:
    #   (0.30 - 0.40) * ln(0.30 / 0.40) = (-0.1) * (-0.2876821) = 0.0287682
    #   (0.20 - 0.10) * ln(0.20 / 0.10) = ( 0.1) * ( 0.6931472) = 0.0693147
    #   sum = 0.0980829: just under the 0.1 "investigate" line.
    expected = -0.1 * math.log(0.75) + 0.1 * math.log(2.0)
    assert expected == pytest.approx(0.0980829, abs=1e-7)
    assert s.psi(REFERENCE, current) == pytest.approx(expected, rel=1e-12)
    assert s.psi_band(s.psi(REFERENCE, current), DriftSettings()) == "stable"


def test_psi_of_shares_equals_psi_of_counts() -> None:
    current = [10, 40, 10, 10, 10, 5, 5, 5, 5]
    shares = [c / 100 for c in REFERENCE]
    # 0.1 <-> 0.4 swap: (0.1 - 0.4) ln(0.25) + (0.4 - 0.1) ln(4) = 0.6 ln 4 = 0.8317766
    assert s.psi(shares, current) == pytest.approx(0.6 * math.log(4.0), rel=1e-12)


def test_psi_identical_is_zero() -> None:
    assert s.psi(REFERENCE, REFERENCE) == 0.0
    assert s.psi(REFERENCE, [4 * c for c in REFERENCE]) == pytest.approx(0.0, abs=1e-15)
    with_empty = [5, 0, 1, 1, 1, 1, 1, 1, 1]
    assert s.psi(with_empty, with_empty) == 0.0


def test_psi_empty_class_uses_the_floor() -> None:
    assert s.PSI_FLOOR == 1e-4
    reference = [1] * 9  # 1/9 each
    current = [1] * 8 + [0]  # 1/8 for eight classes, class 8 empty
    # Floor: class 8 gets 1e-4, then the vector is renormalised by 1 + 1e-4.
    total = 1 + 1e-4
    c, c8, r = (1 / 8) / total, 1e-4 / total, 1 / 9
    expected = 8 * (c - r) * math.log(c / r) + (c8 - r) * math.log(c8 / r)
    assert expected == pytest.approx(0.7916, abs=1e-4)
    value = s.psi(reference, current)
    assert math.isfinite(value)
    assert value == pytest.approx(expected, rel=1e-12)
    # Symmetric: an empty reference class is floored the same way.
    assert s.psi(current, reference) == pytest.approx(expected, rel=1e-12)


def test_class_shares_floor_and_renormalise() -> None:
    shares = s.class_shares([3, 1, 0, 0, 0, 0, 0, 0, 0])
    total = 0.75 + 0.25 + 7e-4
    assert shares == pytest.approx([0.75 / total, 0.25 / total] + [1e-4 / total] * 7)
    assert shares.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("reference", "current", "message"),
    [
        ([1] * 8, [1] * 9, "reference_counts must hold 9"),
        ([1] * 9, [1] * 10, "current_counts must hold 9"),
        ([1] * 8 + [-1], [1] * 9, "reference_counts must not be negative"),
        ([1] * 9, [0] * 9, "current_counts must not be all zero"),
        ([1] * 9, [math.nan] + [1] * 8, "current_counts must be finite"),
    ],
)
def test_psi_rejects_bad_input(reference: list[float], current: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        s.psi(reference, current)


@pytest.mark.parametrize(
    ("value", "band"),
    [
        (0.0, "stable"),
        (0.0999, "stable"),
        (0.1, "investigate"),
        (0.25, "investigate"),
        (0.2501, "retrain"),
        (3.0, "retrain"),
    ],
)
def test_psi_band(value: float, band: str) -> None:
    assert s.psi_band(value, DriftSettings()) == band


# -------------------------------------------------------------------------------------- KS


def test_ks_on_shifted_samples() -> None:
    reference = np.linspace(0.0, 1.0, 200)
    # Shifted by 0.5: just below 0.5 the reference CDF is 100/200 and the current CDF 0.
    statistic, p_value = s.ks_test(reference, reference + 0.5)
    assert statistic == pytest.approx(0.5)
    assert p_value < 1e-10


def test_ks_identical_samples() -> None:
    sample = np.linspace(0.0, 1.0, 50)
    assert s.ks_test(sample, sample) == (0.0, 1.0)


def test_ks_rejects_empty() -> None:
    with pytest.raises(ValueError, match="current must be a non-empty"):
        s.ks_test([1.0, 2.0], [])


# --------------------------------------------------------------------------- halting trend

D0 = date(2026, 11, 1)


def test_halting_trend_weighted_daily_means() -> None:
    settings = DriftSettings(halting_min_days=3, alpha=0.05)
    # Day 0 has two nodes: (1.0 * 100 + 2.0 * 300) / 400 = 1.75; then 1.85, 1.95: +0.1 a day.
    days = [D0, D0, D0 + timedelta(1), D0 + timedelta(2)]
    trend = s.halting_trend(days, [1.0, 2.0, 1.85, 1.95], [100, 300, 50, 70], settings)
    assert trend is not None
    assert trend.slope_per_day == pytest.approx(0.1)
    assert trend.p_value < 1e-6
    assert trend.rising
    assert trend.days == 3


def test_halting_trend_flat_and_falling_are_not_rising() -> None:
    settings = DriftSettings(halting_min_days=3)
    days = [D0 + timedelta(i) for i in range(4)]
    flat = s.halting_trend(days, [1.5] * 4, [10] * 4, settings)
    assert flat is not None
    assert (flat.slope_per_day, flat.p_value, flat.rising) == (0.0, 1.0, False)
    falling = s.halting_trend(days, [2.0, 1.9, 1.8, 1.7], [10] * 4, settings)
    assert falling is not None
    assert falling.slope_per_day == pytest.approx(-0.1)
    assert not falling.rising


def test_halting_trend_noisy_rise_is_not_significant() -> None:
    days = [D0 + timedelta(i) for i in range(4)]
    trend = s.halting_trend(days, [1.0, 2.0, 1.1, 2.1], [10] * 4, DriftSettings())
    assert trend is not None
    assert trend.slope_per_day > 0
    assert trend.p_value > 0.05
    assert not trend.rising


def test_halting_trend_needs_min_days_with_wafers() -> None:
    settings = DriftSettings(halting_min_days=3)
    days = [D0, D0 + timedelta(1), D0 + timedelta(2)]
    # The third day has no wafers: two days left.
    assert s.halting_trend(days, [1.0, 1.1, 1.2], [10, 10, 0], settings) is None
    assert s.halting_trend([], [], [], settings) is None


def test_halting_trend_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        s.halting_trend([D0], [1.0, 2.0], [1], DriftSettings())
    with pytest.raises(ValueError, match="weights must not be negative"):
        s.halting_trend([D0], [1.0], [-1], DriftSettings())


# ------------------------------------------------------------------- accuracy and Wilson


def test_class_accuracy_with_wilson_by_hand() -> None:
    pairs = [(0, 0)] * 8 + [(0, 1)] * 2 + [(4, 4)] * 3
    result = s.class_accuracy(pairs, alpha=0.05)
    assert list(result) == ["None", "Edge-Ring"]
    none = result["None"]
    assert (none.n, none.correct, none.accuracy) == (10, 8, 0.8)
    # Wilson: centre (p + z^2/2n) / (1 + z^2/n), half-width z / (1 + z^2/n) *
    # sqrt(p(1-p)/n + z^2/4n^2), with z = 1.959964, p = 0.8, n = 10 -> [0.4902, 0.9433].
    z, p, n = 1.959963984540054, 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert (none.low, none.high) == pytest.approx((centre - half, centre + half))
    assert (none.low, none.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert result["Edge-Ring"].accuracy == 1.0
    assert result["Edge-Ring"].high == pytest.approx(1.0)


def test_class_accuracy_empty_and_bad_ids() -> None:
    assert s.class_accuracy([]) == {}
    with pytest.raises(ValueError, match="pairs must hold class ids"):
        s.class_accuracy([(0, 9)])


# ------------------------------------------------------------------ macro-F1 and bootstrap


def test_macro_f1_counts_classes_present_in_either() -> None:
    # Class 0: F1 1. Class 1: tp 1, 2 true, 1 predicted: 2/3. Class 2: predicted, never
    # true: F1 0 and counted. Mean over {0, 1, 2} = (1 + 2/3 + 0) / 3 = 5/9 (true classes
    # only would give 5/6).
    assert s.macro_f1([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(5 / 9)
    assert s.macro_f1([], []) == 0.0


def test_batched_macro_f1_matches_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    true = rng.integers(0, 9, (5, 300))
    pred = np.where(rng.random((5, 300)) < 0.7, true, rng.integers(0, 9, (5, 300)))
    pred[0] = np.minimum(pred[0], 6)  # a row with classes 7, 8 never predicted
    batched = s._batched_macro_f1(true, pred)
    expected = [
        f1_score(t, p, average="macro", zero_division=0) for t, p in zip(true, pred, strict=True)
    ]
    assert batched == pytest.approx(expected, rel=1e-12)


def _arm(n: int, accuracy: float, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 9, n)
    pred = np.where(rng.random(n) < accuracy, true, (true + 1) % 9)
    return list(zip(true.tolist(), pred.tolist(), strict=True))


def test_bootstrap_identical_arms_interval_contains_zero() -> None:
    arm = _arm(400, 0.8, seed=1)
    diff, low, high = s.bootstrap_f1_difference(arm, arm, 500, 0.95, seed=0)
    assert diff == 0.0
    assert low < 0.0 < high


def test_bootstrap_perfect_identical_arms_is_degenerate_zero() -> None:
    arm = [(c, c) for c in range(9)] * 5
    assert s.bootstrap_f1_difference(arm, arm, 200, 0.95, seed=0) == (0.0, 0.0, 0.0)


def test_bootstrap_clearly_better_arm() -> None:
    canary, control = _arm(400, 0.95, seed=1), _arm(400, 0.70, seed=2)
    diff, low, high = s.bootstrap_f1_difference(canary, control, 500, 0.95, seed=0)
    assert diff == pytest.approx(
        s.macro_f1(*zip(*canary, strict=True)) - s.macro_f1(*zip(*control, strict=True))
    )
    assert 0.0 < low < diff < high
    # Reversed arms: the interval lies below zero.
    _, _, high_rev = s.bootstrap_f1_difference(control, canary, 500, 0.95, seed=0)
    assert high_rev < 0.0


def test_bootstrap_is_reproducible_with_its_seed() -> None:
    canary, control = _arm(100, 0.8, seed=1), _arm(120, 0.75, seed=2)
    first = s.bootstrap_f1_difference(canary, control, 200, 0.9, seed=7)
    assert s.bootstrap_f1_difference(canary, control, 200, 0.9, seed=7) == first


@pytest.mark.parametrize(
    ("canary", "control", "name"), [([], [(0, 0)], "canary"), ([(0, 0)], [], "control")]
)
def test_bootstrap_empty_arm_raises(
    canary: list[tuple[int, int]], control: list[tuple[int, int]], name: str
) -> None:
    with pytest.raises(ValueError, match=f"{name} has no reviewed samples"):
        s.bootstrap_f1_difference(canary, control, 100, 0.95, seed=0)


# ------------------------------------------------------------------------ two proportions


def test_two_proportion_against_pooled_z_by_hand() -> None:
    # 30/100 vs 20/100: pooled p = 50/200 = 0.25, se = sqrt(0.25 * 0.75 * (1/100 + 1/100))
    # = sqrt(0.00375) = 0.0612372, z = 0.10 / 0.0612372 = 1.6329932.
    se = math.sqrt(0.25 * 0.75 * (2 / 100))
    z_hand = 0.1 / se
    assert z_hand == pytest.approx(1.6329932, abs=1e-7)
    z, p = s.two_proportion(30, 100, 20, 100)
    assert z == pytest.approx(z_hand)
    assert p == pytest.approx(math.erfc(z_hand / math.sqrt(2)))  # two-sided, 0.1025
    assert p == pytest.approx(0.1025, abs=1e-4)
    _, p_larger = s.two_proportion(30, 100, 20, 100, "larger")
    assert p_larger == pytest.approx(p / 2)
    # Against a margin of 0.05: z = (0.10 - 0.05) / se = 0.8164966.
    z_margin, p_margin = s.two_proportion(30, 100, 20, 100, "larger", value=0.05)
    assert z_margin == pytest.approx(0.05 / se)
    assert p_margin == pytest.approx(0.5 * math.erfc((0.05 / se) / math.sqrt(2)))


@pytest.mark.parametrize("counts", [(0, 50, 0, 200), (50, 50, 200, 200)])
def test_two_proportion_zero_variance_is_defined(counts: tuple[int, int, int, int]) -> None:
    # Both proportions 0 (or both 1): pooled variance 0, equal proportions -> z 0, p 1.
    for alternative in ("two-sided", "larger", "smaller"):
        assert s.two_proportion(*counts, alternative) == (0.0, 1.0)
    # Against a positive margin the difference (0) is certainly not larger than it.
    z, p = s.two_proportion(*counts, "larger", value=0.05)
    assert (z, p) == (-math.inf, 1.0)
    assert s.two_proportion(*counts, "smaller", value=0.05)[1] == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 0, 1, 10), "n_a must be positive"),
        ((1, 10, 0, 0), "n_b must be positive"),
        ((11, 10, 1, 10), r"count_a must lie in \[0, n_a=10\]"),
        ((1, 10, -1, 10), "count_b"),
    ],
)
def test_two_proportion_rejects_bad_totals(args: tuple[int, int, int, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        s.two_proportion(*args)

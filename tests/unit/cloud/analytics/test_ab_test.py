"""Every branch of the canary decision and of the post-promotion watch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from cloud.analytics.ab_test import ArmData, Decision, decide, watch_decision
from cloud.settings import RolloutSettings

SETTINGS = RolloutSettings(
    trial_window_s=3600,
    min_reviewed_per_arm=50,
    bootstrap_resamples=300,
    min_class_support=10,
    watch_s=3600,
    min_reviewed_watch=20,
)
START = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
DURING = START + timedelta(minutes=30)
AFTER = START + timedelta(hours=1)


def _pairs(per_class: int, wrong: dict[int, int] | None = None) -> list[tuple[int, int]]:
    """``per_class`` reviews of every class, all right except ``wrong[c]`` of class c, which
    are predicted as class c + 1."""
    wrong = wrong or {}
    out = []
    for c in range(9):
        bad = wrong.get(c, 0)
        out += [(c, c)] * (per_class - bad) + [(c, (c + 1) % 9)] * bad
    return out


def _noisy(n: int, accuracy: float, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 9, n)
    pred = np.where(rng.random(n) < accuracy, true, (true + 1) % 9)
    return list(zip(true.tolist(), pred.tolist(), strict=True))


def _arm(
    pairs: Sequence[tuple[int, int]],
    *,
    version: str = "v2",
    wafers: int = 1000,
    flagged: int = 50,
    p99: float | None = 30.0,
) -> ArmData:
    return ArmData(version, pairs, wafers, flagged, p99)


# Control: 70 % right on every class; same review rate as the canary by default.
CONTROL = _arm(_pairs(10, dict.fromkeys(range(9), 3)), version="v1", wafers=3000, flagged=150)


def _json(decision: Decision) -> dict[str, object]:
    text = json.dumps(decision.to_dict(), allow_nan=False)  # strict JSON: no inf / NaN
    loaded: dict[str, object] = json.loads(text)
    return loaded


def test_promote_when_significantly_better_and_guardrails_hold() -> None:
    decision = decide(_arm(_pairs(10)), CONTROL, SETTINGS, started_at=START, now=DURING)
    assert decision.action == "promote"
    assert "significant improvement" in decision.reason
    stats = decision.statistics
    assert stats["canary"]["n"] == 90
    assert stats["canary"]["macro_f1"] == 1.0
    assert stats["f1_difference"]["low"] > 0
    assert stats["canary"]["per_class"]["Edge-Ring"] == {"f1": 1.0, "support": 10}
    assert stats["review_rate"]["difference"] == pytest.approx(0.0)
    assert stats["review_rate"]["violated"] is False
    assert stats["canary"]["latency_p99_ms"] == 30.0
    _json(decision)


def test_rollback_on_p99_guardrail() -> None:
    canary = _arm(_pairs(10), p99=55.0)
    decision = decide(canary, CONTROL, SETTINGS, started_at=START, now=START)
    assert decision.action == "rollback"
    assert "p99" in decision.reason
    assert "55.0 ms >= 50.0 ms" in decision.reason


def test_rollback_on_class_f1_guardrail() -> None:
    # Edge-Loc (3): 5 of 10 right, the other 5 called Edge-Ring: tp 5, 10 true, 5 predicted
    # -> F1 = 2*5 / (10 + 5) = 0.667 < 0.70. Edge-Ring: 2*10 / (10 + 15) = 0.8 holds.
    canary = _arm(_pairs(10, {3: 5}))
    decision = decide(canary, CONTROL, SETTINGS, started_at=START, now=DURING)
    assert decision.action == "rollback"
    assert "class F1" in decision.reason
    assert "Edge-Loc F1 0.667 (n=10)" in decision.reason
    assert "Edge-Ring" not in decision.reason


def test_class_f1_guardrail_waits_for_support() -> None:
    # The same weak class with 9 reviews (< min_class_support 10) is not judged yet.
    pairs = [p for p in _pairs(10, {3: 5}) if p != (3, 3)] + [(3, 3)] * 4
    decision = decide(_arm(pairs), CONTROL, SETTINGS, started_at=START, now=DURING)
    assert decision.statistics["canary"]["per_class"]["Edge-Loc"]["support"] == 9
    assert decision.action != "rollback"


def test_rollback_on_review_rate_guardrail() -> None:
    # Canary 20 % flagged vs control 10 %: +10 points, significantly above the 5-point margin
    # (pooled p 0.125, se 0.01208, z = (0.10 - 0.05) / se = 4.14).
    canary = _arm(_pairs(10), wafers=1000, flagged=200)
    control = _arm(CONTROL.pairs, version="v1", wafers=3000, flagged=300)
    decision = decide(canary, control, SETTINGS, started_at=START, now=DURING)
    assert decision.action == "rollback"
    assert "review rate" in decision.reason
    rate = decision.statistics["review_rate"]
    assert rate["difference"] == pytest.approx(0.10)
    assert rate["z"] == pytest.approx(0.05 / np.sqrt(0.125 * 0.875 * (1 / 1000 + 1 / 3000)))
    assert rate["p_value"] < SETTINGS.alpha
    assert rate["violated"] is True


def test_review_rate_above_margin_but_not_significant_is_no_violation() -> None:
    # 12/100 vs 60/1000: +6 points, but with 100 wafers not significantly above 5 points.
    canary = _arm(_pairs(10), wafers=100, flagged=12)
    control = _arm(CONTROL.pairs, version="v1", wafers=1000, flagged=60)
    decision = decide(canary, control, SETTINGS, started_at=START, now=DURING)
    assert decision.statistics["review_rate"]["violated"] is False
    assert decision.action == "promote"


def test_wait_for_reviews_then_rollback_when_window_ends() -> None:
    canary = _arm(_pairs(4))  # 36 reviews < 50 per arm
    waiting = decide(canary, CONTROL, SETTINGS, started_at=START, now=DURING)
    assert waiting.action == "wait"
    assert "waiting for reviews: n=36/90, need 50 per arm" in waiting.reason
    ended = decide(canary, CONTROL, SETTINGS, started_at=START, now=AFTER)
    assert ended.action == "rollback"
    assert "trial window ended without a significant improvement" in ended.reason
    assert "n=36/90" in ended.reason
    assert ended.statistics["trial_ends_at"] == AFTER.isoformat()


def test_wait_while_not_significant_then_rollback() -> None:
    pairs = _noisy(300, 0.85, seed=1)
    canary, control = _arm(pairs), _arm(pairs, version="v1")
    waiting = decide(canary, control, SETTINGS, started_at=START, now=DURING)
    assert waiting.action == "wait"
    assert "not significant yet" in waiting.reason
    diff = waiting.statistics["f1_difference"]
    assert diff["difference"] == 0.0
    assert diff["low"] < 0 < diff["high"]
    ended = decide(canary, control, SETTINGS, started_at=START, now=AFTER)
    assert ended.action == "rollback"
    assert "trial window ended" in ended.reason


def test_zero_reviews_and_no_wafers() -> None:
    empty_canary, empty_control = ArmData("v2", []), ArmData("v1", [])
    decision = decide(empty_canary, empty_control, SETTINGS, started_at=START, now=START)
    assert decision.action == "wait"
    stats = _json(decision)["statistics"]
    assert isinstance(stats, dict)
    assert stats["f1_difference"] is None
    assert stats["review_rate"] is None
    assert stats["canary"]["n"] == 0
    assert stats["canary"]["macro_f1"] is None
    late = decide(empty_canary, empty_control, SETTINGS, started_at=START, now=AFTER)
    assert late.action == "rollback"


def test_zero_flagged_on_both_arms_is_json_ready() -> None:
    # Zero variance in the review-rate test: z = -inf against the margin, stored as None.
    canary = _arm(_pairs(10), flagged=0)
    control = _arm(CONTROL.pairs, version="v1", flagged=0)
    decision = decide(canary, control, SETTINGS, started_at=START, now=DURING)
    assert decision.action == "promote"
    rate = _json(decision)["statistics"]["review_rate"]  # type: ignore[index]
    assert rate["z"] is None
    assert rate["p_value"] == 1.0


def test_decision_is_reproducible() -> None:
    canary, control = _arm(_noisy(200, 0.9, 2)), _arm(_noisy(200, 0.85, 3), version="v1")
    first = decide(canary, control, SETTINGS, started_at=START, now=DURING)
    again = decide(canary, control, SETTINGS, started_at=START, now=DURING)
    assert first == again


# ------------------------------------------------------------------------------ the watch


def test_watch_rolls_back_when_below_baseline() -> None:
    decision = watch_decision((150, 200), (900, 1000), SETTINGS, promoted_at=START, now=DURING)
    assert decision.action == "rollback"
    assert "0.7500 (n=200) below the previous version's baseline 0.9000" in decision.reason
    assert decision.statistics["new"]["accuracy"] == 0.75
    _json(decision)


def test_watch_waits_for_reviews() -> None:
    decision = watch_decision((5, 19), (900, 1000), SETTINGS, promoted_at=START, now=DURING)
    assert decision.action == "wait"
    assert "19/20 reviews" in decision.reason


def test_watch_waits_when_not_below_baseline() -> None:
    decision = watch_decision((180, 200), (900, 1000), SETTINGS, promoted_at=START, now=DURING)
    assert decision.action == "wait"
    assert "0.9000 >= baseline 0.9000" in decision.reason


def test_watch_without_a_baseline_waits() -> None:
    decision = watch_decision((10, 200), (0, 0), SETTINGS, promoted_at=START, now=DURING)
    assert decision.action == "wait"
    assert "no baseline" in decision.reason
    assert decision.statistics["baseline"]["accuracy"] is None


def test_watch_over_keeps_the_version() -> None:
    decision = watch_decision((150, 200), (900, 1000), SETTINGS, promoted_at=START, now=AFTER)
    assert decision.action == "promote"
    assert "watch over" in decision.reason
    assert decision.statistics["watch_ends_at"] == AFTER.isoformat()


def test_watch_rejects_bad_counts() -> None:
    with pytest.raises(ValueError, match="new: need 0 <= correct <= n"):
        watch_decision((5, 4), (1, 1), SETTINGS, promoted_at=START, now=DURING)

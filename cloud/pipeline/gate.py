"""The promotion gate (`cloud.settings.GateSettings`): what a candidate must reach to be
registered as ``candidate``.

- **macro_f1_vs_champion**: macro-F1 at least the champion's (on the same held-out data) plus
  ``min_macro_f1_gain``; passes with a note when there is no champion yet.
- **accuracy**: at least ``min_accuracy``.
- **class_f1**: every class present in the held-out data at least ``min_class_f1``.
- **latency_p99**: batch-1 p99 on the exported runtime below ``max_p99_ms``.

Pure functions, no I/O; the pipeline's evaluate and latency steps call them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from cloud.evaluation.metrics import accuracy, macro_f1, per_class
from cloud.settings import GateSettings

MACRO_F1, ACCURACY, CLASS_F1, LATENCY = (
    "macro_f1_vs_champion",
    "accuracy",
    "class_f1",
    "latency_p99",
)


@dataclass(frozen=True)
class Scores:
    """A model's figures on the held-out data.

    Attributes:
        class_f1: F1 of every class that occurs in the data (absent classes have none).
    """

    macro_f1: float
    accuracy: float
    class_f1: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> Scores:
        """The scores of predictions ``y_pred`` of labels ``y_true``."""
        classes = per_class(y_true, y_pred)
        return cls(
            macro_f1=macro_f1(y_true, y_pred),
            accuracy=accuracy(y_true, y_pred),
            class_f1={name: v["f1"] for name, v in classes.items() if v["support"] > 0},
        )

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> Scores:
        """The scores an evaluation report (`cloud.evaluation.report`) holds."""
        return cls(
            macro_f1=float(report["macro_f1"]),
            accuracy=float(report["accuracy"]),
            class_f1={
                name: float(v["f1"])
                for name, v in report["per_class"].items()
                if int(v["support"]) > 0
            },
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"macro_f1": self.macro_f1, "accuracy": self.accuracy, "class_f1": self.class_f1}


@dataclass(frozen=True)
class GateCheck:
    """One check of the gate: the figure, the bar, whether it passed, and why in words."""

    name: str
    passed: bool
    detail: str
    value: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "name": self.name,
            "passed": self.passed,
            "detail": self.detail,
            "value": self.value,
            "threshold": self.threshold,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateCheck:
        """Inverse of `to_dict`."""
        return cls(
            name=str(data["name"]),
            passed=bool(data["passed"]),
            detail=str(data["detail"]),
            value=data.get("value"),
            threshold=data.get("threshold"),
        )


def metric_checks(
    candidate: Scores,
    champion: Scores | None,
    gate: GateSettings,
    *,
    champion_version: str | None = None,
) -> list[GateCheck]:
    """The gate's checks of the candidate's figures (all but latency), in order."""
    if champion is None:
        versus = GateCheck(
            MACRO_F1, True, "no champion is registered: nothing to beat", candidate.macro_f1
        )
    else:
        bar = champion.macro_f1 + gate.min_macro_f1_gain
        ok = candidate.macro_f1 >= bar
        versus = GateCheck(
            MACRO_F1,
            ok,
            f"macro-F1 {candidate.macro_f1:.4f} {'>=' if ok else '<'} {bar:.4f} (champion "
            f"{champion_version or '?'} {champion.macro_f1:.4f} + {gate.min_macro_f1_gain})",
            candidate.macro_f1,
            bar,
        )
    ok = candidate.accuracy >= gate.min_accuracy
    acc = GateCheck(
        ACCURACY,
        ok,
        f"accuracy {candidate.accuracy:.4f} {'>=' if ok else '<'} {gate.min_accuracy}",
        candidate.accuracy,
        gate.min_accuracy,
    )
    weak = {name: f1 for name, f1 in candidate.class_f1.items() if f1 < gate.min_class_f1}
    lowest = min(candidate.class_f1.values(), default=None)
    if weak:
        listed = ", ".join(f"{name} {f1:.3f}" for name, f1 in weak.items())
        detail = f"class F1 below {gate.min_class_f1}: {listed}"
    else:
        detail = f"every class F1 >= {gate.min_class_f1} (lowest {lowest or 0.0:.3f})"
    per_class_check = GateCheck(CLASS_F1, not weak, detail, lowest, gate.min_class_f1)
    return [versus, acc, per_class_check]


def latency_check(p99_ms: float, gate: GateSettings) -> GateCheck:
    """Batch-1 p99 latency on the exported runtime below ``gate.max_p99_ms``."""
    ok = p99_ms < gate.max_p99_ms
    return GateCheck(
        LATENCY,
        ok,
        f"batch-1 p99 {p99_ms:.2f} ms {'<' if ok else '>='} {gate.max_p99_ms} ms",
        p99_ms,
        gate.max_p99_ms,
    )


@dataclass(frozen=True)
class Verdict:
    """The gate's verdict: passed only when every check did."""

    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        """Whether every check passed."""
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        """Names of the checks that failed."""
        return [c.name for c in self.checks if not c.passed]

    def summary(self) -> str:
        """One line: passed, or which checks failed and why."""
        if self.passed:
            return "gate passed: " + "; ".join(c.detail for c in self.checks)
        return "gate failed: " + "; ".join(
            f"{c.name}: {c.detail}" for c in self.checks if not c.passed
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``passed``, ``failed`` (names), ``checks``, ``summary``."""
        return {
            "passed": self.passed,
            "failed": self.failed,
            "checks": [c.to_dict() for c in self.checks],
            "summary": self.summary(),
        }

    @classmethod
    def of(cls, checks: Sequence[GateCheck]) -> Verdict:
        """The verdict of ``checks``."""
        return cls(tuple(checks))

"""Which candidate becomes the default model: the best on validation lots within the edge's
compute budget, whatever its family (TRM, CNN, ...).

Candidates are ranked by their macro-F1 on the validation lots (the figure `finalize` measured
with the halting and second look the node will run), never by a test figure: the test lots
stay for reporting. A candidate is eligible only if its evaluation report shows it within the
budget: average GFLOP per wafer, parameters and batch-1 p99 latency.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wafercore.runtime import ModelRuntime

REPORT_FILE = "report.json"


@dataclass(frozen=True)
class Budget:
    """The edge's compute budget (issue 10's targets)."""

    gflops_per_wafer: float = 0.3
    params: int = 2_000_000
    latency_p99_ms: float = 10.0


@dataclass(frozen=True)
class Candidate:
    """A model directory with what the choice reads."""

    path: Path
    version: str
    validation_macro_f1: float
    test_macro_f1: float
    gflops_per_wafer: float
    params: int
    latency_p99_ms: float
    over_budget: tuple[str, ...]  # what it exceeds; empty when eligible


def validation_macro_f1(extra: dict[str, Any], tta_threshold: float) -> float:
    """The validation macro-F1 of the configuration the node serves (halting, second look)."""
    validation = extra.get("validation", {})
    for row in validation.get("second_look", []):
        if row["threshold"] == tta_threshold:
            return float(row["macro_f1"])
    return float(validation["macro_f1_halted"])


def read_candidate(path: Path, budget: Budget) -> Candidate:
    """A model directory and its ``report.json`` as a candidate.

    Raises:
        ValueError: the directory has no evaluation report or no validation figures.
        wafercore.runtime.ModelLoadError: the model cannot be served.
    """
    manifest = ModelRuntime.load(path).manifest
    report_path = path / REPORT_FILE
    if not report_path.is_file():
        raise ValueError(f"{path}: no {REPORT_FILE}; run `wafer-cloud evaluate` first")
    report = json.loads(report_path.read_text())
    if "validation" not in manifest.extra:
        raise ValueError(f"{path}: the manifest has no validation figures (not from finalize)")
    over = []
    if report["gflops_per_wafer"] > budget.gflops_per_wafer:
        over.append(f"{report['gflops_per_wafer']:.3f} GFLOP/wafer")
    if report["params"] > budget.params:
        over.append(f"{report['params']:,} parameters")
    if report["latency_ms"]["p99"] >= budget.latency_p99_ms:
        over.append(f"p99 {report['latency_ms']['p99']:.1f} ms")
    return Candidate(
        path=path,
        version=manifest.version,
        validation_macro_f1=validation_macro_f1(dict(manifest.extra), manifest.tta_threshold),
        test_macro_f1=float(report["macro_f1"]),
        gflops_per_wafer=float(report["gflops_per_wafer"]),
        params=int(report["params"]),
        latency_p99_ms=float(report["latency_ms"]["p99"]),
        over_budget=tuple(over),
    )


def choose_champion(
    paths: list[Path], budget: Budget | None = None
) -> tuple[Candidate | None, list[Candidate]]:
    """The eligible candidate with the best validation macro-F1 (None when none is eligible),
    and every candidate, best first."""
    budget = budget or Budget()
    candidates = sorted(
        (read_candidate(p, budget) for p in paths),
        key=lambda c: (not c.over_budget, c.validation_macro_f1),
        reverse=True,
    )
    eligible = [c for c in candidates if not c.over_budget]
    return (eligible[0] if eligible else None), candidates

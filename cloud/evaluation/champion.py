"""Which candidate becomes the default model: the best on validation lots within the edge's
compute budget, whatever its family (TRM, CNN, ...).

Candidates are ranked by their macro-F1 on the validation lots (the figure `finalize` measured
with the halting and second look the node will run), never by a test figure: the test lots
stay for reporting. A candidate is eligible only if its evaluation report shows it within the
budget: average GFLOP per wafer, parameters and batch-1 p99 latency.

Candidates validated on different lots (another protocol, fraction or seed) are not compared
by their own figures: they are all served on one gate part instead, the first candidate's
validation lots that no candidate trained on (`common_gate`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wafercore.readers.npz import file_sha256
from wafercore.runtime import DEFAULT_TTA_VIEWS, ModelRuntime
from wafercore.splits import protocol_split

REPORT_FILE = "report.json"
OWN_VALIDATION = "its own validation lots"


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
    test_part: str  # what its report's test figure is on (`evaluate.TEST_PART_NAMES`)
    gflops_per_wafer: float
    params: int
    latency_p99_ms: float
    over_budget: tuple[str, ...]  # what it exceeds; empty when eligible
    split: tuple[Any, ...]  # `cloud.training.data.SPLIT_FIELDS` of its training data
    judged_on: str = OWN_VALIDATION


def validation_macro_f1(extra: dict[str, Any], tta_threshold: float, tta_views: int) -> float:
    """The validation macro-F1 of the configuration the node serves (halting, second look)."""
    validation = extra.get("validation", {})
    for row in validation.get("second_look", []):
        # Sweeps written before the views were tuned have no "views": the default ones.
        views = row.get("views", DEFAULT_TTA_VIEWS)
        if row["threshold"] == tta_threshold and views == tta_views:
            return float(row["macro_f1"])
    return float(validation["macro_f1_halted"])


def read_candidate(path: Path, budget: Budget) -> Candidate:
    """A model directory and its ``report.json`` as a candidate.

    Raises:
        ValueError: the directory has no evaluation report or no validation figures.
        wafercore.runtime.ModelLoadError: the model cannot be served.
    """
    from cloud.training.data import split_of  # the training stack: only when choosing

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
        validation_macro_f1=validation_macro_f1(
            dict(manifest.extra), manifest.tta_threshold, manifest.tta_views
        ),
        test_macro_f1=float(report["macro_f1"]),
        test_part=str(report.get("data", {}).get("split", "Test")),
        gflops_per_wafer=float(report["gflops_per_wafer"]),
        params=int(report["params"]),
        latency_p99_ms=float(report["latency_ms"]["p99"]),
        over_budget=tuple(over),
        split=split_of(manifest.extra.get("data", {})),
    )


def choose_champion(
    paths: list[Path], budget: Budget | None = None, *, data_path: Path | None = None
) -> tuple[Candidate | None, list[Candidate]]:
    """The eligible candidate with the best validation macro-F1 (None when none is eligible),
    and every candidate, best first.

    Candidates of different splits are judged on `common_gate` of ``data_path``.

    Raises:
        ValueError: a candidate cannot be read, or candidates of different splits without
            ``data_path`` or without a common gate (the message says which).
    """
    budget = budget or Budget()
    candidates = [read_candidate(p, budget) for p in paths]
    if len({c.split for c in candidates}) > 1:
        if data_path is None:
            versions = ", ".join(f"{c.version} ({c.split[1]})" for c in candidates)
            raise ValueError(
                f"the candidates were validated on different lots: {versions}; pass --data, "
                "the labelled file they were trained on, to judge them on lots none trained on"
            )
        candidates = common_gate(candidates, data_path)
    candidates.sort(key=lambda c: (not c.over_budget, c.validation_macro_f1), reverse=True)
    eligible = [c for c in candidates if not c.over_budget]
    return (eligible[0] if eligible else None), candidates


def common_gate(candidates: list[Candidate], data_path: Path) -> list[Candidate]:
    """Every candidate served (halting, second look) on one gate part of ``data_path``.

    The gate is the validation part of the first candidate whose validation lots no candidate
    trained on; its figure replaces each candidate's own validation macro-F1.

    Raises:
        ValueError: a candidate was trained on another file, or every candidate's validation
            lots are training lots of another.
    """
    from cloud.evaluation.evaluate import serve_part
    from cloud.evaluation.metrics import macro_f1
    from cloud.training.data import Part, read_labelled

    sha = file_sha256(data_path)
    for c in candidates:
        if c.split[0] != sha:
            raise ValueError(f"{c.path} was not trained on {data_path} (another sha256)")
    dataset = read_labelled(data_path)
    splits = {key: protocol_split(dataset, *key[1:]) for key in {c.split for c in candidates}}
    trained = set().union(*(dataset.lot[s.train].tolist() for s in splits.values()))
    owner = next(
        (c for c in candidates if not trained & set(dataset.lot[splits[c.split].val].tolist())),
        None,
    )
    if owner is None:
        raise ValueError("every candidate's validation lots are training lots of another")
    gate = Part.of(dataset.subset(splits[owner.split].val))
    judged_on = f"{owner.version}'s validation lots ({owner.split[1]}, {len(gate):,} wafers)"
    judged = []
    for c in candidates:
        served = serve_part(ModelRuntime.load(c.path, threads=2), gate)
        f1 = macro_f1(gate.labels, served.probabilities.argmax(axis=1))
        judged.append(replace(c, validation_macro_f1=f1, judged_on=judged_on))
    return judged

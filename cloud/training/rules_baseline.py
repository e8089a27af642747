"""The rule-based baseline end to end: fit the tree on training features, report on test.

No gradient training, no ONNX: the tree is written as plain JSON beside its report.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

from cloud.evaluation.plots import write_plots
from cloud.evaluation.report import build_report, write_report
from cloud.models.rules import RulesModel
from cloud.training.config import TrainConfig
from cloud.training.data import PreparedData
from cloud.training.trainer import code_version
from wafercore.features import spatial_features


def run_rules(config: TrainConfig, data: PreparedData, out_dir: Path) -> dict[str, Any]:
    """Fit the decision tree on ``data.train`` and write ``rules.json`` and the test report."""
    model = RulesModel.fit(
        spatial_features(data.train.grids).matrix(),
        data.train.labels,
        max_depth=config.rules.max_depth,
        min_samples_leaf=config.rules.min_samples_leaf,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = {
        "version": config.version,
        "training": config.to_dict(),
        "code_version": code_version(),
        "data": data.provenance,
        "tree": model.to_dict(),
    }
    (out_dir / "rules.json").write_text(json.dumps(saved, indent=1))
    started = time.perf_counter()
    probs = model.predict_proba_grids(data.test.grids)
    throughput = len(data.test) / (time.perf_counter() - started)
    singles = []
    for grid in data.test.grids[:300]:
        t0 = time.perf_counter()
        model.predict_proba_grids(grid[None])
        singles.append((time.perf_counter() - t0) * 1000)
    p50, p90, p99 = (float(v) for v in np.percentile(singles, [50, 90, 99]))
    report = build_report(
        y_true=data.test.labels,
        compute={
            "params": len(model.feature),  # tree nodes
            "gflops_per_wafer": 0.0,
            "latency_ms": {"p50": p50, "p90": p90, "p99": p99},
            "throughput_per_s": throughput,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        },
        model_version=config.version,
        data={
            "path": data.provenance["path"],
            "sha256": data.provenance["sha256"],
            "protocol": config.data.protocol,
            "split": "Test",
            "n": len(data.test),
        },
        probs=probs,
        shapes=data.test.shapes,
        grids=data.test.grids,
    )
    figures = write_plots(out_dir, report, data.test.grids)
    write_report(
        report,
        out_dir,
        figures=figures,
        title=f"{config.version}: decision tree over spatial features",
    )
    return report

"""``wafer-cloud evaluate``: a model directory on a data file, through the exported runtime.

What is measured is what the edge runs: the ONNX graph under ONNX Runtime with the halting
threshold and temperature from the model's manifest (both tuned on validation lots).
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloud.evaluation.metrics import halted_predictions, macro_f1
from cloud.evaluation.plots import write_plots
from cloud.evaluation.report import build_report, write_report
from cloud.training.data import Part, evaluation_part
from wafercore.pipeline import classify_maps
from wafercore.readers.npz import file_sha256
from wafercore.runtime import ModelRuntime
from wafercore.second_look import second_look

LATENCY_SAMPLES = 300
THROUGHPUT_BATCH = 64
CHUNK = 4096
"""Wafers whose inputs are built and classified at once (bounds memory on 95k test maps)."""

TEST_PART_NAMES = {"official": "Test", "production": "production-test", "random": "random-test"}
"""What a report calls each protocol's test part (production: the Test lots not reviewed)."""


def predict_part(runtime: ModelRuntime, part: Part) -> tuple[np.ndarray, np.ndarray]:
    """Every supervision step for every wafer of ``part``, from its raw maps through the
    model's own input: probabilities (S, N, C) and halt probabilities (S, N)."""
    spec = runtime.manifest.input
    chunks = [
        runtime.predict_all_steps(part.inputs(spec, i, i + CHUNK))
        for i in range(0, len(part), CHUNK)
    ]
    return np.concatenate([p for p, _ in chunks], axis=1), np.concatenate(
        [h for _, h in chunks], axis=1
    )


@dataclass(frozen=True)
class Served:
    """What a node answers for every wafer of a part: halting, then the second look."""

    probabilities: np.ndarray  # (N, C)
    steps: np.ndarray  # (N,) the first pass's supervision steps
    looked: np.ndarray  # (N,) bool: the wafer got the second look
    extra_steps: np.ndarray  # (N,) steps the second look's seven other views cost


def serve_part(runtime: ModelRuntime, part: Part) -> Served:
    """Every wafer of ``part`` through the node's own path (`wafercore.pipeline`): the model's
    input, halting, and the second look where the manifest asks for it."""
    spec = runtime.manifest.input
    outs = []
    for i in range(0, len(part), CHUNK):
        inputs = part.inputs(spec, i, i + CHUNK)
        outs.append(second_look(runtime, inputs, runtime.predict(inputs)))
    return Served(
        probabilities=np.concatenate([o.result.probabilities for o in outs]),
        steps=np.concatenate([o.result.steps for o in outs]),
        looked=np.concatenate([o.looked for o in outs]),
        extra_steps=np.concatenate([o.extra_steps for o in outs]),
    )


def measure_compute(model_dir: Path, part: Part, seed: int = 0) -> dict[str, Any]:
    """Latency at batch 1 (p50/p90/p99, one thread) and throughput at batch 64, on raw maps of
    ``part``, through the node's own path (`wafercore.pipeline.classify_maps`): input building,
    halting, the second look and the novelty model when the model has one."""
    runtime = ModelRuntime.load(model_dir, threads=1)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(part), size=min(LATENCY_SAMPLES, len(part)), replace=False)
    times = []
    for i in sample:
        wafer = part.raw.map(int(i))
        started = time.perf_counter()
        classify_maps(runtime, [wafer])
        times.append((time.perf_counter() - started) * 1000)
    batches = [
        [part.raw.map(j) for j in range(i, min(i + THROUGHPUT_BATCH, len(part)))]
        for i in range(0, min(len(part), 20 * THROUGHPUT_BATCH), THROUGHPUT_BATCH)
    ]
    started = time.perf_counter()
    for batch in batches:
        classify_maps(runtime, batch)
    elapsed = time.perf_counter() - started
    p50, p90, p99 = np.percentile(times, [50, 90, 99])
    return {
        "latency_ms": {"p50": float(p50), "p90": float(p90), "p99": float(p99)},
        "throughput_per_s": sum(len(b) for b in batches) / elapsed,
    }


def load_baselines(dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """Baselines' headline figures from their ``report.json``, keyed by model version."""
    out = {}
    for d in dirs:
        report = json.loads((d / "report.json").read_text())
        out[report["model_version"]] = {
            "macro_f1": report["macro_f1"],
            "accuracy": report["accuracy"],
            "per_class_f1": {name: v["f1"] for name, v in report["per_class"].items()},
        }
    return out


def evaluate_model(
    model_dir: Path,
    data_path: Path,
    protocol: str,
    out_dir: Path,
    *,
    baseline_dirs: list[Path] | None = None,
    val_fraction: float | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_dir`` on the test part of ``data_path``; writes report and plots.

    ``val_fraction`` and ``seed`` default to the ones the model was trained with (its
    manifest's data provenance), so the random protocol's test part is the one it never saw.
    A model that ships a novelty model gets its section too (`novelty_report`, same folder).
    """
    runtime = ModelRuntime.load(model_dir, threads=2)
    manifest = runtime.manifest
    trained_on = manifest.extra.get("data", {})
    if val_fraction is None:
        val_fraction = float(trained_on.get("val_fraction", 0.1))
    if seed is None:
        seed = int(trained_on.get("seed", 0))
    part: Part = evaluation_part(data_path, protocol, val_fraction, seed)
    probs, halt = predict_part(runtime, part)
    served = serve_part(runtime, part)
    compute = measure_compute(model_dir, part, seed)
    compute["params"] = manifest.extra.get("params")
    steps_per_wafer = float(served.steps.mean() + served.extra_steps.mean())
    compute["gflops_per_wafer"] = float(
        manifest.extra.get("gflops_per_step", 0.0) * steps_per_wafer
    )
    compute["second_look"] = {
        "threshold": manifest.tta_threshold,
        "views": manifest.tta_views,
        "looked_fraction": float(served.looked.mean()),
        "extra_steps_per_wafer": float(served.extra_steps.mean()),
        "macro_f1_without": macro_f1(
            part.labels, halted_predictions(probs, halt, manifest.halt_threshold)[0].argmax(-1)
        ),
    }
    compute["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = build_report(
        y_true=part.labels,
        compute=compute,
        model_version=manifest.version,
        data={
            "path": str(data_path),
            "sha256": file_sha256(data_path),
            "protocol": protocol,
            "split": TEST_PART_NAMES[protocol],
            "n": len(part),
        },
        probs_per_step=probs if manifest.kind == "trm" else None,
        halt_per_step=halt if manifest.kind == "trm" else None,
        probs=served.probabilities,
        steps=served.steps,
        shapes=part.shapes,
        halt_threshold=manifest.halt_threshold if manifest.kind == "trm" else None,
        baselines=load_baselines(baseline_dirs or []),
        grids=part.grids,
        review_threshold=manifest.review_threshold,
    )
    figures = write_plots(out_dir, report, part.grids, history=manifest.extra.get("history"))
    write_report(report, out_dir, figures=figures)
    if runtime.novelty is not None:  # its own section: novelty.json, .md and plot
        from cloud.evaluation.novelty_report import evaluate_novelty

        evaluate_novelty(model_dir, data_path, out_dir, protocol=protocol, part=part, served=served)
    return report

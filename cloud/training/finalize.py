"""After training: export the best EMA model, then tune halting, temperature and the second
look (`wafercore.second_look`) on validation.

Everything tuned here sees validation lots only, never the test set.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.evaluation.evaluate import CHUNK, predict_part
from cloud.evaluation.metrics import (
    fit_temperature,
    halted_predictions,
    macro_f1,
    tune_halt_threshold,
)
from cloud.export import export_classifier_dir, export_trm_dir, rewrite_manifest
from cloud.models.cnn import flops_per_wafer as cnn_flops
from cloud.models.trm import TinyRecursiveModel, count_parameters, flops_per_step
from cloud.training.config import TrainConfig
from cloud.training.data import Part
from cloud.training.trainer import load_checkpoint_model
from wafercore.runtime import DEFAULT_TTA_VIEWS, TTA_VIEWS, ModelRuntime
from wafercore.second_look import VIEWS, dihedral

log = logging.getLogger(__name__)

SECOND_LOOK_BUDGET_GFLOP = 0.3
"""Average compute per wafer at the edge, first pass and second looks together (issue 10)."""
SECOND_LOOK_THRESHOLDS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
SECOND_LOOK_MIN_GAIN = 0.002
"""Validation macro-F1 a second look must add to be switched on (else it is noise)."""
SECOND_LOOK_MAX_SHARE = {8: 0.005, 4: 0.10}
"""Most validation wafers a second look of that many views may take. At 8 views a looked wafer
costs seven more passes (with the novelty model about 10 ms on the 2-core CPU, the p99 budget),
so the batch-1 p99 stays the first pass's only while well under 1% of the stream is looked at;
half of that leaves room for lots more doubtful than validation's. At 4 views (the rotations)
a looked wafer costs three more: cnn-v2.6.1 with its novelty model, every wafer looked, runs at
p99 6.7 ms, within budget at any share; 10% bounds the mean cost."""


def tune_second_look(
    runtime: ModelRuntime, val: Part, *, budget_steps: float
) -> tuple[float, int, list[dict[str, float]]]:
    """The confidence below which the node averages a wafer's views, and how many views
    (`wafercore.runtime.TTA_VIEWS`), tuned on ``val``.

    The best validation macro-F1 among the (views, threshold) pairs whose average supervision
    steps per wafer (first pass plus second looks) fit ``budget_steps`` and that look at no more
    than `SECOND_LOOK_MAX_SHARE` of the wafers; 0 (never look twice) unless a pair gains at
    least `SECOND_LOOK_MIN_GAIN`.

    Returns:
        The threshold, the views, and the sweep (views, threshold, macro-F1, fraction looked,
        steps per wafer).
    """
    probs, steps = _all_views(runtime, val)  # (8, N, C), (8, N)
    first_confidence = probs[0].max(axis=1)
    sweep = []
    for count in sorted(TTA_VIEWS, reverse=True):
        averaged = probs[:count].mean(axis=0)
        for threshold in SECOND_LOOK_THRESHOLDS:
            looked = first_confidence < threshold
            answer = np.where(looked[:, None], averaged, probs[0])
            sweep.append(
                {
                    "views": count,
                    "threshold": threshold,
                    "macro_f1": macro_f1(val.labels, answer.argmax(-1)),
                    "looked": float(looked.mean()),
                    "steps_per_wafer": float(
                        (steps[0] + looked * steps[1:count].sum(axis=0)).mean()
                    ),
                }
            )
    fitting = [
        s
        for s in sweep
        if s["steps_per_wafer"] <= budget_steps
        and s["looked"] <= SECOND_LOOK_MAX_SHARE[int(s["views"])]
    ]
    best = max(fitting, key=lambda s: s["macro_f1"])
    if best["macro_f1"] - sweep[0]["macro_f1"] < SECOND_LOOK_MIN_GAIN:
        return 0.0, DEFAULT_TTA_VIEWS, sweep
    return best["threshold"], int(best["views"]), sweep


def _all_views(
    runtime: ModelRuntime, val: Part
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The model's probabilities (8, N, C) and steps (8, N) on each dihedral view of ``val``."""
    spec = runtime.manifest.input
    views = []
    for k in range(VIEWS):
        chunks = [
            runtime.predict(dihedral(val.inputs(spec, i, i + CHUNK), spec, k))
            for i in range(0, len(val), CHUNK)
        ]
        views.append(
            (
                np.concatenate([c.probabilities for c in chunks]),
                np.concatenate([c.steps for c in chunks]),
            )
        )
    return np.stack([p for p, _ in views]), np.stack([s for _, s in views])


def finalize(checkpoint: Path, val: Part, out_dir: Path) -> dict[str, Any]:
    """Write the model directory of a checkpoint, calibrated on ``val``; returns the manifest's
    ``extra`` (what was tuned and where it came from)."""
    model, meta = load_checkpoint_model(checkpoint)
    version = meta["config"]["version"]
    extra: dict[str, Any] = {
        "training": meta["config"],
        "code_version": meta["code_version"],
        "data": meta["data"],
        "history": meta["history"],
        "best_epoch": meta["best_epoch"],
        "params": count_parameters(model),
    }
    spec = TrainConfig.model_validate(meta["config"]).input.spec()
    if isinstance(model, TinyRecursiveModel):
        extra["gflops_per_step"] = flops_per_step(model.config) / 1e9
        export_trm_dir(
            model, out_dir, version=version, halt_threshold=1.0, extra=extra, input_spec=spec
        )
    else:
        extra["gflops_per_step"] = cnn_flops(model.config) / 1e9
        export_classifier_dir(model, out_dir, version=version, extra=extra, input_spec=spec)
    return calibrate(out_dir, val, extra)


def calibrate(out_dir: Path, val: Part, extra: dict[str, Any]) -> dict[str, Any]:
    """Tune a model directory's halting, temperature and second look on ``val`` and write them
    to its manifest, with ``extra`` (which must hold ``gflops_per_step``) and the validation
    figures; returns the new ``extra``.

    A model calibrated before is tuned again from its graph's own logits (temperature 1, no
    second look), so calibrating twice gives the same manifest.
    """
    runtime = ModelRuntime.load(out_dir, threads=2)
    if runtime.manifest.temperature != 1.0 or runtime.manifest.tta_threshold != 0.0:
        rewrite_manifest(
            out_dir,
            replace(
                runtime.manifest, temperature=1.0, tta_threshold=0.0, tta_views=DEFAULT_TTA_VIEWS
            ),
        )
        runtime = ModelRuntime.load(out_dir, threads=2)
    probs, halt = predict_part(runtime, val)
    threshold, sweep = tune_halt_threshold(probs, halt, val.labels)
    threshold = min(threshold, 1.0)  # "never halt early" is 1.0 in a manifest
    halted, steps = halted_predictions(probs, halt, threshold)
    temperature = fit_temperature(np.log(np.maximum(halted, 1e-12)), val.labels)
    extra["validation"] = {
        "n": len(val),
        "macro_f1_all_steps": macro_f1(val.labels, probs[-1].argmax(-1)),
        "macro_f1_halted": macro_f1(val.labels, halted.argmax(-1)),
        "avg_steps": float(steps.mean()),
        "halting_sweep": sweep,
        "temperature": temperature,
    }
    manifest = replace(
        runtime.manifest,
        halt_threshold=threshold,
        temperature=temperature,
        extra={**runtime.manifest.extra, **extra},
    )
    rewrite_manifest(out_dir, manifest)
    # The second look is tuned on what the node will run: this halting and temperature.
    tta_threshold, tta_views, extra["validation"]["second_look"] = tune_second_look(
        ModelRuntime.load(out_dir, threads=2),
        val,
        budget_steps=SECOND_LOOK_BUDGET_GFLOP / extra["gflops_per_step"],
    )
    rewrite_manifest(
        out_dir,
        replace(
            manifest,
            tta_threshold=tta_threshold,
            tta_views=tta_views,
            extra={**manifest.extra, **extra},
        ),
    )
    log.info(
        "halt threshold %.3f (%.2f steps on val), temperature %.3f",
        threshold,
        steps.mean(),
        temperature,
    )
    return extra

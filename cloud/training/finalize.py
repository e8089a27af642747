"""After training: export the best EMA model, then tune halting and temperature on validation.

Everything tuned here sees validation lots only, never the test set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from cloud.evaluation.evaluate import predict_part
from cloud.evaluation.metrics import (
    fit_temperature,
    halted_predictions,
    macro_f1,
    tune_halt_threshold,
)
from cloud.export import export_classifier_dir, export_trm_dir, write_model_dir
from cloud.models.cnn import flops_per_wafer as cnn_flops
from cloud.models.trm import TinyRecursiveModel, count_parameters, flops_per_step
from cloud.training.config import TrainConfig
from cloud.training.data import Part
from cloud.training.trainer import load_checkpoint_model
from wafercore.runtime import MODEL_FILE, ModelRuntime

log = logging.getLogger(__name__)


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
    manifest = runtime.manifest
    write_model_dir(
        out_dir,
        out_dir / MODEL_FILE,
        version=version,
        kind=manifest.kind,
        n_sup=manifest.n_sup,
        state_shape=manifest.state_shape,
        halt_threshold=threshold,
        temperature=temperature,
        review_threshold=manifest.review_threshold,
        extra={**manifest.extra, **extra},
        input_spec=manifest.input,
    )
    log.info(
        "halt threshold %.3f (%.2f steps on val), temperature %.3f",
        threshold,
        steps.mean(),
        temperature,
    )
    return extra

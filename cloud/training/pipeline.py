"""A training run end to end: data, training, calibration on validation, export, evaluation."""

from __future__ import annotations

import logging
from pathlib import Path

from cloud.evaluation.evaluate import evaluate_model
from cloud.settings import CloudSettings
from cloud.training.config import TrainConfig
from cloud.training.data import load_unlabelled, prepare
from cloud.training.finalize import finalize
from cloud.training.rules_baseline import run_rules
from cloud.training.trainer import BEST, train

log = logging.getLogger(__name__)


def run_training(
    config: TrainConfig,
    settings: CloudSettings,
    run_dir: Path,
    *,
    out: Path | None,
    resume: bool,
    evaluate: bool = True,
) -> Path:
    """Train ``config``, write its calibrated model directory and its test report.

    Returns the model directory (``out``, or ``run_dir/model``).
    """
    data_path = settings.resolve_data(config.data.path)
    data = prepare(config.data, data_path, settings.cache_dir, config.seed)
    if config.semi is not None:
        data.unlabelled, data.provenance["unlabelled"] = load_unlabelled(
            settings.resolve_data(config.semi.path), config.semi.limit, config.seed
        )
    log.info("data: %s", data.provenance["n"])
    model_dir = out or run_dir / "model"
    if config.kind == "rules":
        run_rules(config, data, model_dir)
        return model_dir
    result = train(config, data, run_dir, resume=resume)
    log.info("best epoch %d, val macro-F1 %.4f", result.best_epoch, result.best_val_macro_f1)
    finalize(run_dir / BEST, data.val, model_dir)
    if evaluate:
        evaluate_model(
            model_dir,
            data_path,
            config.data.protocol,
            model_dir,
            val_fraction=config.data.val_fraction,
            seed=config.seed,
        )
    return model_dir

"""A training run end to end: data, training, calibration on validation, export, evaluation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cloud.evaluation.evaluate import evaluate_model
from cloud.settings import CloudSettings
from cloud.training.config import TrainConfig
from cloud.training.data import PreparedData, load_unlabelled, prepare
from cloud.training.distributed import SINGLE_PROCESS, DistributedContext, process_group
from cloud.training.finalize import finalize
from cloud.training.pseudo import PseudoLabels
from cloud.training.rules_baseline import run_rules
from cloud.training.trainer import BEST, pick_device, train
from cloud.training.vae import finalize_vae, train_vae
from wafercore.classes import NUM_CLASSES
from wafercore.dataset import WaferDataset
from wafercore.readers.npz import file_sha256, read_npz

log = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """A config's data cannot be used as it stands; the message names the config field."""


def run_training(
    config: TrainConfig,
    settings: CloudSettings,
    run_dir: Path,
    *,
    out: Path | None,
    resume: bool,
    evaluate: bool = True,
    distributed: DistributedContext = SINGLE_PROCESS,
) -> Path:
    """Train ``config``, write its calibrated model directory and its test report.

    Under ``torchrun`` (``distributed.world_size`` > 1) every process trains a DDP replica;
    rank 0 prepares the data cache first, writes the checkpoints, and alone calibrates, exports
    and evaluates the model once the others have left.

    Returns the model directory (``out``, or ``run_dir/model``), the same on every rank.

    A ``vae`` config writes a novelty model directory (`cloud.training.vae`) instead.

    Raises:
        ValueError: a rules baseline or a VAE was started on several processes (each trains
            in one).
    """
    model_dir = out or run_dir / "model"
    if config.kind == "rules":
        if distributed.enabled:
            raise ValueError("the rules baseline trains in one process; run it without torchrun")
        run_rules(config, load_data(config, settings), model_dir)
        return model_dir
    if config.kind == "vae":
        if distributed.enabled:
            raise ValueError("the novelty VAE trains in one process; run it without torchrun")
        data = load_data(config, settings)
        train_vae(config, data, run_dir, resume=resume)
        finalize_vae(run_dir / BEST, data.val, model_dir)
        return model_dir
    with process_group(distributed, pick_device(config.device)) as replicas:
        with replicas.main_first():  # one process fills the preprocessing cache
            data = load_data(config, settings)
        result = train(config, data, run_dir, resume=resume, replicas=replicas)
    if not distributed.is_main:
        return model_dir
    log.info("best epoch %d, val macro-F1 %.4f", result.best_epoch, result.best_val_macro_f1)
    finalize(run_dir / BEST, data.val, model_dir)
    if evaluate:
        evaluate_model(
            model_dir,
            settings.resolve_data(config.data.path),
            config.data.protocol,
            model_dir,
            val_fraction=config.data.val_fraction,
            seed=config.seed,
        )
    return model_dir


def load_data(config: TrainConfig, settings: CloudSettings) -> PreparedData:
    """The config's data, split and preprocessed, with its unlabelled stream if it has one."""
    data_path = settings.resolve_data(config.data.path)
    if not data_path.is_file():
        raise TrainingDataError(f"data.path: no file {data_path}")
    data = prepare(config.data, data_path, settings.cache_dir, config.seed)
    if config.semi is not None:
        stream, data.provenance["unlabelled"] = load_unlabelled(
            settings.resolve_data(config.semi.path), config.semi.limit, config.seed
        )
        data.unlabelled, data.provenance["unlabelled"]["dropped_judged_lots"] = (
            _outside_judged_lots(stream, data)
        )
    if config.pseudo is not None:
        _add_pseudo(data, config, settings)
    log.info("data: %s", data.provenance["n"])
    return data


def _add_pseudo(data: PreparedData, config: TrainConfig, settings: CloudSettings) -> None:
    """Append the config's pseudo-labelled maps to the training maps (self-training)."""
    assert config.pseudo is not None
    labels_path = settings.resolve_work(config.pseudo.labels)
    path = settings.resolve_data(config.pseudo.path)
    if not labels_path.is_file():
        raise TrainingDataError(
            f"pseudo.labels: no file {labels_path} (make it with `wafer-cloud pseudo-label`)"
        )
    if not path.is_file():
        raise TrainingDataError(f"pseudo.path: no file {path}")
    try:
        labels = PseudoLabels.load(labels_path).kept(
            threshold=config.pseudo.threshold, max_per_class=config.pseudo.max_per_class
        )
        pseudo = labels.dataset(read_npz(path), file_sha256(path))
    except ValueError as err:
        raise TrainingDataError(f"pseudo.labels: {err}") from None
    pseudo, dropped = _outside_judged_lots(pseudo, data)
    data.train_raw = WaferDataset.concat([data.train_raw, pseudo])
    data.provenance["pseudo"] = {
        "teacher": labels.teacher,
        "path": str(path),
        "sha256": labels.source_sha256,
        "class_counts": np.bincount(pseudo.labels, minlength=NUM_CLASSES).tolist(),
        "dropped_judged_lots": dropped,
    }
    log.info(
        "self-training on %d maps labelled by %s (%d of validation or test lots left out)",
        len(pseudo),
        labels.teacher,
        dropped,
    )


def _outside_judged_lots(stream: WaferDataset, data: PreparedData) -> tuple[WaferDataset, int]:
    """The maps of ``stream`` from lots the run is not judged on, and how many were left out.

    A validation or test lot lends a run no maps, labelled or not: its unlabelled wafers would
    teach the model that very lot, and held-back test lots have none in the stream.
    """
    judged = np.isin(stream.lot, np.union1d(data.val.raw.lot, data.test.raw.lot))
    return stream.subset(np.flatnonzero(~judged)), int(judged.sum())

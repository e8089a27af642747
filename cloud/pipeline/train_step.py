"""The pipeline's train step: `cloud.training.trainer.train` on the job's data, resumable.

Checkpoints go to ``<job>/run`` after every epoch and the step always trains with
``resume=True``: a step started again after its worker was lost continues from the last
checkpoint, so no finished epoch is trained twice. Progress (epochs and batches) goes to the
job with the heartbeat, each finished epoch to the job's log, and a cancellation stops the run
after the batch under way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud.pipeline.context import StepContext, StepOutcome
from cloud.settings import CloudSettings

if TYPE_CHECKING:
    from cloud.training.config import TrainConfig
    from cloud.training.data import PreparedData
    from cloud.training.trainer import TrainProgress

RUN_DIR = "run"
"""The job's checkpoints (``checkpoint-last.pt``, ``checkpoint-best.pt``)."""
MODEL_DIR = "model"
"""The job's model folder: exported graph, manifest, report (written by evaluate)."""


def load_data(config: TrainConfig, settings: CloudSettings) -> PreparedData:
    """The prepared data of ``config`` (cached by the data file's sha256), with the
    unlabelled stream when the config is semi-supervised."""
    from cloud.training.data import load_unlabelled, prepare

    data = prepare(
        config.data, settings.resolve_data(config.data.path), settings.cache_dir, config.seed
    )
    if config.semi is not None:
        data.unlabelled, data.provenance["unlabelled"] = load_unlabelled(
            settings.resolve_data(config.semi.path), config.semi.limit, config.seed
        )
    return data


class EpochReporter:
    """The trainer's progress callback: job progress, a log line per epoch, cancellation."""

    def __init__(self, ctx: StepContext) -> None:
        """Report to ``ctx``'s job."""
        self.ctx = ctx
        self.resumed_from: int | None = None
        self.epochs_trained = 0

    def __call__(self, progress: TrainProgress) -> None:
        """Record ``progress``; raises (from `StepContext.check`) to stop the run."""
        ctx = self.ctx
        if progress.batch == 0 and not progress.epoch_done:
            self.resumed_from = progress.start_epoch
            if progress.start_epoch:
                ctx.log(
                    f"resumed from the checkpoint of epoch {progress.start_epoch}/"
                    f"{progress.epochs} (attempt {ctx.attempt})"
                )
        ctx.report(
            progress.fraction,
            epochs_done=progress.epoch + (1 if progress.epoch_done else 0),
            epochs=progress.epochs,
            batches_done=0 if progress.epoch_done else progress.batch,
            batches_per_epoch=progress.batches,
        )
        if progress.epoch_done and progress.record is not None:
            self.epochs_trained += 1
            record = progress.record
            ctx.log(
                f"epoch {progress.epoch + 1}/{progress.epochs}: train loss "
                f"{record['train_loss']:.4f}, val macro-F1 {record['val_macro_f1']:.4f}, "
                f"val accuracy {record['val_accuracy']:.4f}; checkpoint saved"
            )
        ctx.check()


def train(ctx: StepContext) -> StepOutcome:
    """Train the job's config on its data, from the last checkpoint when there is one."""
    import torch

    from cloud.training.trainer import train as run_trainer

    config = ctx.config()
    if ctx.settings.torch_threads:
        torch.set_num_threads(ctx.settings.torch_threads)
    data = load_data(config, ctx.settings)
    ctx.log(f"data: {data.provenance['n']}")
    ctx.check()
    reporter = EpochReporter(ctx)
    run_dir = ctx.job_dir / RUN_DIR
    result = run_trainer(config, data, run_dir, resume=True, progress=reporter)
    return StepOutcome(
        output={
            "kind": config.kind,
            "run_dir": str(run_dir),
            "epochs": config.optim.epochs,
            "resumed_from_epoch": reporter.resumed_from,
            "epochs_trained": reporter.epochs_trained,
            "best_epoch": result.best_epoch,
            "best_val_macro_f1": result.best_val_macro_f1,
            "data": _plain(data.provenance),
        }
    )


def _plain(provenance: dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready part of the data provenance."""
    keep = ("path", "sha256", "protocol", "val_fraction", "seed", "limit", "n")
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in provenance.items()
        if key in keep
    }

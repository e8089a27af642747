"""One training run's moving parts and its epoch: batches, losses, the optimiser step, the
validation record and the checkpoint. `cloud.training.trainer.train` drives them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from cloud.evaluation.metrics import accuracy, macro_f1
from cloud.training.config import OptimConfig, TrainConfig
from cloud.training.data import BatchSampler, PreparedData, class_weights
from cloud.training.distributed import Replicas
from cloud.training.losses import LossParts, deep_supervision_loss
from cloud.training.semi import UnlabelledStream
from wafercore.classes import NUM_CLASSES
from wafercore.dataset import WaferDataset
from wafercore.model_input import InputSpec

log = logging.getLogger(__name__)


@dataclass
class LossTerms:
    """How the supervised loss weighs classes: per-class weights or a logit bias, or neither."""

    weights: Tensor | None
    logit_bias: Tensor | None

    @classmethod
    def of(cls, labels: np.ndarray, optim: OptimConfig, device: torch.device) -> LossTerms:
        """The terms ``optim.class_weighting`` asks for, from the training labels."""
        if optim.class_weighting == "none":
            return cls(None, None)
        if optim.class_weighting == "logit_adjust":
            prior = np.bincount(labels, minlength=NUM_CLASSES) / len(labels)
            bias = torch.tensor(np.log(np.maximum(prior, 1e-8)), dtype=torch.float32)
            return cls(None, bias.to(device))
        weights = class_weights(labels, optim.class_weighting)
        return cls(torch.tensor(weights, dtype=torch.float32, device=device), None)


@dataclass
class EpochSums:
    """Running sums of one epoch's batch figures."""

    loss: float = 0.0
    ce: float = 0.0
    halt: float = 0.0
    semi: float = 0.0
    mask: float = 0.0
    batches: int = 0
    step_accuracy: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def pooled(self, replicas: Replicas) -> EpochSums:
        """These sums averaged over the ranks (each ran as many batches): the whole batch's."""
        if not replicas.enabled:
            return self
        head = [self.loss, self.ce, self.halt, self.semi, self.mask]
        mean = replicas.mean(np.array([*head, *self.step_accuracy], dtype=np.float64))
        loss, ce, halt, semi, mask = (float(v) for v in mean[: len(head)])
        return EpochSums(
            loss=loss,
            ce=ce,
            halt=halt,
            semi=semi,
            mask=mask,
            batches=self.batches,
            step_accuracy=mean[len(head) :],
        )

    def add(self, parts: LossParts) -> None:
        """Count one batch's supervised loss."""
        self.batches += 1
        self.loss += parts.total.item()
        self.ce += parts.ce
        self.halt += parts.halt
        acc = np.array(parts.step_accuracy)
        self.step_accuracy = self.step_accuracy + acc if self.step_accuracy.size else acc


@dataclass
class Run:
    """Everything one training run updates, and what its checkpoints record."""

    config: TrainConfig
    data: PreparedData
    train_raw: WaferDataset
    run_dir: Path
    device: torch.device
    model: nn.Module
    ema: Any  # cloud.training.trainer.EMA
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sampler: BatchSampler
    stream: UnlabelledStream | None
    terms: LossTerms
    code: str
    spec: InputSpec
    replicas: Replicas  # the other training processes, if any
    trained: nn.Module  # what the step calls: ``model``, or DDP around it (gradients averaged)
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    global_step: int = 0
    best_f1: float = -1.0
    best_epoch: int = -1

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint of this run (the same config).

        Raises:
            ValueError: the checkpoint was trained with another config.
        """
        if ckpt["config"] != self.config.to_dict():
            raise ValueError(f"{self.run_dir} was trained with another config; refusing to resume")
        self.model.load_state_dict(ckpt["model"])
        self.ema.model.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.start_epoch, self.global_step = ckpt["epoch"] + 1, ckpt["global_step"]
        self.history = ckpt["history"]
        self.best_f1, self.best_epoch = ckpt["best_val_macro_f1"], ckpt["best_epoch"]
        torch.set_rng_state(ckpt["torch_rng"])
        if self.stream is not None:
            self.stream.load_state(ckpt["semi"])
        log.info("resumed from epoch %d", ckpt["epoch"])

    def checkpoint(self, epoch: int) -> dict[str, Any]:
        """What is saved after ``epoch``: weights, optimiser, sampling and semi state, history,
        config, code version and data provenance."""
        architecture = self.model.config
        return {
            "config": self.config.to_dict(),
            "kind": self.config.kind,
            "architecture": architecture.to_dict()
            if hasattr(architecture, "to_dict")
            else vars(architecture),
            "code_version": self.code,
            "data": {
                **self.data.provenance,
                "synthetic_rows": len(self.train_raw) - len(self.data.train_raw),
            },
            "model": self.model.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "global_step": self.global_step,
            "history": self.history,
            "best_val_macro_f1": self.best_f1,
            "best_epoch": self.best_epoch,
            "torch_rng": torch.get_rng_state(),
            "semi": self.stream.state() if self.stream is not None else None,
        }


def train_epoch(
    run: Run,
    epoch: int,
    *,
    step_outputs: Any,
    as_tensor: Any,
    on_batch: Callable[[int, int], None] | None = None,
) -> EpochSums:
    """One pass of optimiser steps over the epoch's batches (and unlabelled batches).

    Args:
        on_batch: called after each optimiser step with (batches done, batches in the epoch);
            an exception it raises stops the epoch there (nothing of it is checkpointed).
    """
    config, optim = run.config, run.config.optim
    run.model.train()
    rng = np.random.default_rng([config.seed, epoch, 1, *run.replicas.rank_stream])
    autocast = run.device.type == "cuda"
    semi = config.semi if run.stream is not None else None
    sums = EpochSums()
    batches = run.sampler.epoch(epoch, config.seed)
    bar = tqdm(
        batches,
        desc=f"epoch {epoch + 1}/{optim.epochs}",
        unit="batch",
        mininterval=10,
        disable=not run.replicas.is_main,
    )
    for done, idx in enumerate(bar, start=1):
        inputs, labels = run.sampler.batch(run.replicas.shard(idx), rng)
        targets = torch.from_numpy(labels).to(run.device)
        with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=autocast):
            logits, halts = step_outputs(run.trained, as_tensor(inputs, run.device))
        parts = deep_supervision_loss(
            [lg.float() for lg in logits],
            None if halts is None else [h.float() for h in halts],
            targets,
            class_weight=run.terms.weights,
            logit_bias=run.terms.logit_bias,
            halt_lambda=optim.halt_lambda,
            label_smoothing=optim.label_smoothing,
        )
        total = parts.total
        if semi is not None and run.stream is not None and epoch >= semi.warmup_epochs:
            with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=autocast):
                loss, stats = run.stream.loss(
                    lambda x: step_outputs(run.trained, x)[0],
                    run.ema.model,
                    lambda m, x: step_outputs(m, x)[0][-1],
                    rng,
                    lambda a: as_tensor(a, run.device),
                )
            total = total + semi.weight * loss
            sums.semi, sums.mask = sums.semi + stats.loss, sums.mask + stats.mask_rate
        _step(run, total)
        sums.add(parts)
        # No refresh here: the bar redraws every `mininterval`, not every batch (a worker's log
        # would get a line per batch).
        bar.set_postfix(
            loss=f"{parts.total.item():.3f}", acc=f"{parts.step_accuracy[-1]:.2f}", refresh=False
        )
        if on_batch is not None:
            on_batch(done, len(batches))
    return sums.pooled(run.replicas)


def _step(run: Run, total: Tensor) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    nn.utils.clip_grad_norm_(run.model.parameters(), run.config.optim.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.ema.update(run.model, run.global_step)
    run.global_step += 1


def epoch_record(
    run: Run, epoch: int, sums: EpochSums, probs: np.ndarray, started: float
) -> dict[str, Any]:
    """The epoch's line of the history: training sums and validation figures."""
    labels = run.data.val.labels
    batches = max(sums.batches, 1)
    prediction = probs[-1].argmax(-1)
    return {
        "epoch": epoch + 1,
        "train_loss": sums.loss / batches,
        "train_ce": sums.ce / batches,
        "train_halt": sums.halt / batches,
        "train_semi_loss": sums.semi / batches,
        "semi_mask_rate": sums.mask / batches,
        "train_step_accuracy": (sums.step_accuracy / batches).tolist(),
        "val_macro_f1": macro_f1(labels, prediction),
        "val_accuracy": accuracy(labels, prediction),
        "val_step_accuracy": [float((p.argmax(-1) == labels).mean()) for p in probs],
        "lr": run.scheduler.get_last_lr()[0],
        "seconds": time.perf_counter() - started,
    }

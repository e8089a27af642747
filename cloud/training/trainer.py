"""The training loop for the neural models (TRM and CNN): one epoch at a time, resumable.

AdamW with linear warm-up and cosine decay, gradient clipping, an EMA of the weights (the EMA
model is what is validated, checkpointed as best and exported), mixed precision on a GPU, and a
checkpoint at the end of every epoch that carries the config, the code version and the data
provenance. ``resume=True`` continues from the last checkpoint with the same sampling stream.

Under ``torchrun`` the same loop trains one DDP replica per process
(`cloud.training.distributed`): rank 0 writes the checkpoints, the others wait for it at the
end of every epoch.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from cloud.models.cnn import BaselineCNN, CNNConfig
from cloud.models.trm import TinyRecursiveModel
from cloud.training.config import OptimConfig, TrainConfig
from cloud.training.data import (
    BatchSampler,
    Part,
    PreparedData,
    add_synthetic,
)
from cloud.training.distributed import Replicas
from cloud.training.epochs import EpochSums, LossTerms, Run, epoch_record, train_epoch
from cloud.training.semi import UnlabelledStream
from wafercore.model_input import InputSpec

log = logging.getLogger(__name__)

LAST = "checkpoint-last.pt"
BEST = "checkpoint-best.pt"
SYNTHETIC_STREAM = 7
"""Random stream (with the seed) of the synthetic maps, apart from sampling and augmentation."""


def build_model(config: TrainConfig) -> nn.Module:
    """The untrained network a config describes."""
    if config.kind == "trm":
        return TinyRecursiveModel(config.trm.build(config.input.spec()))
    if config.kind == "cnn":
        spec = config.input.spec()
        return BaselineCNN(
            CNNConfig(
                channels=config.cnn.channels,
                convs_per_block=config.cnn.convs_per_block,
                grid=spec.size,
                in_channels=0 if spec.is_tokens else len(spec.channels),
            )
        )
    raise ValueError(f"{config.kind!r} is not a neural model")


def as_tensor(inputs: np.ndarray, device: torch.device) -> Tensor:
    """A batch of model inputs on ``device``: tokens as int64, area inputs as float32."""
    tensor = torch.from_numpy(np.ascontiguousarray(inputs))
    return (tensor.float() if inputs.dtype.kind == "f" else tensor.long()).to(device)


def step_outputs(model: nn.Module, tokens: Tensor) -> tuple[list[Tensor], list[Tensor] | None]:
    """Logits per supervision step and halting logits (None for single-pass models).

    ``model`` may be a DDP wrapper: it is called as is (so gradients are averaged), and what it
    wraps decides the outputs' shape.
    """
    core = model.module if isinstance(model, DistributedDataParallel) else model
    if isinstance(core, TinyRecursiveModel):
        outs = model(tokens)
        return [o.logits for o in outs], [o.halt_logit for o in outs]
    return [model(tokens)], None


def code_version() -> str:
    """Git commit of the code (with ``-dirty`` when it has uncommitted changes), if known."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class EMA:
    """Exponential moving average of a model's parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        # Warm the average up: early on, a 0.999 decay would keep the random initialisation.
        decay = min(self.decay, (1 + step) / (10 + step))
        for ema_p, p in zip(self.model.parameters(), model.parameters(), strict=True):
            ema_p.lerp_(p.detach(), 1 - decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers(), strict=True):
            ema_b.copy_(b)


def lr_lambda(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class TrainProgress:
    """Where a `train` call stands, for a caller that reports it (or stops the run).

    Attributes:
        epoch: index (from 0) of the epoch under way, or just finished when ``epoch_done``.
        epochs: epochs of the whole schedule.
        batch: optimiser steps done in that epoch (0 at the start of a call).
        batches: optimiser steps in that epoch.
        start_epoch: the epoch this call started at (above 0 after a resume).
        epoch_done: the epoch is finished and its checkpoint saved.
        record: the finished epoch's line of the history, when ``epoch_done``.
    """

    epoch: int
    epochs: int
    batch: int
    batches: int
    start_epoch: int
    epoch_done: bool = False
    record: dict[str, Any] | None = None

    @property
    def fraction(self) -> float:
        """Share of the schedule done (0 to 1)."""
        within = self.batch / self.batches if self.batches else 0.0
        return min(1.0, (self.epoch + (1.0 if self.epoch_done else within)) / self.epochs)


ProgressCallback = Callable[[TrainProgress], None]
"""Called at the start of a `train` call, after every optimiser step and after every epoch's
checkpoint; an exception it raises stops training (the last checkpoint is the last finished
epoch, from which ``resume=True`` continues)."""


@dataclass
class _Reporter:
    """Tells a `ProgressCallback` (if there is one) where a `train` call stands."""

    callback: ProgressCallback | None
    epochs: int
    start: int
    batches: int = 0

    def __call__(self, epoch: int, batch: int, record: dict[str, Any] | None = None) -> None:
        """Report ``batch`` of ``epoch``; with ``record``, the epoch is done and saved."""
        if self.callback is not None:
            done = record is not None
            self.callback(
                TrainProgress(epoch, self.epochs, batch, self.batches, self.start, done, record)
            )


@dataclass
class TrainResult:
    """Where the run left its checkpoints and how it went."""

    run_dir: Path
    best_epoch: int
    best_val_macro_f1: float
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    """``auto`` takes a GPU where one is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@torch.no_grad()
def predict_steps(
    model: nn.Module, part: Part, device: torch.device, spec: InputSpec, batch: int = 512
) -> np.ndarray:
    """Softmax probabilities per supervision step, (S, N, C), in eval mode."""
    model.eval()
    chunks = []
    for i in range(0, len(part), batch):
        logits, _ = step_outputs(model, as_tensor(part.inputs(spec, i, i + batch), device))
        chunks.append(torch.stack([torch.softmax(s.float(), -1) for s in logits]).cpu().numpy())
    return np.concatenate(chunks, axis=1)


def train(
    config: TrainConfig,
    data: PreparedData,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_after_epochs: int | None = None,
    replicas: Replicas | None = None,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train a neural model; checkpoints go to ``run_dir`` after every epoch.

    Args:
        resume: continue from ``run_dir``'s last checkpoint (same config required).
        stop_after_epochs: end this call after that many epochs (a time-boxed session); a later
            ``resume=True`` call finishes the schedule exactly as one uninterrupted run would.
        replicas: the process group under ``torchrun`` (`cloud.training.distributed`); every
            rank resumes from the same checkpoint, rank 0 alone writes them. Default: alone on
            the config's device.
        progress: told where training stands (`ProgressCallback`); it may stop the run.
    """
    replicas = replicas or Replicas.alone(pick_device(config.device))
    run = _start(config, data, run_dir, replicas)
    if resume and (run_dir / LAST).exists():
        run.restore(torch.load(run_dir / LAST, map_location=run.device, weights_only=False))
    end_epoch = config.optim.epochs
    if stop_after_epochs is not None:
        end_epoch = min(end_epoch, run.start_epoch + stop_after_epochs)
    # Every epoch has as many batches as the first.
    report = _Reporter(progress, epochs=config.optim.epochs, start=run.start_epoch)
    report.batches = len(run.sampler.epoch(0, config.seed))
    report(run.start_epoch, 0)
    for epoch in range(run.start_epoch, end_epoch):
        started = time.perf_counter()
        sums = train_epoch(
            run,
            epoch,
            step_outputs=step_outputs,
            as_tensor=as_tensor,
            on_batch=lambda done, _total, epoch=epoch: report(epoch, done),
        )
        record = _validate(run, epoch, sums, started)
        _end_epoch(run, epoch, record, run_dir)
        report(epoch, report.batches, record)
    return TrainResult(
        run_dir=run_dir,
        best_epoch=run.best_epoch,
        best_val_macro_f1=run.best_f1,
        history=run.history,
    )


def _end_epoch(run: Run, epoch: int, record: dict[str, Any], run_dir: Path) -> None:
    """Record the epoch, keep the best, and checkpoint (rank 0 alone; the others wait)."""
    run.history.append(record)
    log.info(
        "epoch %d: %s", epoch + 1, {k: v for k, v in record.items() if not isinstance(v, list)}
    )
    is_best = record["val_macro_f1"] > run.best_f1
    if is_best:
        run.best_f1, run.best_epoch = record["val_macro_f1"], epoch + 1
    if run.replicas.is_main:
        ckpt = run.checkpoint(epoch)
        atomic_save(ckpt, run_dir / LAST)
        if is_best:
            atomic_save(ckpt, run_dir / BEST)
    run.replicas.barrier()  # nobody runs ahead of (or resumes before) rank 0's checkpoint


def _validate(run: Run, epoch: int, sums: EpochSums, started: float) -> dict[str, Any]:
    """The epoch's record; with several replicas, after making them identical (rank 0's
    BatchNorm statistics) and recording every rank's digest of model and EMA weights (and of
    the semi-supervised thresholds' state, which every rank must share too).

    Raises:
        RuntimeError: the replicas differ (gradients or pseudo-label statistics not shared).
    """
    replicas = run.replicas
    replicas.share_buffers(run.model, run.ema.model)
    probs = predict_steps(run.ema.model, run.data.val, run.device, run.spec)
    record = epoch_record(run, epoch, sums, probs, started)
    if replicas.enabled:
        thresholds = run.stream.state()["status"].tobytes() if run.stream is not None else b""
        digests = replicas.digests(run.model, run.ema.model, extra=thresholds)
        record["replica_sha256"] = digests
        if len(set(digests)) > 1:
            raise RuntimeError(f"replicas diverged in epoch {epoch + 1}: {digests}")
    return record


def _start(config: TrainConfig, data: PreparedData, run_dir: Path, replicas: Replicas) -> Run:
    """A fresh run: seeded model, EMA, sampler, unlabelled stream, optimiser and schedule."""
    run_dir.mkdir(parents=True, exist_ok=True)
    code = code_version()  # the code this run started with, not HEAD at each checkpoint
    seed_everything(config.seed)
    device = replicas.device
    model = build_model(config).to(device)
    optim = config.optim
    ranks = replicas.context.world_size
    if optim.batch_size % ranks:
        raise ValueError(
            f"optim.batch_size {optim.batch_size} must be a multiple of the {ranks} processes"
        )
    train_raw = add_synthetic(
        data.train_raw,
        config.augment.synthetic_per_class,
        np.random.default_rng([config.seed, SYNTHETIC_STREAM]),
    )
    spec = config.input.spec()
    sampler = BatchSampler(train_raw, optim, config.augment, config.seed, spec)
    stream = (
        UnlabelledStream(
            data.unlabelled,
            config.semi,
            spec,
            optim.batch_size // ranks,  # each rank's share of the batch
            share=replicas.gather_rows if replicas.enabled else None,
        )
        if config.semi is not None and data.unlabelled is not None
        else None
    )
    optimizer, scheduler = build_optimiser(
        model, optim, total_steps=len(sampler.epoch(0, config.seed)) * optim.epochs
    )
    return Run(
        config=config,
        data=data,
        train_raw=train_raw,
        run_dir=run_dir,
        device=device,
        model=model,
        ema=EMA(model, optim.ema_decay),
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        stream=stream,
        terms=LossTerms.of(train_raw.labels, optim, device),
        code=code,
        spec=spec,
        replicas=replicas,
        trained=replicas.wrap(model),
    )


def build_optimiser(
    model: nn.Module, optim: OptimConfig, *, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (no weight decay on biases, norms and embeddings) and its warm-up-cosine schedule."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=optim.lr,
        betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, total_steps, optim.warmup_steps, optim.min_lr_ratio)
    )
    return optimizer, scheduler


def atomic_save(obj: dict[str, Any], path: Path) -> None:
    """Save a checkpoint so that a killed process never leaves half of one."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def load_checkpoint_model(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The EMA model of a checkpoint (eval mode, CPU) and the checkpoint's metadata."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    config = TrainConfig.model_validate(ckpt["config"])
    model = build_model(config)
    model.load_state_dict(ckpt["ema"])
    model.eval()
    meta = {
        k: v
        for k, v in ckpt.items()
        if k not in {"model", "ema", "optimizer", "scheduler", "torch_rng", "semi"}
    }
    return model, meta

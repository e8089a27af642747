"""The training loop for the neural models (TRM and CNN): one epoch at a time, resumable.

AdamW with linear warm-up and cosine decay, gradient clipping, an EMA of the weights (the EMA
model is what is validated, checkpointed as best and exported), mixed precision on a GPU, and a
checkpoint at the end of every epoch that carries the config, the code version and the data
provenance. ``resume=True`` continues from the last checkpoint with the same sampling stream.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from cloud.evaluation.metrics import accuracy, macro_f1
from cloud.models.cnn import BaselineCNN, CNNConfig
from cloud.models.trm import TinyRecursiveModel
from cloud.training.config import TrainConfig
from cloud.training.data import (
    BatchSampler,
    Part,
    PreparedData,
    add_synthetic,
    class_weights,
)
from cloud.training.losses import deep_supervision_loss
from cloud.training.semi import SemiStats, UnlabelledStream
from wafercore.classes import NUM_CLASSES
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
    """Logits per supervision step and halting logits (None for single-pass models)."""
    if isinstance(model, TinyRecursiveModel):
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
) -> TrainResult:
    """Train a neural model; checkpoints go to ``run_dir`` after every epoch.

    Args:
        resume: continue from ``run_dir``'s last checkpoint (same config required).
        stop_after_epochs: end this call after that many epochs (a time-boxed session); a later
            ``resume=True`` call finishes the schedule exactly as one uninterrupted run would.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    code = code_version()  # the code this run started with, not HEAD at each checkpoint
    seed_everything(config.seed)
    device = pick_device(config.device)
    model = build_model(config).to(device)
    optim_cfg = config.optim
    train_raw = add_synthetic(
        data.train_raw,
        config.augment.synthetic_per_class,
        np.random.default_rng([config.seed, SYNTHETIC_STREAM]),
    )
    spec = config.input.spec()
    sampler = BatchSampler(train_raw, optim_cfg, config.augment, config.seed, spec)
    stream = (
        UnlabelledStream(data.unlabelled, config.semi, spec, optim_cfg.batch_size)
        if config.semi is not None and data.unlabelled is not None
        else None
    )
    semi_weight = config.semi.weight if config.semi is not None else 0.0
    semi_warmup = config.semi.warmup_epochs if config.semi is not None else 0
    steps_per_epoch = len(sampler.epoch(0, config.seed))
    total_steps = steps_per_epoch * optim_cfg.epochs

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embed" not in name else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": optim_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=optim_cfg.lr,
        betas=(0.9, 0.95),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: lr_lambda(s, total_steps, optim_cfg.warmup_steps, optim_cfg.min_lr_ratio),
    )
    ema = EMA(model, optim_cfg.ema_decay)
    weights = torch.tensor(
        class_weights(train_raw.labels, optim_cfg.class_weighting),
        dtype=torch.float32,
        device=device,
    )
    logit_bias = None
    if optim_cfg.class_weighting == "logit_adjust":
        prior = np.bincount(train_raw.labels, minlength=NUM_CLASSES) / len(train_raw)
        logit_bias = torch.tensor(
            np.log(np.maximum(prior, 1e-8)), dtype=torch.float32, device=device
        )
        weights = None
    elif optim_cfg.class_weighting == "none":
        weights = None

    history: list[dict[str, Any]] = []
    start_epoch, global_step, best_f1, best_epoch = 0, 0, -1.0, -1
    if resume and (run_dir / LAST).exists():
        ckpt = torch.load(run_dir / LAST, map_location=device, weights_only=False)
        if ckpt["config"] != config.to_dict():
            raise ValueError(
                f"{run_dir / LAST} was trained with another config; refusing to resume"
            )
        model.load_state_dict(ckpt["model"])
        ema.model.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, global_step = ckpt["epoch"] + 1, ckpt["global_step"]
        history, best_f1, best_epoch = (
            ckpt["history"],
            ckpt["best_val_macro_f1"],
            ckpt["best_epoch"],
        )
        torch.set_rng_state(ckpt["torch_rng"])
        if stream is not None:
            stream.load_state(ckpt["semi"])
        log.info("resumed from epoch %d", ckpt["epoch"])

    autocast = device.type == "cuda"
    end_epoch = optim_cfg.epochs
    if stop_after_epochs is not None:
        end_epoch = min(end_epoch, start_epoch + stop_after_epochs)
    for epoch in range(start_epoch, end_epoch):
        model.train()
        rng = np.random.default_rng([config.seed, epoch, 1])
        batches = sampler.epoch(epoch, config.seed)
        started = time.perf_counter()
        sums = {"loss": 0.0, "ce": 0.0, "halt": 0.0, "semi": 0.0, "mask": 0.0}
        step_acc = np.zeros(0)
        bar = tqdm(
            batches, desc=f"epoch {epoch + 1}/{optim_cfg.epochs}", unit="batch", mininterval=10
        )
        for idx in bar:
            inputs, labels = sampler.batch(idx, rng)
            tokens = as_tensor(inputs, device)
            targets = torch.from_numpy(labels).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                logits, halts = step_outputs(model, tokens)
            parts = deep_supervision_loss(
                [lg.float() for lg in logits],
                None if halts is None else [h.float() for h in halts],
                targets,
                class_weight=weights,
                logit_bias=logit_bias,
                halt_lambda=optim_cfg.halt_lambda,
                label_smoothing=optim_cfg.label_smoothing,
            )
            total = parts.total
            if stream is not None and epoch >= semi_warmup:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    semi = _semi_loss(stream, model, ema.model, rng, device)
                total = total + semi_weight * semi[0]
                sums["semi"] += semi[1].loss
                sums["mask"] += semi[1].mask_rate
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            ema.update(model, global_step)
            global_step += 1
            sums["loss"] += parts.total.item()
            sums["ce"] += parts.ce
            sums["halt"] += parts.halt
            step_acc = (
                step_acc + np.array(parts.step_accuracy)
                if step_acc.size
                else np.array(parts.step_accuracy)
            )
            bar.set_postfix(loss=f"{parts.total.item():.3f}", acc=f"{parts.step_accuracy[-1]:.2f}")
        n = len(batches)
        probs = predict_steps(ema.model, data.val, device, spec)
        val_pred = probs[-1].argmax(-1)
        f1, acc = macro_f1(data.val.labels, val_pred), accuracy(data.val.labels, val_pred)
        record = {
            "epoch": epoch + 1,
            "train_loss": sums["loss"] / n,
            "train_ce": sums["ce"] / n,
            "train_halt": sums["halt"] / n,
            "train_semi_loss": sums["semi"] / n,
            "semi_mask_rate": sums["mask"] / n,
            "train_step_accuracy": (step_acc / n).tolist(),
            "val_macro_f1": f1,
            "val_accuracy": acc,
            "val_step_accuracy": [float((p.argmax(-1) == data.val.labels).mean()) for p in probs],
            "lr": scheduler.get_last_lr()[0],
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        log.info(
            "epoch %d: %s", epoch + 1, {k: v for k, v in record.items() if not isinstance(v, list)}
        )
        is_best = f1 > best_f1
        if is_best:
            best_f1, best_epoch = f1, epoch + 1
        ckpt = {
            "config": config.to_dict(),
            "kind": config.kind,
            "architecture": model.config.to_dict()
            if hasattr(model.config, "to_dict")
            else vars(model.config),
            "code_version": code,
            "data": {
                **data.provenance,
                "synthetic_rows": len(train_raw) - len(data.train_raw),
            },
            "model": model.state_dict(),
            "ema": ema.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "global_step": global_step,
            "history": history,
            "best_val_macro_f1": best_f1,
            "best_epoch": best_epoch,
            "torch_rng": torch.get_rng_state(),
            "semi": stream.state() if stream is not None else None,
        }
        _atomic_save(ckpt, run_dir / LAST)
        if is_best:
            _atomic_save(ckpt, run_dir / BEST)
    return TrainResult(
        run_dir=run_dir, best_epoch=best_epoch, best_val_macro_f1=best_f1, history=history
    )


def _semi_loss(
    stream: UnlabelledStream,
    model: nn.Module,
    teacher: nn.Module,
    rng: np.random.Generator,
    device: torch.device,
) -> tuple[Tensor, SemiStats]:
    """One unlabelled batch's consistency loss (`cloud.training.semi`)."""
    return stream.loss(
        lambda x: step_outputs(model, x)[0],
        teacher,
        lambda m, x: step_outputs(m, x)[0][-1],
        rng,
        lambda a: as_tensor(a, device),
    )


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
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

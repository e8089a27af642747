"""Training the novelty model (issue 14): a VAE of the known patterns, resumable, then exported
with its threshold calibrated on validation lots.

The run shares the classifiers' machinery: the same config file format (``kind: vae``), data
split and cache, augmented batch sampler, AdamW with warm-up and cosine decay, EMA of the
weights and per-epoch checkpoints that carry config, code version and data provenance. What
differs is the objective (`cloud.models.vae.vae_loss`) and what "best" means: the lowest mean
novelty score of the validation lots' known-pattern wafers.

Classes named in ``novelty.exclude`` never reach the VAE, in training or calibration: that is
how the leave-one-class-out evaluation makes a class novel.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cloud.evaluation.novelty import calibrate_threshold
from cloud.export import export_novelty_dir, write_novelty_manifest
from cloud.models.trm import count_parameters
from cloud.models.vae import VAEConfig, WaferVAE, novelty, vae_loss
from cloud.training.config import TrainConfig
from cloud.training.data import BatchSampler, Part, PreparedData
from cloud.training.trainer import (
    BEST,
    EMA,
    LAST,
    as_tensor,
    atomic_save,
    build_optimiser,
    code_version,
    pick_device,
    seed_everything,
)
from wafercore.classes import CLASS_NAMES
from wafercore.dataset import WaferDataset
from wafercore.novelty import NoveltyRuntime

log = logging.getLogger(__name__)

SCORE_BATCH = 512


def build_vae(config: TrainConfig) -> WaferVAE:
    """The untrained VAE a ``kind: vae`` config describes."""
    return WaferVAE(
        VAEConfig(
            size=config.input.size,
            channels=config.vae.channels,
            latent=config.vae.latent,
            beta=config.vae.beta,
        )
    )


def known_rows(labels: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Indices of the rows whose class the VAE may learn (not in ``novelty.exclude``)."""
    excluded = [CLASS_NAMES.index(name) for name in config.novelty.exclude]
    return np.flatnonzero(~np.isin(labels, excluded))


def known_part(part: Part, config: TrainConfig) -> Part:
    """``part`` without the excluded classes."""
    if not config.novelty.exclude:
        return part
    return Part.of(part.raw.subset(known_rows(part.labels, config)))


@torch.no_grad()
def score_part(vae: WaferVAE, part: Part, config: TrainConfig) -> np.ndarray:
    """Novelty scores (N,) of a part with the VAE's posterior means, in eval mode."""
    vae.eval()
    spec, device = config.input.spec(), next(vae.parameters()).device
    scores = []
    for i in range(0, len(part), SCORE_BATCH):
        x = as_tensor(part.inputs(spec, i, i + SCORE_BATCH), device)
        mu, _ = vae.encode(x)
        scores.append(novelty(vae.decode(mu), x)[0].cpu().numpy())
    return np.concatenate(scores) if scores else np.empty(0, np.float32)


def train_vae(
    config: TrainConfig,
    data: PreparedData,
    run_dir: Path,
    *,
    resume: bool = False,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train the VAE; checkpoints go to ``run_dir`` after every epoch. Returns the last
    checkpoint's metadata (history, best epoch)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed)
    device = pick_device(config.device)
    model = build_vae(config).to(device)
    train_raw = data.train_raw.subset(known_rows(data.train_raw.labels, config))
    val = known_part(data.val, config)
    sampler = BatchSampler(
        train_raw, config.optim, config.augment, config.seed, config.input.spec()
    )
    total = len(sampler.epoch(0, config.seed)) * config.optim.epochs
    optimizer, scheduler = build_optimiser(model, config.optim, total_steps=total)
    ema = EMA(model, config.optim.ema_decay)
    state: dict[str, Any] = {
        "config": config.to_dict(),
        "code_version": code_version(),
        "data": {**data.provenance, "n_known": {"train": len(train_raw), "val": len(val)}},
        "history": [],
        "best_epoch": 0,
        "best_val_score": float("inf"),
        "epoch": -1,
    }
    if resume and (run_dir / LAST).exists():
        ckpt = torch.load(run_dir / LAST, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        ema.model.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])  # the posterior samples continue as they were
        state = {k: ckpt[k] for k in state}
    end = config.optim.epochs
    if stop_after_epochs is not None:
        end = min(end, state["epoch"] + 1 + stop_after_epochs)
    for epoch in range(state["epoch"] + 1, end):
        started = time.perf_counter()
        sums = _train_epoch(model, ema, optimizer, scheduler, sampler, config, epoch, device)
        val_score = float(score_part(ema.model, val, config).mean())
        record = {**sums, "epoch": epoch + 1, "val_score": val_score}
        record["seconds"] = time.perf_counter() - started
        log.info("epoch %d: %s", epoch + 1, record)
        state["history"].append(record)
        state["epoch"] = epoch
        ckpt = {
            **state,
            "model": model.state_dict(),
            "ema": ema.model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        if val_score < state["best_val_score"]:
            state["best_val_score"], state["best_epoch"] = val_score, epoch + 1
            ckpt.update(best_val_score=val_score, best_epoch=epoch + 1)
            atomic_save(ckpt, run_dir / BEST)
        atomic_save(ckpt, run_dir / LAST)
    return state


def _train_epoch(
    model: WaferVAE,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    sampler: BatchSampler,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
) -> dict[str, float]:
    """One pass of optimiser steps; the epoch's mean loss, reconstruction and KL."""
    model.train()
    rng = np.random.default_rng([config.seed, epoch, 1])
    batches = sampler.epoch(epoch, config.seed)
    sums = np.zeros(3)
    for idx in batches:
        x = as_tensor(sampler.batch(idx, rng)[0], device)
        logits, mu, logvar = model(x)
        loss, reconstruction, kl = vae_loss(logits, x, mu, logvar, config.vae.beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        ema.update(model, int(scheduler.last_epoch))
        sums += [loss.item(), reconstruction.item(), kl.item()]
    mean = sums / max(1, len(batches))
    return {
        "train_loss": float(mean[0]),
        "train_reconstruction": float(mean[1]),
        "train_kl": float(mean[2]),
        "lr": float(scheduler.get_last_lr()[0]),
    }


def runtime_scores(runtime: NoveltyRuntime, raw: WaferDataset) -> np.ndarray:
    """Novelty scores (N,) of every map of ``raw`` as a node computes them (exported graph,
    ONNX Runtime), in batches."""
    scores = [
        runtime.score(
            runtime.prepare([raw.map(j) for j in range(i, min(i + SCORE_BATCH, len(raw)))])
        )
        for i in range(0, len(raw), SCORE_BATCH)
    ]
    return np.concatenate([s.score for s in scores]) if scores else np.empty(0, np.float32)


def finalize_vae(checkpoint: Path, val: Part, out_dir: Path) -> dict[str, Any]:
    """Export the checkpoint's EMA VAE to ``out_dir`` (``novelty.onnx``, ``novelty.json``) with
    its threshold calibrated on ``val``'s known-pattern wafers, scored by the exported graph.

    Returns the manifest's ``extra``.
    """
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    config = TrainConfig.model_validate(ckpt["config"])
    vae = build_vae(config)
    vae.load_state_dict(ckpt["ema"])
    vae.eval()
    rate = config.novelty.false_alarm_rate
    extra: dict[str, Any] = {
        "training": ckpt["config"],
        "code_version": ckpt["code_version"],
        "data": ckpt["data"],
        "history": ckpt["history"],
        "best_epoch": ckpt["best_epoch"],
        "params": count_parameters(vae),
    }
    manifest = export_novelty_dir(
        vae, out_dir, version=config.version, threshold=0.0, false_alarm_rate=rate, extra=extra
    )
    known = known_part(val, config)
    scores = runtime_scores(NoveltyRuntime.load(out_dir, threads=2), known.raw)
    threshold = calibrate_threshold(scores, rate)
    extra["validation"] = {
        "n": len(scores),
        "threshold": threshold,
        "flagged": float(np.mean(scores > threshold)),
        "score_quantiles": {
            str(q): float(np.quantile(scores, q)) for q in (0.5, 0.9, 0.95, 0.99, 0.999)
        },
    }
    write_novelty_manifest(
        out_dir, replace(manifest, threshold=threshold, extra={**manifest.extra, **extra})
    )
    log.info("novelty threshold %.4f (%.2f%% of %d val wafers)", threshold, 100 * rate, len(scores))
    return extra

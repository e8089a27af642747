"""Training a head on frozen features: class-weighted cross-entropy, the best epoch by
validation macro-F1, identical hyper-parameters for every variant.

The report's loss is multilabel ``BCEWithLogitsLoss`` with ``pos_weight`` from prevalence; a
wafer here has exactly one class, so it becomes single-label cross-entropy with class weights
``N / (C * n_c)`` from the training set's prevalence.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from cloud.evaluation.metrics import macro_f1


@dataclass(frozen=True)
class HeadConfig:
    """Hyper-parameters shared by both variants."""

    epochs: int = 12
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    layers: int = 2
    seed: int = 0


@dataclass
class Trained:
    """A trained head (its best epoch's weights) and how it got there."""

    head: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0


def class_weights(y: npt.NDArray[np.int64], classes: int) -> torch.Tensor:
    """``N / (C * n_c)`` per class (1 for a class absent from training)."""
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    weights = np.where(counts > 0, len(y) / (classes * np.maximum(counts, 1)), 1.0)
    return torch.as_tensor(weights, dtype=torch.float32)


def predict_proba(
    head: nn.Module, features: npt.NDArray[np.float32], batch_size: int = 1024
) -> npt.NDArray[np.float32]:
    """Softmax probabilities of ``features`` (evaluation mode, no gradients)."""
    head.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            batch = torch.as_tensor(features[start : start + batch_size])
            out.append(torch.softmax(head(batch), dim=1).numpy())
    return np.concatenate(out) if out else np.empty((0, 0), dtype=np.float32)


def _epoch(
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: HeadConfig,
    generator: torch.Generator,
) -> float:
    head.train()
    order = torch.randperm(len(x), generator=generator)
    total = 0.0
    for start in range(0, len(x), config.batch_size):
        index = order[start : start + config.batch_size]
        loss = loss_fn(head(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(index)
    return total / max(len(x), 1)


def train_head(
    head: nn.Module,
    train: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    val: tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]],
    config: HeadConfig,
    classes: int,
) -> Trained:
    """Train ``head``; keep the weights of the epoch with the best validation macro-F1."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x, y = torch.as_tensor(train[0]), torch.as_tensor(train[1])
    weights = class_weights(train[1], classes)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    trained = Trained(head)
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        train_loss = _epoch(head, optimizer, loss_fn, x, y, config, generator)
        probs = predict_proba(head, val[0])
        val_loss = float(
            loss_fn(torch.log(torch.as_tensor(probs).clamp_min(1e-12)), torch.as_tensor(val[1]))
        )
        score = macro_f1(val[1], probs.argmax(axis=1), k=classes)
        trained.history.append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_macro_f1": score}
        )
        if score > best[0]:
            best = (score, copy.deepcopy(head.state_dict()))
            trained.best_epoch = epoch
    head.load_state_dict(best[1])
    trained.seconds = time.perf_counter() - started
    return trained

"""One benchmark run: features once, then each protocol's split and each variant's head.

Protocols: ``random`` (the report's 70/10/20, stratified, one seed for both variants) and
``lots`` (the platform's lot-disjoint protocol: WM-811K's Test lots, validation lots carved
from Training; the honest one). Both variants see the same rows, the same hyper-parameters and
the same seed.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from sklearn.metrics import average_precision_score

from cloud.evaluation.metrics import macro_f1
from cloud.heads import evaluate
from cloud.heads.models import Variant, make_head, trainable_parameters
from cloud.heads.training import HeadConfig, Trained, predict_proba, train_head
from wafercore.classes import CLASS_NAMES, NUM_CLASSES
from wafercore.dataset import WaferDataset
from wafercore.splits import Split, official_split, stratified_split

PROTOCOLS = ("random", "lots")
RANDOM_FRACTIONS = (0.7, 0.1, 0.2)


@dataclass(frozen=True)
class Features:
    """The frozen backbone's features of the labelled rows, and where they came from."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    backbone: str
    dim: int
    seconds: float


def split_for(protocol: str, dataset: WaferDataset, seed: int) -> Split:
    """The rows of each part under ``protocol`` (indices into ``dataset``)."""
    if protocol == "random":
        return stratified_split(dataset.labels, RANDOM_FRACTIONS, seed=seed)
    if protocol == "lots":
        return official_split(dataset, val_fraction=0.1, seed=seed)
    raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _timed_proba(trained: Trained, x: npt.NDArray[np.float32]) -> tuple[Any, float]:
    started = time.perf_counter()
    probs = predict_proba(trained.head, x)
    return probs, time.perf_counter() - started


def _per_class_ap(probs: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> dict[str, float]:
    return {
        name: float(average_precision_score(y == c, probs[:, c])) if (y == c).any() else 0.0
        for c, name in enumerate(CLASS_NAMES)
    }


def run_variant(
    variant: Variant, features: Features, split: Split, config: HeadConfig, protocol: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and score one head; its JSON report and, for the figures, its test probabilities."""
    head = make_head(variant, features.dim, NUM_CLASSES, hidden=config.hidden, layers=config.layers)
    parts = {name: getattr(split, name) for name in ("train", "val", "test")}
    data = {name: (features.x[rows], features.y[rows]) for name, rows in parts.items()}
    trained = train_head(head, data["train"], data["val"], config, NUM_CLASSES)
    val_probs, val_seconds = _timed_proba(trained, data["val"][0])
    test_probs, test_seconds = _timed_proba(trained, data["test"][0])
    thresholds = evaluate.tune_thresholds(val_probs, data["val"][1])
    report = {
        "variant": variant,
        "protocol": protocol,
        "backbone": features.backbone,
        "feature_dim": features.dim,
        "split_sizes": {name: len(rows) for name, rows in parts.items()},
        "config": asdict(config),
        "head_trainable_params": trainable_parameters(trained.head),
        # The backbone is frozen: the head is all that trains.
        "total_trainable_params": trainable_parameters(trained.head),
        "train_seconds": trained.seconds,
        "best_epoch": trained.best_epoch,
        "history": trained.history,
        "val_seconds": val_seconds,
        "val_throughput_per_s": len(data["val"][1]) / max(val_seconds, 1e-9),
        "test_seconds": test_seconds,
        "test_throughput_per_s": len(data["test"][1]) / max(test_seconds, 1e-9),
        "backbone_throughput_per_s": len(features.y) / max(features.seconds, 1e-9),
        "peak_cpu_rss_mb": _peak_rss_mb(),
        "peak_gpu_mb": None,  # the heads run on CPU here (no GPU on this machine)
        "validation": {
            "macro_f1_argmax": macro_f1(data["val"][1], val_probs.argmax(axis=1)),
            "macro_f1_tuned": macro_f1(
                data["val"][1], evaluate.apply_thresholds(val_probs, thresholds)
            ),
        },
        "test": evaluate.score(test_probs, data["test"][1], thresholds, seed=config.seed),
        "per_class_ap": _per_class_ap(test_probs, data["test"][1]),
    }
    return report, {"probs": test_probs, "y": data["test"][1]}


def set_threads(threads: int) -> None:
    """PyTorch's CPU threads (0: leave the default)."""
    if threads > 0:
        torch.set_num_threads(threads)

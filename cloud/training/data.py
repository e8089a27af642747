"""Training data: read once, split by protocol, preprocess once and cache, sample and augment.

The pipeline keeps the raw maps in memory because size-invariance augmentation resamples the
raw map to a random resolution first, and because a model's declared input
(`wafercore.model_input`) is built from the raw map, as the runtime builds it on a node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.training.config import AugmentConfig, DataConfig, OptimConfig
from wafercore.augmentation import augment, augment_batch, random_dihedral
from wafercore.classes import NUM_CLASSES, DefectClass
from wafercore.dataset import UNLABELLED, WaferDataset
from wafercore.encoding import GRID
from wafercore.model_input import InputSpec, area_resample, build_input
from wafercore.preprocessing import dataset_to_grids, resize_nearest, to_grid
from wafercore.readers.npz import file_sha256, read_npz
from wafercore.splits import TEST, protocol_split
from wafercore.synthetic import generate_map

log = logging.getLogger(__name__)

RARE_CLASSES = (DefectClass.DONUT, DefectClass.NEAR_FULL, DefectClass.RANDOM, DefectClass.SCRATCH)
"""Classes with fewer than ~1,100 labelled maps in WM-811K: synthetic augmentation targets."""

Grids = npt.NDArray[np.uint8]
Labels = npt.NDArray[np.int64]


@dataclass
class Part:
    """One part of a split: raw maps, 26x26 grids (display, plots), labels and map shapes."""

    raw: WaferDataset
    grids: Grids  # (N, 26, 26)
    labels: Labels  # (N,)
    shapes: npt.NDArray[np.int32]  # (N, 2)

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def of(cls, raw: WaferDataset) -> Part:
        """A part holding every map of ``raw``."""
        return cls(raw=raw, grids=dataset_to_grids(raw), labels=raw.labels, shapes=raw.shapes)

    def inputs(self, spec: InputSpec, start: int, stop: int) -> npt.NDArray[Any]:
        """The model input of rows ``start:stop``, exactly as the runtime builds it."""
        if spec.is_tokens:  # the cached grids are those tokens
            return self.grids[start:stop].reshape(-1, GRID * GRID)
        return build_input([self.raw.map(i) for i in range(start, min(stop, len(self)))], spec)


@dataclass
class PreparedData:
    """Everything a run trains and validates on, with where it came from."""

    train_raw: WaferDataset
    train: Part
    val: Part
    test: Part
    provenance: dict[str, Any]
    unlabelled: WaferDataset | None = None  # the production stream, for semi-supervision


def load_unlabelled(
    path: Path, limit: int | None, seed: int
) -> tuple[WaferDataset, dict[str, Any]]:
    """The unlabelled maps of ``path`` (at most ``limit``, drawn at random) and their provenance."""
    dataset = read_npz(path)
    if limit is not None and limit < len(dataset):
        rng = np.random.default_rng([seed, 11])
        dataset = dataset.subset(np.sort(rng.choice(len(dataset), size=limit, replace=False)))
    provenance = {"path": str(path), "sha256": file_sha256(path), "n": len(dataset)}
    return dataset, provenance


def prepare(config: DataConfig, data_path: Path, cache_dir: Path, seed: int) -> PreparedData:
    """Read ``data_path``, split it by ``config.protocol`` and preprocess every part once.

    The 26x26 grids and split indices are cached under ``cache_dir`` keyed by the file's
    sha256, protocol, validation fraction, seed and limit, so a second run (or a resumed one)
    skips preprocessing.
    """
    sha = file_sha256(data_path)
    dataset = read_npz(data_path)
    labelled = np.flatnonzero(dataset.labels != UNLABELLED)
    if config.limit is not None:
        rng = np.random.default_rng(seed)
        labelled = np.sort(
            rng.choice(labelled, size=min(config.limit, len(labelled)), replace=False)
        )
    dataset = dataset.subset(labelled)
    key = f"{sha[:16]}-{config.protocol}-{config.val_fraction}-{seed}-{config.limit}"
    cache = cache_dir / f"{key}.npz"
    if cache.exists():
        cached = np.load(cache)
        train_idx, val_idx, test_idx = cached["train"], cached["val"], cached["test"]
        grids = cached["grids"]
        log.info("preprocessed data from cache %s", cache)
    else:
        split = protocol_split(dataset, config.protocol, config.val_fraction, seed)
        train_idx, val_idx, test_idx = split.train, split.val, split.test
        grids = dataset_to_grids(dataset)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, grids=grids, train=train_idx, val=val_idx, test=test_idx)
        tmp.replace(cache)  # atomic: a killed run never leaves half a cache

    def part(idx: npt.NDArray[np.int64]) -> Part:
        return Part(
            raw=dataset.subset(idx),
            grids=grids[idx],
            labels=dataset.labels[idx],
            shapes=dataset.shapes[idx],
        )

    provenance = {
        "path": str(data_path),
        "sha256": sha,
        "protocol": config.protocol,
        "val_fraction": config.val_fraction,
        "seed": seed,
        "limit": config.limit,
        "n": {"train": len(train_idx), "val": len(val_idx), "test": len(test_idx)},
        "train_class_counts": np.bincount(
            dataset.labels[train_idx], minlength=NUM_CLASSES
        ).tolist(),
    }
    return PreparedData(
        train_raw=dataset.subset(train_idx),
        train=part(train_idx),
        val=part(val_idx),
        test=part(test_idx),
        provenance=provenance,
    )


SPLIT_FIELDS = ("sha256", "protocol", "val_fraction", "seed")
"""The provenance fields (`prepare`'s) that fix a run's split, and so its validation lots."""


def split_of(provenance: dict[str, Any]) -> tuple[Any, ...]:
    """The `SPLIT_FIELDS` of a run's data provenance (a manifest's ``extra["data"]``)."""
    return tuple(provenance.get(field) for field in SPLIT_FIELDS)


def read_labelled(data_path: Path) -> WaferDataset:
    """The labelled rows of ``data_path``, in file order (what every split indexes)."""
    dataset = read_npz(data_path)
    return dataset.subset(np.flatnonzero(dataset.labels != UNLABELLED))


def evaluation_part(data_path: Path, protocol: str, val_fraction: float, seed: int) -> Part:
    """The test part of a data file for evaluation.

    The protocol's split decides (`wafercore.splits.protocol_split`; official: every ``Test``
    row, so a file of ``Test`` lots only is the test set as a whole; production: the ``Test``
    lots it did not give to training; random: the stratified test part).

    Raises:
        ValueError: an unknown protocol, or a file without rows for the test part.
    """
    dataset = read_labelled(data_path)
    idx = protocol_split(dataset, protocol, val_fraction, seed).test
    if len(idx) == 0:
        raise ValueError(f"{data_path} has no labelled rows for the {protocol} protocol's test")
    return Part.of(dataset.subset(idx))


def add_synthetic(raw: WaferDataset, per_class: int, rng: np.random.Generator) -> WaferDataset:
    """Append ``per_class`` synthetic maps of every rare class, at the real maps' sizes."""
    if per_class == 0:
        return raw
    maps = [raw.map(i) for i in range(len(raw))]
    labels = raw.labels.tolist()
    shapes = raw.shapes[rng.integers(0, len(raw), size=per_class * len(RARE_CLASSES))]
    for cls, (rows, cols) in zip(np.repeat(RARE_CLASSES, per_class), shapes, strict=True):
        maps.append(generate_map(DefectClass(cls), rng, int(rows), int(cols)))
        labels.append(int(cls))
    return WaferDataset.from_maps(maps, labels=labels, source=raw.source)


def sampling_weights(
    labels: Labels, shapes: npt.NDArray[np.int32], mode: str, *, size_balanced: bool = True
) -> npt.NDArray[np.float64]:
    """Per-row sampling probability.

    Classes are drawn in proportion to count^a (natural a = 1, sqrt a = 0.5, balanced a = 0).
    With ``size_balanced`` every size bucket (rows and cols in steps of 8) of a class is drawn
    equally often, so map size stops predicting the class in what the model sees (DESIGN.md §4).
    """
    alpha = {"natural": 1.0, "sqrt": 0.5, "balanced": 0.0}[mode]
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.float64)
    if size_balanced:
        buckets = (shapes[:, 0] // 8).astype(np.int64) * 1000 + shapes[:, 1] // 8
    else:
        buckets = np.zeros(len(labels), np.int64)
    weights = np.zeros(len(labels))
    for cls in np.flatnonzero(counts):
        rows = np.flatnonzero(labels == cls)
        _, inverse, per_bucket = np.unique(buckets[rows], return_inverse=True, return_counts=True)
        # Each bucket of the class gets an equal share; each class gets count^alpha.
        within = 1.0 / (per_bucket[inverse] * len(per_bucket))
        weights[rows] = within * counts[cls] ** alpha
    return weights / weights.sum()


def class_weights(labels: Labels, mode: str, beta: float = 0.999) -> npt.NDArray[np.float64]:
    """Loss weight per class (mean 1): none, inverse frequency or effective number."""
    counts = np.maximum(np.bincount(labels, minlength=NUM_CLASSES), 1).astype(np.float64)
    if mode == "inverse":
        w = 1.0 / counts
    elif mode == "effective":  # Cui et al. 2019: (1 - beta) / (1 - beta^n)
        w = (1 - beta) / (1 - beta**counts)
    else:
        w = np.ones(NUM_CLASSES)
    return w / w.mean()


class BatchSampler:
    """Draws augmented training batches: sampling weights, resolution resampling, flips, noise.

    Batches are the model's declared input (``spec``): (B, 676) tokens, or (B, C, S, S)
    fractions built from each augmented raw map.
    """

    def __init__(
        self,
        raw: WaferDataset,
        optim: OptimConfig,
        augment: AugmentConfig,
        seed: int,
        spec: InputSpec | None = None,
    ) -> None:
        self.raw = raw
        self.optim = optim
        self.augment = augment
        self.spec = spec or InputSpec()
        weights = sampling_weights(
            raw.labels, raw.shapes, optim.sampling, size_balanced=optim.size_balanced
        )
        weights = weights * np.where(raw.split == TEST, optim.reviewed_weight, 1.0)
        self.weights = weights / weights.sum()
        # The 26x26 grids only feed the token input; an area input is built from the raw maps.
        self.grids = dataset_to_grids(raw) if self.spec.is_tokens else None

    def epoch(self, epoch: int, seed: int) -> list[npt.NDArray[np.int64]]:
        """Index batches of one epoch, deterministic by (seed, epoch)."""
        rng = np.random.default_rng([seed, epoch])
        size = self.optim.samples_per_epoch or len(self.raw)
        idx = rng.choice(len(self.raw), size=size, replace=True, p=self.weights)
        bs = self.optim.batch_size
        return [idx[i : i + bs] for i in range(0, size - bs + 1, bs)] or [idx]

    def batch(
        self, idx: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> tuple[npt.NDArray[Any], Labels]:
        """The augmented model inputs and the labels of the rows ``idx``."""
        if not self.spec.is_tokens:
            return self._area_batch(idx, rng), self.raw.labels[idx]
        grids, labels = self._grid_batch(idx, rng)
        return grids.reshape(len(idx), -1), labels

    def _area_batch(self, idx: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[Any]:
        """Each raw map resampled to a random die pitch, rotated or flipped, then area-resampled."""
        scale = self.augment.resolution_scale
        factors = (
            rng.uniform(scale[0], scale[1], size=(len(idx), 2))
            if scale is not None
            else np.ones((len(idx), 2))
        )
        out = np.empty((len(idx), *self.spec.shape), dtype=np.float32)
        for j, i in enumerate(idx):
            wafer = self.raw.map(int(i))
            if scale is not None:
                wafer = rescale(wafer, factors[j], limit=512)
            if self.augment.flips_rotations:
                wafer = augment(wafer, rng) if self.augment.noise else random_dihedral(wafer, rng)
            out[j] = area_resample(wafer[None], self.spec.size, self.spec.channels)[0]
        return out

    def _grid_batch(
        self, idx: npt.NDArray[np.int64], rng: np.random.Generator
    ) -> tuple[Grids, Labels]:
        """Augmented (B, 26, 26) grids and labels for the rows ``idx``."""
        scale = self.augment.resolution_scale
        if scale is None:
            assert self.grids is not None  # a token input's sampler has them
            grids = self.grids[idx]
        else:
            grids = np.empty((len(idx), GRID, GRID), np.uint8)
            factors = rng.uniform(scale[0], scale[1], size=(len(idx), 2))
            for j, i in enumerate(idx):
                grids[j] = resample_to_grid(self.raw.map(int(i)), factors[j])
        if self.augment.flips_rotations:
            grids = augment_batch(grids, rng)
        return grids, self.raw.labels[idx]


def rescale(wafer_map: Grids, factors: npt.NDArray[np.float64], *, limit: int = 256) -> Grids:
    """Resample a raw map by (row, col) factors with nearest neighbour (8..limit per side).

    Emulates the same wafer tested at another die pitch: what the model sees then no longer
    tells the map's original size.
    """
    rows, cols = wafer_map.shape
    new_rows = int(np.clip(round(rows * factors[0]), 8, limit))
    new_cols = int(np.clip(round(cols * factors[1]), 8, limit))
    return resize_nearest(wafer_map, new_rows, new_cols)


def resample_to_grid(wafer_map: Grids, factors: npt.NDArray[np.float64]) -> Grids:
    """`rescale`, then the 26x26 grid (the legacy token input)."""
    return to_grid(rescale(wafer_map, factors))

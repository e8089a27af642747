"""Synthetic labelled wafers in WM-811K's npz layout, for the tiny config (tests, the demo).

No real data is needed to run a retraining job end to end: `write_tiny_dataset` draws every
class with `wafercore.synthetic` into whole lots of the official ``Training`` and ``Test``
splits, so the official protocol holds out whole lots as on WM-811K.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wafercore.dataset import WaferDataset
from wafercore.readers.npz import write_npz
from wafercore.splits import TEST, TRAINING
from wafercore.synthetic import LOT_SIZE, generate_dataset

TINY_FILE = "tiny.npz"
"""The data file `configs/tiny.yaml` names."""


def _part(per_class: int, seed: int, split: str, sizes: tuple[int, int]) -> WaferDataset:
    drawn = generate_dataset(per_class, np.random.default_rng(seed), sizes=sizes)
    lots = [f"{split[:2].upper()}-{seed}-{i // LOT_SIZE}" for i in range(len(drawn))]
    part = WaferDataset.from_maps(
        list(drawn.maps()), drawn.labels, split=[split] * len(drawn), lot=lots, source="synthetic"
    )
    part.wafer_index = drawn.wafer_index
    return part


def write_tiny_dataset(
    path: Path | str,
    *,
    train_per_class: int = 40,
    test_per_class: int = 12,
    seed: int = 0,
    sizes: tuple[int, int] = (20, 40),
) -> Path:
    """Write synthetic labelled wafers of every class: ``train_per_class`` in ``Training``
    lots, then ``test_per_class`` in ``Test`` lots (maps of ``sizes`` rows and columns).

    Returns:
        ``path``.
    """
    train = _part(train_per_class, seed, TRAINING, sizes)
    test = _part(test_per_class, seed + 1, TEST, sizes)
    maps = [*train.maps(), *test.maps()]
    both = WaferDataset.from_maps(
        maps,
        np.concatenate([train.labels, test.labels]),
        split=np.concatenate([train.split, test.split]),
        lot=np.concatenate([train.lot, test.lot]),
        source="synthetic",
    )
    both.wafer_index = np.concatenate([train.wafer_index, test.wafer_index])
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_npz(both, target)
    return target

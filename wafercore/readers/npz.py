"""The pickle-free WM-811K npz layout: read, write and fingerprint.

The layout (see the data README) stores ragged maps flat, in WM-811K's own encoding
(0 no die, 1 pass, 2 fail) with WM-811K's label strings, so files written here can be read by
anyone who knows the public dataset. The conversion to the canonical encoding happens here, once,
on the whole flat array.

Conventions for optional keys, matching the files the project ships:

* ``failure_type``: absent when no row has a label (``unlabelled_sample.npz``); when present,
  an empty string marks an unlabelled row.
* ``split``: absent when no row has one; an empty string marks a row without one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from wafercore.classes import NUM_CLASSES, DefectClass
from wafercore.dataset import UNLABELLED, WaferDataset
from wafercore.encoding import from_wm811k, to_wm811k

REQUIRED_KEYS = ("maps_flat", "offsets", "shapes", "lot_name", "wafer_index", "die_size")
"""Keys every file must have."""
OPTIONAL_KEYS = ("failure_type", "split")
"""Keys a file may leave out (unlabelled data)."""

# Label id -> WM-811K string; index -1 (UNLABELLED) lands on the trailing empty string, which
# lets labels be turned into strings with one fancy-indexing call.
_LABEL_STRINGS = np.array([c.wm811k_label for c in DefectClass] + [""])
_LABEL_BY_STRING = {c.wm811k_label: int(c) for c in DefectClass} | {"": UNLABELLED}


def read_npz(path: str | os.PathLike[str]) -> WaferDataset:
    """Read a WM-811K npz file into a dataset in the canonical encoding.

    Args:
        path: the ``.npz`` file (``labelled.npz``, ``sample_stratified.npz``, ...).

    Returns:
        The dataset, with ``source`` set to ``path``. Rows without a ``failure_type`` are
        ``UNLABELLED``; rows without a ``split`` have ``""``.

    Raises:
        ValueError: a required key is missing, or a key's contents are inconsistent (the message
            names the key).
        OSError: the file cannot be read.
    """
    # allow_pickle=False: the point of the npz layout is that loading it runs no code.
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in REQUIRED_KEYS if k not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing key(s) {', '.join(repr(k) for k in missing)}")
        arrays = {k: archive[k] for k in (*REQUIRED_KEYS, *OPTIONAL_KEYS) if k in archive.files}

    flat = arrays["maps_flat"]
    shapes = arrays["shapes"]
    offsets = arrays["offsets"]
    if flat.ndim != 1:
        raise ValueError(f"{path}: key 'maps_flat' must be one-dimensional, got {flat.shape}")
    if shapes.ndim != 2 or shapes.shape[1] != 2:
        raise ValueError(f"{path}: key 'shapes' must be (N, 2), got {shapes.shape}")
    n = len(shapes)
    _check_offsets(offsets, shapes, len(flat), path)
    for key in ("lot_name", "wafer_index", "die_size", *OPTIONAL_KEYS):
        if key in arrays and arrays[key].shape != (n,):
            raise ValueError(f"{path}: key {key!r} must have {n} entries, got {arrays[key].shape}")

    try:
        values = from_wm811k(flat)
    except ValueError as exc:
        raise ValueError(f"{path}: key 'maps_flat': {exc}") from None
    labels = (
        _labels_from_strings(arrays["failure_type"], path)
        if "failure_type" in arrays
        else np.full(n, UNLABELLED, dtype=np.int64)
    )
    split = arrays["split"].astype(np.str_) if "split" in arrays else np.full(n, "", dtype="<U8")
    return WaferDataset(
        values=values,
        offsets=offsets.astype(np.int64, copy=False),
        shapes=shapes.astype(np.int32, copy=False),
        labels=labels,
        split=split,
        lot=arrays["lot_name"].astype(np.str_),
        wafer_index=arrays["wafer_index"].astype(np.float64, copy=False),
        die_size=arrays["die_size"].astype(np.float64, copy=False),
        source=str(path),
    )


def write_npz(dataset: WaferDataset, path: str | os.PathLike[str]) -> None:
    """Write a dataset in the WM-811K npz layout (compressed), readable by `read_npz`.

    Maps are written in WM-811K's encoding and labels as WM-811K strings. ``failure_type`` is
    left out when no row is labelled and ``split`` when no row has one, as in the shipped
    unlabelled file. The file is written under a temporary name and moved into place, so a
    crash never leaves a truncated file at ``path``.

    Args:
        dataset: the maps to write.
        path: destination, written exactly as given (no ``.npz`` is appended).

    Raises:
        ValueError: a label is outside the class ids and ``UNLABELLED``.
    """
    labels = np.asarray(dataset.labels, dtype=np.int64)
    if labels.size and (labels.min() < UNLABELLED or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must be class ids or {UNLABELLED}")
    arrays: dict[str, npt.NDArray[np.generic]] = {
        "maps_flat": to_wm811k(dataset.values),
        "offsets": np.asarray(dataset.offsets, dtype=np.int64),
        "shapes": np.asarray(dataset.shapes, dtype=np.int32),
        "lot_name": np.asarray(dataset.lot, dtype=np.str_),
        "wafer_index": np.asarray(dataset.wafer_index, dtype=np.float64),
        "die_size": np.asarray(dataset.die_size, dtype=np.float64),
    }
    if np.any(labels != UNLABELLED):
        arrays["failure_type"] = _LABEL_STRINGS[labels]
    split = np.asarray(dataset.split, dtype=np.str_)
    if np.any(split != ""):
        arrays["split"] = split

    target = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, allow_pickle=False, **arrays)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """SHA-256 of a file, read in chunks so multi-gigabyte files need no memory.

    Recorded with every checkpoint as data provenance.

    Args:
        path: the file.
        chunk_size: bytes read at a time.

    Returns:
        The hex digest.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_offsets(
    offsets: npt.NDArray[np.generic],
    shapes: npt.NDArray[np.generic],
    flat_len: int,
    path: str | os.PathLike[str],
) -> None:
    n = len(shapes)
    if offsets.shape != (n + 1,):
        raise ValueError(f"{path}: key 'offsets' must have {n + 1} entries, got {offsets.shape}")
    if not np.issubdtype(offsets.dtype, np.integer) or not np.issubdtype(shapes.dtype, np.integer):
        raise ValueError(f"{path}: keys 'offsets' and 'shapes' must be integers")
    if n and shapes.min() < 1:
        raise ValueError(f"{path}: key 'shapes' has a non-positive side")
    sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1].astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != flat_len:
        raise ValueError(
            f"{path}: key 'offsets' must run from 0 to len(maps_flat) = {flat_len}, "
            f"got {int(offsets[0])}..{int(offsets[-1])}"
        )
    bad = np.flatnonzero(np.diff(offsets.astype(np.int64)) != sizes)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{path}: key 'offsets' disagrees with 'shapes' at row {i}: "
            f"{int(offsets[i + 1] - offsets[i])} values for a {tuple(shapes[i])} map"
        )


def _labels_from_strings(
    names: npt.NDArray[np.generic], path: str | os.PathLike[str]
) -> npt.NDArray[np.int64]:
    # 149k strings but only nine distinct ones: look up the distinct ones, then broadcast back.
    uniques, inverse = np.unique(names.astype(np.str_), return_inverse=True)
    try:
        ids = np.array([_LABEL_BY_STRING[str(u)] for u in uniques], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{path}: key 'failure_type' has unknown label {exc.args[0]!r}") from None
    return ids[inverse.reshape(-1)]

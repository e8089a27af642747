"""The original public ``LSWMD.pkl`` (WM-811K as a pickled pandas DataFrame).

The file was pickled under Python 2 by a pandas of about 0.19, so today it fails to load twice
over: its index classes are referenced under ``pandas.indexes.*`` (renamed
``pandas.core.indexes`` in pandas 0.20, and ``Int64Index`` itself removed in pandas 2), and its
Python 2 byte strings, which include the raw bytes of every NumPy array, only decode as latin-1.
The usual fix is to alias ``sys.modules['pandas.indexes']`` and call
``pickle.load(f, encoding='latin1')``; here the renames are done inside an unpickler instead, so
loading changes nothing global, and only the classes a WM-811K frame is made of may be loaded.

Columns used: ``waferMap`` (2-D arrays, WM-811K encoding), ``dieSize``, ``lotName``,
``waferIndex``, ``trianTestLabel`` (sic: ``[['Training']]``, ``[['Test']]`` or an empty array)
and ``failureType`` (``[['none']]`` ... or an empty array for unlabelled wafers).
"""

from __future__ import annotations

import importlib
import os
import pickle
from typing import Any

import numpy as np
import numpy.typing as npt

from wafercore.classes import DefectClass
from wafercore.dataset import UNLABELLED, WaferDataset
from wafercore.encoding import from_wm811k
from wafercore.readers.npz import write_npz

COLUMNS = ("waferMap", "dieSize", "lotName", "waferIndex", "trianTestLabel", "failureType")
"""DataFrame columns the reader needs."""

# Old module path -> current one, applied to the start of a module name.
_MODULE_RENAMES = (("pandas.indexes", "pandas.core.indexes"),)
# Classes pandas removed since; mirrors pandas.compat.pickle_compat, which pandas 3 keeps only
# for ``pandas.core.indexes.numeric`` and which knows nothing of ``pandas.indexes``.
_CLASS_RENAMES = {
    ("pandas.core.indexes.numeric", name): ("pandas.core.indexes.base", "Index")
    for name in ("Int64Index", "UInt64Index", "Float64Index")
}
# Everything a WM-811K DataFrame pickle refers to, as first written or re-saved by a current
# pandas. A pickle can name any callable, so refusing the rest keeps a tampered download from
# running arbitrary code through this reader (it does not make unpickling safe in general: only
# read files from a source you trust).
_ALLOWED_MODULE_PREFIXES = (
    "pandas.core.frame",
    "pandas.core.series",
    "pandas.core.indexes.",
    "pandas.core.internals",
    "pandas._libs.internals",
)
_ALLOWED_GLOBALS = {
    ("pandas", "DataFrame"),
    ("pandas", "Index"),
    ("pandas", "RangeIndex"),
    ("pandas", "StringDtype"),
    ("pandas.arrays", "StringArray"),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "slice"),
    ("builtins", "bytes"),
    ("copyreg", "_reconstructor"),
    ("_codecs", "encode"),
    # Python 2 names: the C unpickler maps them to the above only after find_class is called.
    ("__builtin__", "slice"),
    ("__builtin__", "bytes"),
    ("copy_reg", "_reconstructor"),
}


def read_lswmd(path: str | os.PathLike[str]) -> WaferDataset:
    """Read the original ``LSWMD.pkl`` into a dataset in the canonical encoding.

    Needs pandas (an optional dependency of wafercore: the ``dev`` extra installs it). The whole
    frame is loaded into memory (the public file is about 2 GB).

    Args:
        path: the pickle, as downloaded. Only load a file from a source you trust.

    Returns:
        All rows, in file order: unlabelled rows have label ``UNLABELLED`` and rows without a
        ``trianTestLabel`` have split ``""``.

    Raises:
        ImportError: pandas is not installed.
        ValueError: a needed column is missing or a cell cannot be understood.
        pickle.UnpicklingError: the file refers to something a WM-811K frame never contains.
    """
    _require_pandas()
    with open(path, "rb") as handle:
        frame = _LegacyUnpickler(handle, encoding="latin1").load()
    return frame_to_dataset(frame, source=str(path))


def convert_lswmd(
    pkl_path: str | os.PathLike[str], npz_path: str | os.PathLike[str]
) -> WaferDataset:
    """Convert ``LSWMD.pkl`` to the pickle-free npz layout (see `write_npz`).

    Args:
        pkl_path: the original pickle.
        npz_path: where to write the npz file.

    Returns:
        The dataset that was written.
    """
    dataset = read_lswmd(pkl_path)
    write_npz(dataset, npz_path)
    return dataset


def frame_to_dataset(frame: Any, *, source: str = "") -> WaferDataset:
    """Turn an LSWMD-shaped DataFrame (the columns in `COLUMNS`) into a dataset.

    Args:
        frame: a pandas DataFrame as stored in ``LSWMD.pkl``.
        source: provenance recorded in the dataset.

    Returns:
        The rows in frame order, maps in the canonical encoding.

    Raises:
        ValueError: a needed column is missing or a cell cannot be understood.
    """
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"LSWMD frame lacks column(s) {', '.join(repr(c) for c in missing)}")
    maps = frame["waferMap"].to_numpy(dtype=object)
    n = len(maps)
    shapes = np.empty((n, 2), dtype=np.int32)
    for i, cell in enumerate(maps):
        if not isinstance(cell, np.ndarray) or cell.ndim != 2:
            raise ValueError(f"column 'waferMap' row {i}: expected a 2-D array, got {cell!r}")
        shapes[i] = cell.shape
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(shapes[:, 0].astype(np.int64) * shapes[:, 1], out=offsets[1:])
    flat = np.concatenate([m.ravel() for m in maps]) if n else np.empty(0, np.uint8)
    try:
        values = from_wm811k(flat)
    except ValueError as exc:
        raise ValueError(f"column 'waferMap': {exc}") from None

    texts = _cell_texts(frame["failureType"].to_numpy(dtype=object))
    labels = np.full(n, UNLABELLED, dtype=np.int64)
    for text in np.unique(texts):
        if text:
            try:
                labels[texts == text] = DefectClass.from_wm811k_label(str(text))
            except KeyError:
                raise ValueError(f"column 'failureType': unknown label {text!r}") from None
    return WaferDataset(
        values=values,
        offsets=offsets,
        shapes=shapes,
        labels=labels,
        split=_cell_texts(frame["trianTestLabel"].to_numpy(dtype=object)),
        lot=np.asarray([_text(c) for c in frame["lotName"].to_numpy(dtype=object)], dtype=np.str_),
        wafer_index=frame["waferIndex"].to_numpy(dtype=np.float64),
        die_size=frame["dieSize"].to_numpy(dtype=np.float64),
        source=source,
    )


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickler that finds old pandas classes under their current names."""

    def find_class(self, module: str, name: str, /) -> Any:
        for old, new in _MODULE_RENAMES:
            if module == old or module.startswith(old + "."):
                module = new + module[len(old) :]
        module, name = _CLASS_RENAMES.get((module, name), (module, name))
        if (module, name) not in _ALLOWED_GLOBALS and not module.startswith(
            _ALLOWED_MODULE_PREFIXES
        ):
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a WM-811K DataFrame never refers to it"
            )
        return super().find_class(module, name)


def _require_pandas() -> None:
    # The unpickler imports pandas' classes itself; importing here turns a missing pandas into
    # a message that says what to install instead of a bare ModuleNotFoundError mid-load.
    try:
        importlib.import_module("pandas")
    except ImportError as exc:
        raise ImportError(
            "reading LSWMD.pkl needs pandas: pip install 'wafer-platform[dev]' (or pandas)"
        ) from exc


def _cell_texts(cells: npt.NDArray[np.object_]) -> npt.NDArray[np.str_]:
    return np.asarray([_text(c) for c in cells], dtype=np.str_)


def _text(cell: object) -> str:
    """The string in an LSWMD cell: ``[['Training']]`` -> ``Training``, an empty array -> ``""``."""
    if isinstance(cell, np.ndarray):
        if cell.size == 0:
            return ""
        cell = cell.flat[0]
    if isinstance(cell, bytes):
        return cell.decode("latin1")
    if isinstance(cell, str):
        return cell
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return ""
    raise ValueError(f"expected a string or an array holding one, got {cell!r}")

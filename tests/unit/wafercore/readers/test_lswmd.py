"""The original LSWMD.pkl reader, tested on a fixture pickled the way the public file was.

The public file cannot be committed, so the fixture reproduces what makes it hard to load: it is
protocol 2 written as Python 2 wrote it (every string a latin-1 byte string, NumPy array data
included), its index classes live under pandas 0.19's ``pandas.indexes.*`` (``Int64Index``
included, which pandas 2 removed), and its DataFrame and BlockManager state is pandas 0.19's.
The tests first check that the fixture fails to load exactly as the real file does.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import pickletools
import struct
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from wafercore.classes import DefectClass
from wafercore.dataset import UNLABELLED
from wafercore.encoding import FAIL, OUT, PASS
from wafercore.readers.lswmd import convert_lswmd, frame_to_dataset, read_lswmd
from wafercore.readers.npz import read_npz

pd = pytest.importorskip("pandas")
from numpy._core.multiarray import _reconstruct  # noqa: E402
from pandas.core.indexes.base import _new_Index  # noqa: E402
from pandas.core.internals import BlockManager  # noqa: E402


class _Int64Index:
    """Stands for pandas < 2's ``Int64Index`` in the written pickle."""


# Where pandas 0.19 / NumPy 1.x under Python 2 kept what the frame is made of.
_OLD_NAMES: dict[Any, tuple[str, str]] = {
    pd.DataFrame: ("pandas.core.frame", "DataFrame"),
    BlockManager: ("pandas.core.internals", "BlockManager"),
    pd.Index: ("pandas.indexes.base", "Index"),
    pd.RangeIndex: ("pandas.indexes.range", "RangeIndex"),
    _new_Index: ("pandas.indexes.base", "_new_Index"),
    _Int64Index: ("pandas.indexes.numeric", "Int64Index"),
    _reconstruct: ("numpy.core.multiarray", "_reconstruct"),
}


class _Python2PandasPickler(pickle._Pickler):
    """Writes a DataFrame as Python 2 with pandas 0.19 did (pure-Python pickler, protocol 2)."""

    dispatch = pickle._Pickler.dispatch.copy()

    def __init__(self, file: io.BytesIO, *, int64_index: bool) -> None:
        super().__init__(file, protocol=2)
        self.int64_index = int64_index

    def save_py2_str(self, obj: str | bytes) -> None:
        # Python 2's str is bytes: (SHORT_)BINSTRING, which Python 3 decodes with `encoding`.
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    def save_global(self, obj: Any, name: str | None = None) -> None:
        old = _OLD_NAMES.get(obj)
        if old is None:
            super().save_global(obj, name)
            return
        self.write(pickle.GLOBAL + f"{old[0]}\n{old[1]}\n".encode("ascii"))
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str
    dispatch[types.FunctionType] = save_global

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, pd.DataFrame):
            state = {"_data": obj._mgr, "_typ": "dataframe", "_metadata": []}
            return copyreg.__newobj__, (pd.DataFrame,), state
        if isinstance(obj, BlockManager):
            # pandas 0.19's BlockManager.__getstate__, format "0.14.1".
            axes = list(obj.axes)
            blocks = [{"values": b.values, "mgr_locs": b.mgr_locs.indexer} for b in obj.blocks]
            items = [obj.items[b["mgr_locs"]] for b in blocks]
            values = [b["values"] for b in blocks]
            state = (axes, values, items, {"0.14.1": {"axes": axes, "blocks": blocks}})
            return copyreg.__newobj__, (BlockManager,), state
        if self.int64_index and type(obj) is pd.Index and obj.dtype == np.int64:
            return _new_Index, (_Int64Index, {"data": obj.to_numpy(), "name": obj.name}), None
        return NotImplemented


def _cell(text: str, width: int) -> npt.NDArray[Any]:
    # LSWMD's label cells: [['none']] as a 1x1 unicode array, or an empty 0x0 float array.
    return np.array([[text]], dtype=f"<U{width}") if text else np.zeros((0, 0))


def _objects(values: list[Any]) -> Any:
    return pd.Series(values, dtype=object)


MAPS = [
    np.array([[0, 1, 2], [1, 1, 0]], dtype=np.uint8),
    np.array([[2]], dtype=np.uint8),
    np.array([[1, 2], [0, 0], [1, 1]], dtype=np.uint8),
    np.array([[0, 1], [2, 1]], dtype=np.uint8),
]


def _frame(row_index: Any) -> Any:
    return pd.DataFrame(
        {
            "waferMap": _objects(MAPS),
            "dieSize": [1683.0, 1.0, 4.0, 3.0],
            "lotName": _objects(["lot1", "lot1", "lot2", "lot47"]),
            "waferIndex": [1.0, 2.0, 1.0, 25.0],
            "trianTestLabel": _objects(
                [_cell("Training", 8), _cell("Training", 8), _cell("Test", 4), _cell("", 0)]
            ),
            "failureType": _objects(
                [_cell("none", 4), _cell("Near-full", 9), _cell("Edge-Ring", 9), _cell("", 0)]
            ),
        },
        columns=pd.Index(
            ["waferMap", "dieSize", "lotName", "waferIndex", "trianTestLabel", "failureType"],
            dtype=object,
        ),
        index=row_index,
    )


@pytest.fixture(params=["Int64Index", "RangeIndex"])
def legacy_pkl(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An LSWMD-shaped pickle as Python 2 / pandas 0.19 wrote it, with either row index."""
    int64 = request.param == "Int64Index"
    frame = _frame(pd.Index(np.arange(4, dtype=np.int64)) if int64 else pd.RangeIndex(4))
    buffer = io.BytesIO()
    _Python2PandasPickler(buffer, int64_index=int64).dump(frame)
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(buffer.getvalue())
    return path


def _globals(data: bytes) -> set[str]:
    return {str(arg) for op, arg, _ in pickletools.genops(data) if op.name == "GLOBAL"}


def test_fixture_is_shaped_like_the_python2_file(legacy_pkl: Path) -> None:
    data = legacy_pkl.read_bytes()
    names = _globals(data)
    assert "pandas.indexes.base _new_Index" in names
    assert "numpy.core.multiarray _reconstruct" in names
    assert not any(n.startswith("pandas.core.indexes") for n in names)
    ops = {op.name for op, _, _ in pickletools.genops(data)}
    assert "SHORT_BINSTRING" in ops
    assert not ops & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}


def test_fixture_fails_plain_loading_like_the_real_file(legacy_pkl: Path) -> None:
    with (
        open(legacy_pkl, "rb") as f,
        pytest.raises(ModuleNotFoundError, match=r"No module named 'pandas\.indexes'"),
    ):
        pickle.load(f)
    with pytest.raises(ModuleNotFoundError, match=r"No module named 'pandas\.indexes'"):
        pd.read_pickle(legacy_pkl)


def test_fixture_needs_latin1_even_with_the_module_alias(
    legacy_pkl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The usual workaround, done for the test only: alias the old modules...
    import pandas.core.indexes.base
    import pandas.core.indexes.range

    numeric = types.ModuleType("pandas.indexes.numeric")
    numeric.Int64Index = pd.Index  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pandas.indexes", pandas.core.indexes)
    monkeypatch.setitem(sys.modules, "pandas.indexes.base", pandas.core.indexes.base)
    monkeypatch.setitem(sys.modules, "pandas.indexes.range", pandas.core.indexes.range)
    monkeypatch.setitem(sys.modules, "pandas.indexes.numeric", numeric)
    data = legacy_pkl.read_bytes()
    # ...which still fails on Python 2's byte strings (the float block's raw bytes)...
    with pytest.raises(UnicodeDecodeError):
        pickle.loads(data)
    # ...until they are decoded as latin-1: then it is the frame that was written.
    frame = pickle.loads(data, encoding="latin1")
    assert frame["lotName"].tolist() == ["lot1", "lot1", "lot2", "lot47"]
    assert frame["failureType"][1].tolist() == [["Near-full"]]


def test_read_lswmd_reads_the_legacy_pickle(legacy_pkl: Path) -> None:
    ds = read_lswmd(legacy_pkl)
    assert len(ds) == 4
    assert ds.source == str(legacy_pkl)
    # WM-811K 0/1/2 (no die/pass/fail) -> canonical OUT/PASS/FAIL.
    assert ds.map(0).tolist() == [[OUT, PASS, FAIL], [PASS, PASS, OUT]]
    assert ds.map(1).tolist() == [[FAIL]]
    assert ds.map(2).tolist() == [[PASS, FAIL], [OUT, OUT], [PASS, PASS]]
    assert ds.labels.tolist() == [
        DefectClass.NONE,
        DefectClass.NEAR_FULL,
        DefectClass.EDGE_RING,
        UNLABELLED,
    ]
    assert ds.split.tolist() == ["Training", "Training", "Test", ""]
    assert ds.lot.tolist() == ["lot1", "lot1", "lot2", "lot47"]
    assert ds.wafer_index.tolist() == [1.0, 2.0, 1.0, 25.0]
    assert ds.die_size.tolist() == [1683.0, 1.0, 4.0, 3.0]


def test_read_lswmd_changes_nothing_global(legacy_pkl: Path) -> None:
    read_lswmd(legacy_pkl)
    assert "pandas.indexes" not in sys.modules


def test_convert_lswmd_writes_the_npz_layout(legacy_pkl: Path, tmp_path: Path) -> None:
    npz = tmp_path / "lswmd.npz"
    written = convert_lswmd(legacy_pkl, npz)
    back = read_npz(npz)
    for name in ("values", "offsets", "shapes", "labels", "split", "lot", "wafer_index"):
        np.testing.assert_array_equal(getattr(back, name), getattr(written, name), err_msg=name)
    with np.load(npz) as z:
        assert z["failure_type"].tolist() == ["none", "Near-full", "Edge-Ring", ""]
        assert z["maps_flat"][:6].tolist() == [0, 1, 2, 1, 1, 0]


def test_read_lswmd_reads_a_frame_resaved_by_current_pandas(tmp_path: Path) -> None:
    path = tmp_path / "resaved.pkl"
    _frame(pd.RangeIndex(4)).to_pickle(path)
    ds = read_lswmd(path)
    assert ds.labels.tolist()[:3] == [
        DefectClass.NONE,
        DefectClass.NEAR_FULL,
        DefectClass.EDGE_RING,
    ]
    assert ds.map(3).tolist() == [[OUT, PASS], [FAIL, PASS]]


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (eval, ("1 + 1",))


def test_read_lswmd_refuses_globals_a_wafer_frame_never_has(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Payload(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="eval"):
        read_lswmd(path)


def test_missing_column_is_named() -> None:
    frame = _frame(pd.RangeIndex(4)).drop(columns=["failureType"])
    with pytest.raises(ValueError, match="'failureType'"):
        frame_to_dataset(frame)


def test_unknown_label_is_named() -> None:
    frame = _frame(pd.RangeIndex(4))
    frame["failureType"] = _objects([_cell("Blob", 4), *frame["failureType"][1:]])
    with pytest.raises(ValueError, match=r"failureType.*Blob"):
        frame_to_dataset(frame)


def test_missing_pandas_says_what_to_install(
    legacy_pkl: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="needs pandas"):
        read_lswmd(legacy_pkl)

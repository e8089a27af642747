"""WM-811K npz layout: reading, writing, validation, provenance hash, and the real files."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wafercore.classes import DefectClass
from wafercore.dataset import UNLABELLED, WaferDataset
from wafercore.encoding import FAIL, OUT, PASS
from wafercore.readers.npz import REQUIRED_KEYS, file_sha256, read_npz, write_npz


def _dataset() -> WaferDataset:
    maps = [
        np.array([[PASS, FAIL, OUT], [OUT, PASS, PASS]], dtype=np.uint8),
        np.array([[FAIL]], dtype=np.uint8),
        np.full((4, 2), OUT, dtype=np.uint8),
    ]
    ds = WaferDataset.from_maps(
        maps,
        labels=[DefectClass.NEAR_FULL, UNLABELLED, DefectClass.NONE],
        split=["Training", "", "Test"],
        lot=["lot7", "lot7", "lot12"],
    )
    ds.wafer_index = np.array([1.0, 2.0, 25.0])
    return ds


def _assert_same(a: WaferDataset, b: WaferDataset) -> None:
    for name in ("values", "offsets", "shapes", "labels", "split", "lot", "wafer_index"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.die_size, b.die_size)


def _raw(path: Path) -> dict[str, npt.NDArray[np.generic]]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    original = _dataset()
    path = tmp_path / "maps.npz"
    write_npz(original, path)
    back = read_npz(path)
    _assert_same(original, back)
    assert back.source == str(path)
    assert back.map(0).tolist() == [[PASS, FAIL, OUT], [OUT, PASS, PASS]]


def test_file_holds_wm811k_encoding_and_label_strings(tmp_path: Path) -> None:
    path = tmp_path / "maps.npz"
    write_npz(_dataset(), path)
    raw = _raw(path)
    # WM-811K: 0 no die, 1 pass, 2 fail.
    assert raw["maps_flat"][:6].tolist() == [1, 2, 0, 0, 1, 1]
    assert raw["failure_type"].tolist() == ["Near-full", "", "none"]
    assert raw["split"].tolist() == ["Training", "", "Test"]
    assert raw["lot_name"].tolist() == ["lot7", "lot7", "lot12"]


def test_unlabelled_data_omits_failure_type_and_split(tmp_path: Path) -> None:
    ds = WaferDataset.from_maps([np.zeros((2, 2), np.uint8)] * 3)
    path = tmp_path / "stream.npz"
    write_npz(ds, path)
    assert "failure_type" not in _raw(path)
    assert "split" not in _raw(path)
    back = read_npz(path)
    assert back.labels.tolist() == [UNLABELLED] * 3
    assert back.split.tolist() == ["", "", ""]


def test_write_uses_the_exact_path_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "converted.data"
    write_npz(_dataset(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted.data"]


def test_write_rejects_labels_outside_the_classes(tmp_path: Path) -> None:
    ds = _dataset()
    ds.labels = np.array([0, 9, 1])
    with pytest.raises(ValueError, match="labels"):
        write_npz(ds, tmp_path / "x.npz")


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        hnp.arrays(
            np.uint8,
            hnp.array_shapes(min_dims=2, max_dims=2, max_side=9),
            elements=st.integers(0, 2),
        ),
        min_size=1,
        max_size=6,
    ),
    st.data(),
)
def test_round_trip_of_arbitrary_ragged_maps(
    maps: list[npt.NDArray[np.uint8]], data: st.DataObject
) -> None:
    labels = data.draw(st.lists(st.integers(UNLABELLED, 8), min_size=len(maps), max_size=len(maps)))
    split = data.draw(
        st.lists(st.sampled_from(["Training", "Test", ""]), min_size=len(maps), max_size=len(maps))
    )
    original = WaferDataset.from_maps(maps, labels=labels, split=split)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "maps.npz"
        write_npz(original, path)
        back = read_npz(path)
    _assert_same(original, back)
    for i, m in enumerate(maps):
        np.testing.assert_array_equal(back.map(i), m)


@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_key_is_named(tmp_path: Path, key: str) -> None:
    path = tmp_path / "maps.npz"
    write_npz(_dataset(), path)
    raw = _raw(path)
    del raw[key]
    np.savez(path, **raw)
    with pytest.raises(ValueError, match=f"'{key}'"):
        read_npz(path)


@pytest.mark.parametrize(
    ("key", "corrupt"),
    [
        ("offsets", lambda a: a[:-1]),
        ("offsets", lambda a: a + np.array([0, 1, 1, 0])),
        ("offsets", lambda a: a[::-1].copy()),
        ("shapes", lambda a: a[:, :1].copy()),
        ("shapes", lambda a: np.array([[2, 3], [1, 1], [3, 3]], dtype=np.int32)),
        ("maps_flat", lambda a: np.where(a == 0, 3, a).astype(np.uint8)),
        ("lot_name", lambda a: a[:2]),
        ("failure_type", lambda a: np.array(["none", "", "Blob"])),
    ],
)
def test_inconsistent_contents_are_named(
    tmp_path: Path, key: str, corrupt: Callable[[npt.NDArray[Any]], npt.NDArray[Any]]
) -> None:
    path = tmp_path / "maps.npz"
    write_npz(_dataset(), path)
    raw = _raw(path)
    raw[key] = corrupt(raw[key])
    np.savez(path, **raw)
    with pytest.raises(ValueError, match=f"'{key}'"):
        read_npz(path)


def test_file_sha256_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    payload = bytes(range(256)) * 1000
    path.write_bytes(payload)
    expected = hashlib.sha256(payload).hexdigest()
    assert file_sha256(path, chunk_size=1000) == expected
    assert file_sha256(path) == expected


# Real WM-811K files (skipped without WAFER_DATA_DIR) ---------------------------------------


@pytest.fixture(scope="module")
def labelled(wafer_data_dir: Path) -> WaferDataset:
    return read_npz(wafer_data_dir / "labelled.npz")


README_CLASS_COUNTS = {
    "none": 125_390,
    "Edge-Ring": 9_461,
    "Edge-Loc": 4_671,
    "Center": 4_116,
    "Loc": 3_161,
    "Scratch": 1_072,
    "Random": 767,
    "Donut": 514,
    "Near-full": 121,
}


def test_real_labelled_class_and_split_counts_match_the_readme(labelled: WaferDataset) -> None:
    assert len(labelled) == 149_273
    counts = np.bincount(labelled.labels, minlength=len(DefectClass))
    assert {c.wm811k_label: int(counts[c]) for c in DefectClass} == README_CLASS_COUNTS
    names, per_split = np.unique(labelled.split, return_counts=True)
    assert dict(zip(names.tolist(), per_split.tolist(), strict=True)) == {
        "Training": 54_355,
        "Test": 94_918,
    }


def test_real_labelled_maps_are_converted_to_canonical(
    labelled: WaferDataset, wafer_data_dir: Path
) -> None:
    with np.load(wafer_data_dir / "labelled.npz") as z:
        raw_head = z["maps_flat"][: labelled.offsets[50]]
    head = labelled.values[: labelled.offsets[50]]
    # WM-811K 0/1/2 (no die/pass/fail) must land on OUT/PASS/FAIL, cell by cell.
    assert np.array_equal(head == OUT, raw_head == 0)
    assert np.array_equal(head == PASS, raw_head == 1)
    assert np.array_equal(head == FAIL, raw_head == 2)
    assert labelled.map(0).shape == tuple(labelled.shapes[0])


def test_real_unlabelled_sample_has_no_labels_or_split(wafer_data_dir: Path) -> None:
    ds = read_npz(wafer_data_dir / "unlabelled_sample.npz")
    assert len(ds) == 100_000
    assert np.all(ds.labels == UNLABELLED)
    assert np.all(ds.split == "")

import numpy as np
import pytest

from wafercore.dataset import UNLABELLED, WaferDataset
from wafercore.encoding import OUT


def _maps() -> list[np.ndarray]:
    return [
        np.array([[2, 0, 2], [0, 1, 0]], np.uint8),
        np.array([[1]], np.uint8),
        np.full((4, 5), 0, np.uint8),
    ]


def test_from_maps_stores_ragged_maps_and_metadata() -> None:
    ds = WaferDataset.from_maps(
        _maps(), labels=[1, 2, 0], lot=["a", "a", "b"], split=["Training"] * 3
    )
    assert len(ds) == 3
    for i, m in enumerate(_maps()):
        assert np.array_equal(ds.map(i), m)
    assert ds.shapes.tolist() == [[2, 3], [1, 1], [4, 5]]
    assert ds.die_size.tolist() == [4.0, 1.0, 20.0]  # cells inside the wafer
    assert [m.shape for m in ds.maps()] == [(2, 3), (1, 1), (4, 5)]


def test_unlabelled_by_default() -> None:
    assert (WaferDataset.from_maps(_maps()).labels == UNLABELLED).all()


def test_subset_copies_rows_in_the_given_order() -> None:
    ds = WaferDataset.from_maps(_maps(), labels=[1, 2, 0], lot=["a", "b", "c"])
    sub = ds.subset(np.array([2, 0]))
    assert sub.labels.tolist() == [0, 1]
    assert sub.lot.tolist() == ["c", "a"]
    assert np.array_equal(sub.map(0), _maps()[2])
    assert np.array_equal(sub.map(1), _maps()[0])
    sub.values[:] = OUT
    assert ds.map(2).max() == 0, "a subset must not share memory with its parent"


def test_concat_keeps_every_row_of_every_part_in_order() -> None:
    first = WaferDataset.from_maps(_maps(), labels=[1, 2, 0], lot=["a", "b", "c"])
    second = WaferDataset.from_maps(_maps()[::-1], labels=[3, 4, 5], lot=["x", "yy", "z"])
    both = WaferDataset.concat([first.subset(np.array([2, 1])), second])
    assert both.labels.tolist() == [0, 2, 3, 4, 5]
    assert both.lot.tolist() == ["c", "b", "x", "yy", "z"]
    expected = [_maps()[2], _maps()[1], *_maps()[::-1]]
    for i, m in enumerate(expected):
        assert np.array_equal(both.map(i), m)
    with pytest.raises(ValueError, match="at least one"):
        WaferDataset.concat([])


def test_inconsistent_lengths_name_the_field() -> None:
    ds = WaferDataset.from_maps(_maps())
    with pytest.raises(ValueError, match="labels must have 3 entries"):
        WaferDataset(
            values=ds.values,
            offsets=ds.offsets,
            shapes=ds.shapes,
            labels=ds.labels[:2],
            split=ds.split,
            lot=ds.lot,
            wafer_index=ds.wafer_index,
            die_size=ds.die_size,
        )

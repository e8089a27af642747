import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wafercore.dataset import WaferDataset
from wafercore.encoding import GRID, OUT, TOKENS
from wafercore.errors import InvalidInput
from wafercore.preprocessing import (
    dataset_to_grids,
    preprocess,
    to_grid,
    to_tokens,
    validate_map,
)
from wafercore.validation import MAX_SIDE

canonical_maps = hnp.arrays(
    np.uint8,
    st.tuples(st.integers(1, 90), st.integers(1, 90)),
    elements=st.integers(0, 2),
)


@given(canonical_maps)
def test_any_valid_map_becomes_676_canonical_tokens(m: np.ndarray) -> None:
    tokens = preprocess(m.tolist())
    assert tokens.shape == (TOKENS,)
    assert tokens.dtype == np.uint8
    assert set(np.unique(tokens)) <= set(np.unique(m))  # nearest neighbour invents no value


@given(canonical_maps)
def test_resize_picks_centre_aligned_source_cells(m: np.ndarray) -> None:
    grid = to_grid(m)
    rows, cols = m.shape
    for i in (0, 7, GRID - 1):
        for j in (0, 13, GRID - 1):
            src = (math.floor((i + 0.5) * rows / GRID), math.floor((j + 0.5) * cols / GRID))
            assert grid[i, j] == m[src]


@given(hnp.arrays(np.uint8, (GRID, GRID), elements=st.integers(0, 2)))
def test_canonical_grid_is_unchanged(grid: np.ndarray) -> None:
    assert np.array_equal(to_grid(grid), grid)
    assert np.array_equal(to_tokens(grid).reshape(GRID, GRID), grid)


def test_upsampling_repeats_cells_and_keeps_the_wafer_centred() -> None:
    m = np.array([[2, 0, 2], [0, 1, 0], [2, 0, 2]], np.uint8)
    grid = to_grid(m)
    assert grid[:8, :8].tolist() == [[OUT] * 8] * 8  # 26/3: cell rows 0..8 come from row 0
    assert grid[13, 13] == 1
    assert np.array_equal(grid, grid[::-1, ::-1]), "a symmetric map stays symmetric"


def test_wm811k_encoding_is_converted_when_asked() -> None:
    wm = [[0, 1], [2, 1]]  # no die, pass / fail, pass
    assert validate_map(wm, wm811k=True).tolist() == [[2, 0], [1, 0]]
    assert validate_map(wm).tolist() == wm


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        ([], "wafer_map", "empty"),
        ([[]], "wafer_map", "empty"),
        ([[0, 1], [0]], "wafer_map[1]", "ragged"),
        ([[0, 3]], "wafer_map[0][1]", "is 3; allowed values are 0 pass"),
        ([[0, 0], [-1, 0]], "wafer_map[1][0]", "is -1"),
        ([[0, float("nan")]], "wafer_map[0][1]", "NaN"),
        ([[0, 0.5]], "wafer_map[0][1]", "not an integer"),
        ([[0, "1"]], "wafer_map[0][1]", "not a die value"),
        ([[0, True]], "wafer_map[0][1]", "not a die value"),
        ([0, 1], "wafer_map[0]", "list of die values"),
        ("0101", "wafer_map", "list of rows"),
        ([[0] * (MAX_SIDE + 1)], "wafer_map", "at most 512"),
        ([[0]] * (MAX_SIDE + 1), "wafer_map", "at most 512"),
        ([[10**30]], "wafer_map", "too large"),
    ],
)
def test_bad_maps_raise_one_typed_error_naming_field_and_reason(
    bad: object, field: str, reason: str
) -> None:
    with pytest.raises(InvalidInput, match=reason) as err:
        validate_map(bad)
    assert err.value.field == field
    assert reason in err.value.reason


def test_bad_arrays_are_rejected_too() -> None:
    with pytest.raises(InvalidInput, match="2-D"):
        validate_map(np.zeros((2, 2, 2)))
    with pytest.raises(InvalidInput, match="NaN") as err:
        validate_map(np.array([[0.0, np.nan]]))
    assert err.value.field == "wafer_map[0][1]"
    with pytest.raises(InvalidInput, match="no die, 1 pass"):
        validate_map(np.array([[4]]), wm811k=True)
    with pytest.raises(InvalidInput, match="integers"):
        validate_map(np.array([["a"]]))
    assert validate_map(np.array([[0.0, 2.0]])).dtype == np.uint8


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats() | st.text(max_size=3),
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=2), children)
    ),
    max_leaves=40,
)


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_never_raises_anything_but_wafer_map_error(value: object) -> None:
    try:
        tokens = preprocess(value)
    except InvalidInput as err:
        assert err.field.startswith("wafer_map")
        assert err.reason
    else:
        assert tokens.shape == (TOKENS,)


@given(st.lists(canonical_maps, min_size=1, max_size=12))
def test_dataset_batch_resize_equals_per_map_resize(maps: list[np.ndarray]) -> None:
    ds = WaferDataset.from_maps(maps)
    grids = dataset_to_grids(ds)
    assert grids.shape == (len(maps), GRID, GRID)
    for m, g in zip(maps, grids, strict=True):
        assert np.array_equal(to_grid(m), g)


def test_empty_dataset_gives_no_grids() -> None:
    assert dataset_to_grids(WaferDataset.from_maps([])).shape == (0, GRID, GRID)

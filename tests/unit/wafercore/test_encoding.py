import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wafercore.encoding import FAIL, OUT, PASS, from_wm811k, to_wm811k


def test_wm811k_values_map_to_canonical() -> None:
    # WM-811K: 0 no die, 1 pass, 2 fail.
    assert from_wm811k(np.array([0, 1, 2])).tolist() == [OUT, PASS, FAIL]
    assert (PASS, FAIL, OUT) == (0, 1, 2)


@given(hnp.arrays(np.uint8, hnp.array_shapes(max_dims=3, max_side=12), elements=st.integers(0, 2)))
def test_conversion_round_trips(values: np.ndarray) -> None:
    converted = from_wm811k(values)
    assert converted.shape == values.shape
    assert np.array_equal(to_wm811k(converted), values)
    assert np.count_nonzero(converted == OUT) == np.count_nonzero(values == 0)


@pytest.mark.parametrize("bad", [[3], [-1], [0, 7]])
def test_out_of_range_values_are_rejected(bad: list[int]) -> None:
    with pytest.raises(ValueError, match="must be 0"):
        from_wm811k(np.array(bad))
    with pytest.raises(ValueError, match="must be 0"):
        to_wm811k(np.array(bad))

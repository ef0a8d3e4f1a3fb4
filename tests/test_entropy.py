from __future__ import annotations

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from qkdd.postprocessing.entropy import binary_entropy, binary_entropy_array


def test_known_values() -> None:
    assert binary_entropy(0.5) == 1.0
    assert binary_entropy(0.0) == 0.0
    assert binary_entropy(1.0) == 0.0
    assert math.isclose(binary_entropy(0.11), 0.4999162, rel_tol=1e-6)


@given(st.floats(min_value=0.0, max_value=1.0))
def test_symmetric_bounded_and_array_agrees(p: float) -> None:
    h = binary_entropy(p)
    assert 0.0 <= h <= 1.0
    assert math.isclose(h, binary_entropy(1.0 - p), abs_tol=1e-12)
    assert math.isclose(float(binary_entropy_array(np.array([p]))[0]), h, abs_tol=1e-12)

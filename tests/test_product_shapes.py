"""benchmarks/product_shapes.py: each product oriented as the backward pass stores its operands."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
product_shapes = pytest.importorskip("product_shapes")


@pytest.mark.parametrize("orientation", ["nn", "nt", "tn"])
def test_operands_are_stored_as_oriented_and_multiply_to_m_by_n(orientation):
    a, b = product_shapes.operands(3, 5, 4, orientation)
    assert a.shape == ((5, 3) if orientation[0] == "t" else (3, 5))
    assert b.shape == ((4, 5) if orientation[1] == "t" else (5, 4))
    expected = np.einsum("mk,kn->mn", a.T if orientation[0] == "t" else a, b.T if orientation[1] == "t" else b)
    np.testing.assert_allclose(product_shapes.oriented(a, b, orientation), expected, rtol=1e-5)


def test_rates_cover_every_shape_for_xla_and_numpy(monkeypatch):
    monkeypatch.setattr(product_shapes, "SHAPES", {"small tn": (8, 16, 4, "tn"), "small nn": (4, 4, 4, "nn")})
    found = product_shapes.rates(reps=1)
    for library in ("xla", "numpy"):
        assert set(found[library]) == {"small tn", "small nn"}
        assert all(rate > 0 for rate in found[library].values())

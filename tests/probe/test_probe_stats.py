"""Gini / kurtosis / CV against hand-computed values and a plain-Python reference; documented edge cases."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prism_lit.probe import coefficient_of_variation, gini, kurtosis


def gini_ref(xs):
    n, mean = len(xs), sum(xs) / len(xs)
    return sum(abs(a - b) for a in xs for b in xs) / (2 * n * n * mean)


def moments_ref(xs):
    n = len(xs)
    mu = sum(xs) / n
    m2 = sum((x - mu) ** 2 for x in xs) / n
    m4 = sum((x - mu) ** 4 for x in xs) / n
    return mu, m2, m4


def test_hand_values():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 8.0]], dtype=torch.float64)
    # row 0: Σ|xi−xj| = 2·(1+2+3+1+2+1) = 20, n² = 16, mean 2.5 → 20 / (2·16·2.5) = 0.25
    # row 1: one unit carries all: Σ|xi−xj| = 2·3·8 = 48 → 48 / (2·16·2) = 0.75 = 1 − 1/n
    assert gini(x).tolist() == pytest.approx([0.25, 0.75], abs=1e-15)
    # row 0: μ 2.5, m2 = 1.25, m4 = (2·1.5⁴ + 2·0.5⁴)/4 = 2.5625 → 2.5625 / 1.25² = 1.64; row 1: 336 / 12²
    assert kurtosis(x).tolist() == pytest.approx([1.64, (3 * 2**4 + 6**4) / 4 / 12**2], rel=1e-12)
    # row 1: μ 2, σ² = (3·4 + 36)/4 = 12 → cv = √12 / 2
    assert coefficient_of_variation(x).tolist() == pytest.approx([math.sqrt(1.25) / 2.5, math.sqrt(12) / 2])


def test_batched_over_any_dim_and_dtype_kept():
    x = torch.rand(3, 5, 7, dtype=torch.float32) + 0.1
    for fn in (gini, kurtosis, coefficient_of_variation):
        out = fn(x, dim=1)
        assert out.shape == (3, 7) and out.dtype == torch.float32
        torch.testing.assert_close(out, fn(x.transpose(1, 2)), rtol=1e-6, atol=0)
    assert gini(torch.tensor([[1, 3]])).dtype == torch.float64


def test_scale_invariance():
    x = torch.rand(4, 9, dtype=torch.float64) + 0.01
    for fn in (gini, kurtosis, coefficient_of_variation):
        torch.testing.assert_close(fn(x * 1234.5), fn(x), rtol=1e-12, atol=1e-14)


def test_constant_and_all_zero_rows():
    x = torch.tensor([[3.0, 3.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    assert gini(x).tolist() == [0.0, 0.0]
    assert coefficient_of_variation(x).tolist() == [0.0, 0.0]
    assert torch.isnan(kurtosis(x)).all()
    assert gini(torch.tensor([[5.0]])).item() == 0.0  # a single unit: nothing to be unequal with


def test_non_finite_rows_give_nan_and_other_rows_are_unaffected():
    x = torch.tensor([[1.0, float("nan"), 2.0], [1.0, float("inf"), 2.0], [1.0, 2.0, 3.0]])
    for fn in (gini, kurtosis, coefficient_of_variation):
        out = fn(x)
        assert torch.isnan(out[:2]).all(), fn.__name__
        assert torch.isfinite(out[2]), fn.__name__


def test_negative_or_empty_input_is_an_error():
    for fn in (gini, kurtosis, coefficient_of_variation):
        with pytest.raises(ValueError, match="non-negative"):
            fn(torch.tensor([1.0, -0.5, 2.0]))
        with pytest.raises(ValueError, match="empty"):
            fn(torch.zeros(2, 0))


element = st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1e6, allow_nan=False))
values = st.lists(element, min_size=1, max_size=30)


@settings(max_examples=150, deadline=None)
@given(values)
def test_against_plain_python_reference(xs):
    x = torch.tensor(xs, dtype=torch.float64)
    mu, m2, m4 = moments_ref(xs)
    g, k, cv = gini(x).item(), kurtosis(x).item(), coefficient_of_variation(x).item()
    if sum(xs) == 0:
        assert g == 0.0 and cv == 0.0 and math.isnan(k)
        return
    assert g == pytest.approx(gini_ref(xs), rel=1e-9, abs=1e-12)
    assert 0.0 <= g <= 1.0 - 1.0 / len(xs) + 1e-12
    assert cv == pytest.approx(math.sqrt(m2) / mu, rel=1e-9, abs=1e-12)
    if m2 > (max(xs) * 1e-9) ** 2:  # clearly non-constant: the reference is well conditioned
        assert k == pytest.approx(m4 / m2**2, rel=1e-7)
        assert k >= 1.0 - 1e-9  # Pearson kurtosis is never below 1


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(element, min_size=6, max_size=6), min_size=1, max_size=5))
def test_batched_rows_equal_row_by_row(rows):
    x = torch.tensor(rows, dtype=torch.float64)
    for fn in (gini, kurtosis, coefficient_of_variation):
        batched = fn(x)
        single = torch.stack([fn(r) for r in x])
        torch.testing.assert_close(batched, single, equal_nan=True, rtol=1e-12, atol=0)

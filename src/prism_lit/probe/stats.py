"""Concentration statistics of a vector of per-unit gradient norms, batched over one dimension.

All three are scale-invariant functions of a row of non-negative values x_1..x_n (n = dim size):

- ``gini``: G = Σ_i Σ_j |x_i − x_j| / (2 n² μ), in [0, 1 − 1/n]; 0 = all equal, → 1 = one unit carries all.
- ``kurtosis``: Pearson kurtosis E[(x − μ)⁴] / σ⁴ with the population σ (not excess: a normal has 3).
- ``coefficient_of_variation``: σ / μ with the population σ.

Edge cases (defined here, tested in tests/probe/test_stats.py):

- A row holding any NaN or ±inf gives NaN.
- A constant row c·1 with c > 0 has G = 0 and CV = 0; its kurtosis is 0/0 and is NaN.
- An all-zero row gives G = 0 and CV = 0 — the limit of c·1 as c → 0, which is where a scale-invariant
  statistic has to go — and kurtosis NaN (near-constant rows have every kurtosis ≥ 1, so there is no limit).
- Negative finite values raise ValueError (these statistics are for magnitudes); an empty dim raises too.

Computation is in float64; the result has the input's dtype when that is floating, else float64.
"""

from __future__ import annotations

import torch

__all__ = ["SCORES", "coefficient_of_variation", "gini", "kurtosis"]


def _prepare(x: torch.Tensor, dim: int, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.dtype]:
    """Move `dim` last, cast to float64, check the domain. Returns (values, finite_row_mask, out_dtype)."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    out_dtype = x.dtype if x.is_floating_point() else torch.float64
    if x.dim() == 0:
        raise ValueError(f"{name}: expected a tensor with at least one dimension, got a scalar")
    v = x.movedim(dim, -1).to(torch.float64)
    if v.shape[-1] == 0:
        raise ValueError(f"{name}: the reduced dimension is empty")
    finite = torch.isfinite(v)
    if bool(((v < 0) & finite).any()):
        raise ValueError(f"{name}: expected non-negative values (norms), got a negative entry")
    row_finite = finite.all(dim=-1)
    v = torch.where(finite, v, torch.zeros((), dtype=v.dtype))  # keep NaN out of the arithmetic; masked below
    return v, row_finite, out_dtype


def _finish(result: torch.Tensor, row_finite: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    result = torch.where(row_finite, result, torch.full((), float("nan"), dtype=result.dtype))
    return result.to(out_dtype)


def gini(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Gini coefficient Σ_i Σ_j |x_i − x_j| / (2 n² mean(x)) over `dim` (edge cases: module docstring)."""
    v, row_finite, out_dtype = _prepare(x, dim, "gini")
    n = v.shape[-1]
    s, _ = torch.sort(v, dim=-1)
    # Sorted form of the double sum: Σ_i Σ_j |x_i − x_j| = 2 Σ_k (2k − n − 1) x_(k), k = 1..n ascending.
    k = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    numer = ((2 * k - n - 1) * s).sum(dim=-1)
    total = s.sum(dim=-1)
    safe = torch.where(total > 0, total, torch.ones((), dtype=v.dtype))
    g = torch.where(total > 0, numer / (n * safe), torch.zeros((), dtype=v.dtype))
    return _finish(g, row_finite, out_dtype)


def _central_moments(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mu = v.mean(dim=-1, keepdim=True)
    d = v - mu
    m2 = (d * d).mean(dim=-1)
    m4 = (d * d * d * d).mean(dim=-1)
    return mu.squeeze(-1), m2, m4


def kurtosis(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Pearson kurtosis E[(x − μ)⁴] / σ⁴, population σ, over `dim`. Constant (and all-zero) rows give NaN."""
    v, row_finite, out_dtype = _prepare(x, dim, "kurtosis")
    _, m2, m4 = _central_moments(v)
    # A row is constant iff its variance is 0 up to rounding of the mean; compare against the row's scale.
    scale = v.abs().amax(dim=-1)
    constant = m2 <= (scale * 1e-12) ** 2
    k = torch.where(
        constant, torch.full((), float("nan"), dtype=v.dtype), m4 / torch.where(constant, 1.0, m2) ** 2
    )
    return _finish(k, row_finite, out_dtype)


def coefficient_of_variation(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """σ / μ (population σ) over `dim`; an all-zero row gives 0."""
    v, row_finite, out_dtype = _prepare(x, dim, "coefficient_of_variation")
    mu, m2, _ = _central_moments(v)
    pos = mu > 0
    cv = torch.where(pos, m2.sqrt() / torch.where(pos, mu, 1.0), torch.zeros((), dtype=v.dtype))
    return _finish(cv, row_finite, out_dtype)


#: Name → statistic, as used by routers and records ("cv" is the coefficient of variation).
SCORES = {"gini": gini, "kurtosis": kurtosis, "cv": coefficient_of_variation}

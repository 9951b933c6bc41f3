"""The statistics the reports print: sample spread, paired bootstrap intervals, AUROC with a DeLong interval, and
Spearman's rank correlation. numpy only, every random draw from a seeded generator, so a report repeats exactly.

Paired differences (``compare`` and the run report): method A and method B evaluated on the same goals (the fixed
panels) with the same run seeds give one difference ``d[s, g] = outcome_A(s, g) − outcome_B(s, g)`` per seed ``s``
and goal ``g``. The estimate is the mean of ``d``; its 95 % interval is the percentile interval of that mean under
a crossed bootstrap that resamples seeds and goals independently (with replacement), so both the run-to-run
spread and the choice of goals enter the interval. With one seed it is the ordinary bootstrap over goals.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0


def finite(values: Sequence[float | None]) -> list[float]:
    """The values that are numbers (``None`` and NaN dropped)."""
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def mean_std(values: Sequence[float | None]) -> dict[str, float | int | None]:
    """Mean and *sample* standard deviation (n − 1); the std of a single value is undefined (``None``)."""
    values = finite(values)
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def _percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _draw_counts(rng: np.random.Generator, replicates: int, n: int) -> np.ndarray:
    """``replicates`` × ``n``: how often each of ``n`` items is drawn in ``n`` draws with replacement."""
    counts = np.zeros((replicates, n))
    np.add.at(counts, (np.arange(replicates)[:, None], rng.integers(0, n, (replicates, n))), 1.0)
    return counts


def crossed_bootstrap_mean(
    matrix: np.ndarray, n_boot: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """Mean of a seeds × goals matrix (NaN = missing cell) and its percentile interval under a crossed bootstrap.

    Every bootstrap replicate draws ``S`` seeds and ``G`` goals with replacement and takes the mean over the cells
    of the drawn grid that are present; a replicate whose grid has no present cell is dropped.
    """
    d = np.asarray(matrix, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"crossed_bootstrap_mean: expected a seeds × goals matrix, got shape {d.shape}")
    present = ~np.isnan(d)
    n_seeds, n_goals = d.shape
    if not present.any():
        return {"mean": None, "ci": None, "n_seeds": 0, "n_goals": 0, "n_pairs": 0}
    values = np.where(present, d, 0.0)
    mask = present.astype(np.float64)
    rng = np.random.default_rng(seed)
    stats = []
    chunk = max(1, 2_000_000 // max(1, n_seeds * n_goals))
    for lo in range(0, n_boot, chunk):
        b = min(chunk, n_boot - lo)
        # how often each seed / goal was drawn in each replicate
        seed_w, goal_w = _draw_counts(rng, b, n_seeds), _draw_counts(rng, b, n_goals)
        num = np.einsum("bs,sg,bg->b", seed_w, values, goal_w)
        den = np.einsum("bs,sg,bg->b", seed_w, mask, goal_w)
        keep = den > 0
        stats.append(num[keep] / den[keep])
    samples = np.concatenate(stats)
    return {"mean": float(values.sum() / mask.sum()), "ci": list(_percentile_interval(samples, confidence)),
            "n_seeds": int(present.any(axis=1).sum()), "n_goals": int(present.any(axis=0).sum()),
            "n_pairs": int(present.sum())}


def bootstrap_mean(
    outcomes: Mapping[Hashable, Mapping[Hashable, float]],
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """The mean of ``outcomes[seed][goal]`` with its crossed-bootstrap interval (e.g. a success rate over seeds and
    goals). Returns ``mean``, ``ci`` ([low, high]), ``n_seeds``, ``n_goals``, ``n_pairs`` (cells present) and
    ``by_seed`` ([seed, mean over that seed's goals], in seed order: whether the runs agree); ``mean`` and ``ci``
    are ``None`` when there is no cell."""
    seeds = sorted((s for s in outcomes if outcomes[s]), key=str)
    goals = sorted({g for s in seeds for g in outcomes[s]}, key=str)
    if not goals:
        return {"mean": None, "ci": None, "n_seeds": 0, "n_goals": 0, "n_pairs": 0, "by_seed": []}
    column = {g: j for j, g in enumerate(goals)}
    matrix = np.full((len(seeds), len(goals)), np.nan)
    for i, s in enumerate(seeds):
        for g, v in outcomes[s].items():
            matrix[i, column[g]] = float(v)
    by_seed = sorted(([s, float(np.nanmean(row))] for s, row in zip(seeds, matrix)), key=lambda sm: _seed_order(sm[0]))
    return {**crossed_bootstrap_mean(matrix, n_boot=n_boot, seed=seed, confidence=confidence), "by_seed": by_seed}


def _seed_order(s: Hashable) -> tuple:
    """Integer seeds in numeric order (2 before 10), anything else after them by its text."""
    return (0, s, "") if isinstance(s, int) and not isinstance(s, bool) else (1, 0, str(s))


def paired_difference(
    a: Mapping[Hashable, Mapping[Hashable, float]],
    b: Mapping[Hashable, Mapping[Hashable, float]],
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """A − B, paired by seed and goal: ``a[seed][goal]`` and ``b[seed][goal]`` are outcomes (e.g. 1.0 = won).

    Only the (seed, goal) cells both have are compared; the result is :func:`bootstrap_mean`'s of the differences.
    """
    diff = {s: {g: float(a[s][g]) - float(b[s][g]) for g in set(a[s]) & set(b[s])} for s in set(a) & set(b)}
    return bootstrap_mean(diff, n_boot=n_boot, seed=seed, confidence=confidence)


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> dict[str, Any]:
    """Spearman's rank correlation over the pairs where both are numbers: ``{"rho", "n"}``; ``rho`` is ``None``
    with fewer than 3 pairs or when either side is constant."""
    pairs = [(float(a), float(b)) for a, b in zip(x, y, strict=True)
             if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]
    if len(pairs) < 3:
        return {"rho": None, "n": len(pairs)}
    rx = average_ranks([p[0] for p in pairs])
    ry = average_ranks([p[1] for p in pairs])
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return {"rho": float((rx * ry).sum() / denom) if denom > 0 else None, "n": len(pairs)}


def auroc(positives: Sequence[float | None], negatives: Sequence[float | None],
          confidence: float = CONFIDENCE) -> dict[str, Any]:
    """P(score of a positive > score of a negative) + ½ P(tie), with DeLong's 95 % interval (normal, clipped to
    [0, 1]). 0.5 = no separation; below 0.5 the score orders the classes the other way round. NaN scores are
    dropped; ``auroc`` is ``None`` unless both classes have a score."""
    pos, neg = np.asarray(finite(positives)), np.asarray(finite(negatives))
    m, n = len(pos), len(neg)
    if m == 0 or n == 0:
        return {"auroc": None, "ci": None, "n_pos": m, "n_neg": n}
    psi = (pos[:, None] > neg[None, :]).astype(np.float64) + 0.5 * (pos[:, None] == neg[None, :])
    area = float(psi.mean())
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)  # DeLong's structural components
    var = (float(v10.var(ddof=1)) / m if m > 1 else 0.0) + (float(v01.var(ddof=1)) / n if n > 1 else 0.0)
    z = statistics.NormalDist().inv_cdf(0.5 + confidence / 2.0)
    half = z * math.sqrt(var)
    return {"auroc": area, "ci": [max(0.0, area - half), min(1.0, area + half)], "n_pos": m, "n_neg": n}


def bootstrap_mean_difference(
    a: Sequence[float], b: Sequence[float], n_boot: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED,
    confidence: float = CONFIDENCE,
) -> dict[str, Any]:
    """mean(a) − mean(b) of two *independent* samples, with a percentile interval from a bootstrap that resamples
    each sample on its own; ``None`` unless both have a value."""
    x, y = np.asarray(finite(a)), np.asarray(finite(b))
    if len(x) == 0 or len(y) == 0:
        return {"mean": None, "ci": None, "n_a": len(x), "n_b": len(y)}
    rng = np.random.default_rng(seed)
    diffs = (_draw_counts(rng, n_boot, len(x)) @ x) / len(x) - (_draw_counts(rng, n_boot, len(y)) @ y) / len(y)
    return {"mean": float(x.mean() - y.mean()), "ci": list(_percentile_interval(diffs, confidence)),
            "n_a": len(x), "n_b": len(y)}

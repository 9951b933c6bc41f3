"""The probe's score histogram with the routing threshold, as a matplotlib figure and a PNG file."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: no display on cluster nodes and CI
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from prism_lit.io import atomic_write_bytes

__all__ = ["save_score_histogram", "score_histogram_figure"]


def score_histogram_figure(
    scores: Sequence[float], threshold: float | None, score_name: str, title: str | None = None
) -> Figure:
    """Histogram of the finite `scores`, with the threshold as a vertical line when it is finite."""
    finite = [s for s in scores if math.isfinite(s)]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.hist(finite, bins=max(10, min(50, len(finite) // 4 or 1)), color="#4c72b0", alpha=0.85)
    if threshold is not None and math.isfinite(threshold):
        n_above = sum(s > threshold for s in finite)
        ax.axvline(
            threshold, color="#c44e52", linestyle="--", label=f"threshold {threshold:.4g} ({n_above} above)"
        )
        ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel(score_name)
    ax.set_ylabel("trajectories")
    ax.set_title(
        title or f"PRISM probe: {score_name} of per-unit gradient norms (n={len(finite)})", fontsize=9
    )
    fig.tight_layout()
    return fig


def save_score_histogram(
    path: str | os.PathLike, scores: Sequence[float], threshold: float | None, score_name: str
) -> None:
    """Write the histogram PNG atomically to `path`."""
    fig = score_histogram_figure(scores, threshold, score_name)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())

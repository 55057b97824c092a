"""The aLRP paper's ρ (§5): how well the classifier's ranking agrees with localisation quality.

For each class, take its true positives (pycocotools' matching at IoU 0.5, area "all", the first maxDet
detections per image, the same TPs as AP50 and oLRP). Rank them by score and, separately, by the IoU with their
matched GT, and take the Pearson correlation of the two rankings (Spearman's rank correlation). ρ is the mean over
classes. 1 means the highest-scored TPs are also the best localised; −1 means the reverse (paper Table 5).

Conventions (the paper does not state them):
- Ties get the average of the ranks they span ("fractional ranking"), the standard Spearman treatment, so a
  permutation of tied entries does not change ρ.
- A class with fewer than 2 TPs, or whose TPs all share one score or one IoU (a constant ranking), has no defined
  correlation: its ρ is NaN and it is left out of the mean. If no class has a defined ρ, the mean is NaN.
"""
from __future__ import annotations

import numpy as np

from .lrp import ClassMatches

__all__ = ["average_ranks", "rank_correlation", "class_rho", "mean_rho"]


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x`` (ascending); tied values share the mean of the ranks they occupy."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    # start index of each run of equal values in sorted order
    starts = np.flatnonzero(np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]]))
    ends = np.concatenate([starts[1:], [len(x)]])
    run_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the average ranks of ``a`` and ``b``; NaN if n < 2 or either ranking is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"rank_correlation needs two 1-D arrays of equal length, got {a.shape} and {b.shape}")
    if len(a) < 2:
        return float("nan")
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt(np.dot(ra, ra) * np.dot(rb, rb))
    if denom == 0.0:
        return float("nan")
    return float(np.clip(np.dot(ra, rb) / denom, -1.0, 1.0))


def class_rho(m: ClassMatches) -> float:
    """ρ of one class: rank correlation between its TPs' scores and their IoUs with the matched GT."""
    return rank_correlation(m.scores[m.tp], m.iou[m.tp])


def mean_rho(matches: dict[int, ClassMatches]) -> tuple[float, dict[int, float]]:
    """(mean ρ over classes where it is defined, per-class ρ keyed by category id)."""
    per_class = {cat: class_rho(m) for cat, m in matches.items()}
    defined = [v for v in per_class.values() if not np.isnan(v)]
    return (float(np.mean(defined)) if defined else float("nan")), per_class

"""Optimal LRP (oLRP) on top of pycocotools' own matching, as the official LRP-Error code computes it.

For one class, at a score threshold s (τ = 0.5, the detections with score >= s):

    LRP(s) = (Σ_TP (1 − IoU)/(1 − τ) + N_FP + N_FN) / (N_TP + N_FP + N_FN)

with N_FN = N_GT − N_TP over the non-ignored GT. oLRP is the minimum over s; its components at the minimiser are
Loc = mean(1 − IoU) over TPs (not divided by 1 − τ), FP = N_FP / (N_TP + N_FP) and FN = N_FN / N_GT. moLRP is the
unweighted mean over classes with at least one non-ignored GT; each component is averaged over the classes where it
is defined (not NaN).

Two threshold searches, both of the official code:

- ``grid`` (cancam/LRP-Error, the aLRP paper's numbers): s over ``np.linspace(0, 1, 101)`` as numpy produces it
  (e.g. 0.41000000000000003), first argmin, so ties go to the lowest threshold. A class without a TP has oLRP 1 at
  s = 0 and so FP = 1 when it has (non-ignored) detections.
- ``exact`` (kemaloksuz/LRP-Error, TPAMI 2021): every prefix of the ranked list, first (shortest) argmin, threshold =
  score of the prefix's last detection. A class without a TP has oLRP 1, FN 1 and NaN Loc/FP/threshold.

The matching, ignore flags, per-image-and-category cut to maxDet and the ranking are pycocotools' (``evalImgs``);
the IoU of each TP with its matched GT is read from ``COCOeval.ious`` so AP and LRP agree on every TP.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pycocotools.cocoeval import COCOeval

__all__ = ["TAU", "GRID", "AREA_NAMES", "VARIANTS", "ClassMatches", "ClassLRP", "class_matches", "class_lrp",
           "optimal_lrp", "summarize_lrp"]

TAU = 0.5
GRID = np.linspace(0.0, 1.0, 101)  # exactly the official candidates, float quirks included
AREA_NAMES = ("all", "small", "medium", "large")  # order of COCOeval.params.areaRng / areaRngLbl
VARIANTS = ("grid", "exact")


@dataclass
class ClassMatches:
    """One class's detections ranked like pycocotools' ``accumulate`` (score desc., ties: image id, file order).

    Arrays are (N,) over the kept detections (the first maxDet per image of this class); ignored detections (on a
    crowd region, or unmatched and outside the area range) are neither TP nor FP.
    """
    cat_id: int
    num_gt: int  # non-ignored GT (pycocotools' npig)
    scores: np.ndarray  # float64
    tp: np.ndarray  # bool
    fp: np.ndarray  # bool
    iou: np.ndarray  # float64, IoU of a TP with its matched GT, NaN elsewhere
    image_ids: np.ndarray  # int64
    dt_ids: np.ndarray  # int64, ids that loadRes gave the detections
    gt_ids: np.ndarray  # int64, matched GT id (0 = unmatched)

    @property
    def evaluated(self) -> bool:
        return self.num_gt > 0


@dataclass
class ClassLRP:
    """Optimal LRP of one class and the LRP curve it was taken from (NaN where undefined or not evaluated)."""
    cat_id: int
    evaluated: bool
    olrp: float
    loc: float
    fp: float
    fn: float
    threshold: float
    num_tp: int  # at the optimum
    curve_thresholds: np.ndarray = field(repr=False)  # grid: GRID; exact: score of each prefix's last detection
    curve_lrp: np.ndarray = field(repr=False)


def iou_index(cocoeval: COCOeval, iou_thr: float) -> int:
    """Position of ``iou_thr`` in ``cocoeval.params.iouThrs`` (ValueError when it is not one of them)."""
    hits = np.flatnonzero(np.isclose(cocoeval.params.iouThrs, iou_thr))
    if hits.size != 1:
        raise ValueError(f"IoU threshold {iou_thr} is not one of COCOeval.params.iouThrs {cocoeval.params.iouThrs}")
    return int(hits[0])


def class_matches(cocoeval: COCOeval, area: str = "all", iou_thr: float = TAU) -> dict[int, ClassMatches]:
    """Per-class ranked TP/FP/ignored flags and TP IoUs from an evaluated ``COCOeval`` (evaluate() has run).

    ``evalImgs`` is laid out [category][area range][image] over ``params.imgIds`` (sorted), exactly as
    ``accumulate`` indexes it. The IoU matrix ``ious[(img, cat)]`` has rows = that image's detections of the class
    sorted by score (stable) and cut to maxDets[-1], the same rows as the record's ``dtIds``, and columns = GT in
    ``_gts`` order (evaluateImg only re-indexes columns ignore-last), so a match's column is found by GT id.
    """
    if not cocoeval.evalImgs:
        raise ValueError("COCOeval.evaluate() must run before class_matches()")
    p = cocoeval.params
    t = iou_index(cocoeval, iou_thr)
    a = AREA_NAMES.index(area)
    max_det = p.maxDets[-1]
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    out: dict[int, ClassMatches] = {}
    for k, cat_id in enumerate(p.catIds):
        parts: list[tuple] = []
        num_gt = 0
        for i, img_id in enumerate(p.imgIds):
            rec = cocoeval.evalImgs[(k * n_area + a) * n_img + i]
            if rec is None:
                continue
            num_gt += int(np.count_nonzero(rec["gtIgnore"] == 0))
            dtm = np.asarray(rec["dtMatches"][t, :max_det], dtype=np.int64)
            dt_ig = np.asarray(rec["dtIgnore"][t, :max_det], dtype=bool)
            tp = (dtm > 0) & ~dt_ig
            iou = np.full(dtm.shape, np.nan)
            if tp.any():
                matrix = cocoeval.ious[(img_id, cat_id)]
                column = {g["id"]: j for j, g in enumerate(cocoeval._gts[img_id, cat_id])}
                rows = np.flatnonzero(tp)
                iou[rows] = np.asarray(matrix)[rows, [column[int(g)] for g in dtm[rows]]]
            scores = np.asarray(rec["dtScores"][:max_det], dtype=np.float64)
            parts.append((scores, tp, (dtm == 0) & ~dt_ig, iou, np.full(len(scores), img_id, dtype=np.int64),
                          np.asarray(rec["dtIds"][:max_det], dtype=np.int64), dtm))
        if parts:
            scores, tp, fp, iou, image_ids, dt_ids, gt_ids = (np.concatenate(c) for c in zip(*parts))
        else:
            scores, iou = np.zeros(0), np.zeros(0)
            tp, fp = np.zeros(0, dtype=bool), np.zeros(0, dtype=bool)
            image_ids, dt_ids, gt_ids = (np.zeros(0, dtype=np.int64) for _ in range(3))
        order = np.argsort(-scores, kind="mergesort")  # as accumulate(): stable, so image-id order breaks ties
        out[int(cat_id)] = ClassMatches(
            cat_id=int(cat_id), num_gt=num_gt, scores=scores[order].astype(np.float64), tp=tp[order].astype(bool),
            fp=fp[order].astype(bool), iou=iou[order].astype(np.float64), image_ids=image_ids[order].astype(np.int64),
            dt_ids=dt_ids[order].astype(np.int64), gt_ids=gt_ids[order].astype(np.int64))
    return out


def _prefix_sums(m: ClassMatches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N+1,) cumulative N_TP, N_FP and Σ(1 − IoU) over prefixes of length 0..N (ignored entries add exact zeros)."""
    zero = np.zeros(1)
    n_tp = np.concatenate([zero, np.cumsum(m.tp, dtype=np.float64)])
    n_fp = np.concatenate([zero, np.cumsum(m.fp, dtype=np.float64)])
    loc = np.concatenate([zero, np.cumsum(np.where(m.tp, 1.0 - np.nan_to_num(m.iou), 0.0))])
    return n_tp, n_fp, loc


def _lrp_terms(n_tp: np.ndarray, n_fp: np.ndarray, loc: np.ndarray, num_gt: int):
    """LRP and its Loc / FP / FN components for arrays of prefix statistics (NaN where a component is 0/0)."""
    n_fn = num_gt - n_tp
    lrp = (loc / (1.0 - TAU) + n_fp + n_fn) / (n_tp + n_fp + n_fn)
    with np.errstate(invalid="ignore", divide="ignore"):
        loc_c = np.where(n_tp > 0, loc / np.maximum(n_tp, 1), np.nan)
        fp_c = np.where(n_tp + n_fp > 0, n_fp / np.maximum(n_tp + n_fp, 1), np.nan)
    return lrp, loc_c, fp_c, n_fn / num_gt


def class_lrp(m: ClassMatches, variant: str = "grid") -> ClassLRP:
    """Optimal LRP of one class with the ``grid`` or ``exact`` threshold search (see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown LRP variant {variant!r}; use one of {VARIANTS}")
    nan = float("nan")
    if not m.evaluated:  # no non-ignored GT: excluded from every mean, even with detections
        return ClassLRP(m.cat_id, False, nan, nan, nan, nan, nan, 0, np.zeros(0), np.zeros(0))
    n_tp, n_fp, loc = _prefix_sums(m)
    if variant == "grid":
        # (101,) prefix length kept at each threshold = #(scores >= s); scores are sorted descending
        keep = len(m.scores) - np.searchsorted(m.scores[::-1], GRID, side="left")
        lrp, loc_c, fp_c, fn_c = _lrp_terms(n_tp[keep], n_fp[keep], loc[keep], m.num_gt)
        best = int(np.argmin(lrp))
        return ClassLRP(m.cat_id, True, float(lrp[best]), float(loc_c[best]), float(fp_c[best]), float(fn_c[best]),
                        float(GRID[best]), int(n_tp[keep[best]]), GRID.copy(), lrp)
    lrp, loc_c, fp_c, fn_c = _lrp_terms(n_tp[1:], n_fp[1:], loc[1:], m.num_gt)  # prefixes of length 1..N
    if n_tp[-1] == 0:  # no TP at all (or no detection): the exact code special-cases it
        return ClassLRP(m.cat_id, True, 1.0, nan, nan, 1.0, nan, 0, m.scores.copy(), lrp)
    best = int(np.argmin(lrp))
    return ClassLRP(m.cat_id, True, float(lrp[best]), float(loc_c[best]), float(fp_c[best]), float(fn_c[best]),
                    float(m.scores[best]), int(n_tp[best + 1]), m.scores.copy(), lrp)


def summarize_lrp(per_class: dict[int, ClassLRP]) -> dict[str, float]:
    """moLRP and its components: means over evaluated classes, each component over classes where it is defined."""
    def mean(values: list[float]) -> float:
        vals = [v for v in values if not np.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    rows = [c for c in per_class.values() if c.evaluated]
    return {"oLRP": mean([c.olrp for c in rows]), "oLRP_loc": mean([c.loc for c in rows]),
            "oLRP_fp": mean([c.fp for c in rows]), "oLRP_fn": mean([c.fn for c in rows])}


def optimal_lrp(cocoeval: COCOeval, variant: str = "grid", area: str = "all"
                ) -> tuple[dict[int, ClassLRP], dict[str, float]]:
    """Per-class oLRP (keyed by category id) and the class means, for one area range, from an evaluated COCOeval."""
    per_class = {cat: class_lrp(m, variant) for cat, m in class_matches(cocoeval, area).items()}
    return per_class, summarize_lrp(per_class)

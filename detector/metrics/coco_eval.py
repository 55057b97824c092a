"""COCO bbox evaluation: pycocotools' 12 numbers, AP90, per-class AP, optimal LRP and ρ from one COCOeval run.

COCOeval runs once; its per-image matching (``evalImgs``) and IoU matrices feed LRP and ρ, so AP, oLRP and ρ agree
on every true positive. All values are fractions. Anything undefined (pycocotools' −1 for "no GT of this kind",
LRP's NaN components) is ``None`` in the returned dict, so it is JSON-serialisable as is (NaN -> null).
"""
from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .lrp import AREA_NAMES, VARIANTS, ClassLRP, class_lrp, class_matches, iou_index, summarize_lrp
from .results_io import coco_from_dict, load_results, validate_results
from .rho import mean_rho

__all__ = ["STAT_NAMES", "EvalDetails", "run_cocoeval", "coco_stats", "per_class_ap", "class_name_map",
           "evaluate_with_details", "evaluate_detections"]

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _num(x: float) -> float | None:
    """A metric for the output dict: NaN (undefined) becomes None."""
    x = float(x)
    return None if math.isnan(x) else x


def _stat(x: float) -> float | None:
    """A pycocotools AP/AR for the output dict: its −1 ("no GT of this kind") becomes None."""
    x = float(x)
    return None if math.isnan(x) or x == -1.0 else x


class _ProgressCOCOeval(COCOeval):
    """COCOeval with a tqdm bar (with ETA) over its per-(image, class, area) evaluations; numerics unchanged."""

    bar = None

    def evaluateImg(self, imgId, catId, aRng, maxDet):  # noqa: N802, N803 (pycocotools' names)
        if self.bar is not None:
            self.bar.update(1)
        return super().evaluateImg(imgId, catId, aRng, maxDet)


def _load_res(coco_gt: COCO, dets: list[dict]) -> COCO:
    """pycocotools' loadRes, plus an empty result set (loadRes cannot take an empty list)."""
    with contextlib.redirect_stdout(io.StringIO()):
        if dets:
            return coco_gt.loadRes([dict(d) for d in dets])  # loadRes mutates its input
        return coco_from_dict({"images": list(coco_gt.dataset["images"]),
                               "categories": list(coco_gt.dataset.get("categories", [])), "annotations": []})


def run_cocoeval(coco_gt: COCO, dets: list[dict], max_dets: int = 100, img_ids: list[int] | None = None,
                 progress: bool = False) -> COCOeval:
    """Run pycocotools' bbox evaluate/accumulate/summarize (silently) on validated results.

    ``params.maxDets`` is [1, 10, max_dets]; ``img_ids`` restricts the evaluated images (default: all GT images).
    """
    if max_dets < 10:
        raise ValueError(f"max_dets must be >= 10 (AR1 and AR10 use 1 and 10 detections), got {max_dets}")
    bad = sorted(a for a in coco_gt.anns if a < 1)
    if bad:
        raise ValueError(f"ground-truth annotation ids must be >= 1 (pycocotools stores 0 as 'unmatched'): {bad[:10]}")
    cocoeval = _ProgressCOCOeval(coco_gt, _load_res(coco_gt, dets), "bbox")
    cocoeval.params.maxDets = [1, 10, max_dets]
    if img_ids is not None:
        cocoeval.params.imgIds = sorted(int(i) for i in img_ids)
    if progress:
        from tqdm import tqdm
        total = len(cocoeval.params.imgIds) * len(cocoeval.params.catIds) * len(cocoeval.params.areaRng)
        cocoeval.bar = tqdm(total=total, desc="COCO eval", unit="img-cls", dynamic_ncols=True, leave=False,
                            miniters=1000)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cocoeval.evaluate()
            cocoeval.accumulate()
            cocoeval.summarize()
    finally:
        if cocoeval.bar is not None:
            cocoeval.bar.close()
            cocoeval.bar = None
    return cocoeval


def _mean_valid(a: np.ndarray) -> float:
    a = a[a > -1]
    return float(a.mean()) if a.size else float("nan")


def coco_stats(cocoeval: COCOeval) -> dict[str, float | None]:
    """The 12 summarize() numbers plus AP90 (AP at IoU 0.90, area all, max dets), as in the paper's tables."""
    stats = {name: _stat(v) for name, v in zip(STAT_NAMES, cocoeval.stats)}
    precision = cocoeval.eval["precision"]  # (T, R, K, A, M)
    stats["AP90"] = _num(_mean_valid(precision[iou_index(cocoeval, 0.9), :, :, 0, -1]))
    return stats


def per_class_ap(cocoeval: COCOeval) -> dict[int, dict[str, float | None]]:
    """AP, AP50, AP75 and AP90 per category id (area all, max dets); None for a class without GT."""
    precision = cocoeval.eval["precision"]
    out = {}
    for k, cat in enumerate(cocoeval.params.catIds):
        p = precision[:, :, k, 0, -1]  # (T, R)
        out[int(cat)] = {"AP": _num(_mean_valid(p)),
                         **{f"AP{int(round(t * 100))}": _num(_mean_valid(p[iou_index(cocoeval, t)]))
                            for t in (0.5, 0.75, 0.9)}}
    return out


def class_name_map(coco_gt: COCO, class_names: list[str] | dict[int, str] | None = None) -> dict[int, str]:
    """Category id -> unique display name (GT names by default; duplicates get their id appended).

    ``class_names`` is a list aligned with the sorted category ids, or a dict category id -> name.
    """
    cat_ids = sorted(coco_gt.getCatIds())
    names = {c: str(coco_gt.cats[c].get("name", c)) for c in cat_ids}
    if isinstance(class_names, dict):
        names.update({int(c): str(n) for c, n in class_names.items() if int(c) in names})
    elif class_names is not None:
        if len(class_names) != len(cat_ids):
            raise ValueError(f"class_names has {len(class_names)} entries but the annotation file declares "
                             f"{len(cat_ids)} categories")
        names = {c: str(n) for c, n in zip(cat_ids, class_names)}
    counts: dict[str, int] = {}
    for n in names.values():
        counts[n] = counts.get(n, 0) + 1
    return {c: (n if counts[n] == 1 else f"{n} (id {c})") for c, n in names.items()}


@dataclass
class EvalDetails:
    """What the reports need beyond the JSON metrics: PR curves, LRP curves and the COCOeval itself."""
    cat_ids: list[int]
    names: dict[int, str]
    rec_thrs: np.ndarray  # (R,) recall thresholds of the PR curves
    precision: dict[str, np.ndarray]  # "0.50" / "0.75" -> (R, K) interpolated precision, −1 for a class without GT
    lrp: dict[int, ClassLRP]  # area "all", the chosen variant
    lrp_variant: str
    cocoeval: COCOeval


def _as_results(results: list[dict] | str | Path, coco_gt: COCO) -> list[dict]:
    if isinstance(results, (str, Path)):
        return load_results(results, coco_gt)
    return validate_results(results, coco_gt, "<results list>", allow_empty=True)


def evaluate_with_details(coco_gt: COCO, results: list[dict] | str | Path, lrp: str = "grid",
                          class_names: list[str] | dict[int, str] | None = None, max_dets: int = 100,
                          img_ids: list[int] | None = None, progress: bool = False) -> tuple[dict, EvalDetails]:
    """Evaluate COCO bbox results; returns (JSON-able metrics dict, EvalDetails for reports).

    Args:
        coco_gt: the ground truth.
        results: a results list (may be empty: a model with no detections scores AP 0, oLRP 1) or a results json
            path (an empty file or list there is an error).
        lrp: "grid" (0.01 grid, the aLRP paper's numbers) or "exact" (every detection score, newest official code).
        class_names: display names (list aligned with sorted category ids, or dict id -> name).
        max_dets: detections kept per image and class (COCO: 100).
        img_ids: evaluate these images only (e.g. a --max-images run); detections elsewhere are dropped.
        progress: show a tqdm bar during COCOeval.evaluate().

    Returns:
        metrics with keys AP, AP50, AP75, AP90, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl, oLRP, oLRP_loc,
        oLRP_fp, oLRP_fn, oLRP_small, oLRP_medium, oLRP_large (as LRP-Error prints them: per class with that size
        range's GT/detection ignore rules, mean over the classes with a GT in range), lrp_by_size (the four
        oLRP numbers per size), rho, lrp_variant, num_images, num_detections and per_class
        {name: {category_id, AP, AP50, AP75, AP90, oLRP, oLRP_loc, oLRP_fp, oLRP_fn, threshold, rho, num_gt,
        num_dets, num_tp}} where num_tp counts the TPs at IoU 0.5 among all kept detections.
    """
    if lrp not in VARIANTS:
        raise ValueError(f"unknown LRP variant {lrp!r}; use one of {VARIANTS}")
    dets = _as_results(results, coco_gt)
    if img_ids is not None:
        unknown = set(int(i) for i in img_ids) - set(coco_gt.getImgIds())
        if unknown:
            raise ValueError(f"img_ids not in the annotation file: {sorted(unknown)[:10]}")
        keep = set(int(i) for i in img_ids)
        dets = [d for d in dets if d["image_id"] in keep]
    cocoeval = run_cocoeval(coco_gt, dets, max_dets=max_dets, img_ids=img_ids, progress=progress)
    names = class_name_map(coco_gt, class_names)
    cat_ids = [int(c) for c in cocoeval.params.catIds]

    matches = class_matches(cocoeval, "all")
    lrp_all = {c: class_lrp(m, lrp) for c, m in matches.items()}
    summary = summarize_lrp(lrp_all)
    by_size = {}
    for area in AREA_NAMES[1:]:
        s = summarize_lrp({c: class_lrp(m, lrp) for c, m in class_matches(cocoeval, area).items()})
        by_size[area] = {k: _num(v) for k, v in s.items()}
    rho, rho_per_class = mean_rho(matches)
    aps = per_class_ap(cocoeval)
    det_counts: dict[int, int] = {}
    for d in dets:
        det_counts[d["category_id"]] = det_counts.get(d["category_id"], 0) + 1

    per_class = {}
    for c in cat_ids:
        r = lrp_all[c]
        per_class[names[c]] = {
            "category_id": c, **aps[c], "oLRP": _num(r.olrp), "oLRP_loc": _num(r.loc), "oLRP_fp": _num(r.fp),
            "oLRP_fn": _num(r.fn), "threshold": _num(r.threshold) if r.evaluated else None,
            "rho": _num(rho_per_class[c]), "num_gt": matches[c].num_gt, "num_dets": det_counts.get(c, 0),
            "num_tp": int(matches[c].tp.sum())}
    metrics = {**coco_stats(cocoeval), **{k: _num(v) for k, v in summary.items()},
               **{f"oLRP_{area}": by_size[area]["oLRP"] for area in AREA_NAMES[1:]}, "lrp_by_size": by_size,
               "rho": _num(rho), "lrp_variant": lrp, "num_images": len(cocoeval.params.imgIds),
               "num_detections": len(dets), "per_class": per_class}
    precision = cocoeval.eval["precision"]
    details = EvalDetails(
        cat_ids=cat_ids, names=names, rec_thrs=np.asarray(cocoeval.params.recThrs),
        precision={f"{t:.2f}": precision[iou_index(cocoeval, t), :, :, 0, -1].copy() for t in (0.5, 0.75)},
        lrp=lrp_all, lrp_variant=lrp, cocoeval=cocoeval)
    return metrics, details


def evaluate_detections(coco_gt: COCO, results: list[dict] | str | Path, lrp: str = "grid",
                        class_names: list[str] | dict[int, str] | None = None, max_dets: int = 100,
                        img_ids: list[int] | None = None) -> dict:
    """The metrics dict of :func:`evaluate_with_details` (fractions, JSON-serialisable, None = undefined)."""
    return evaluate_with_details(coco_gt, results, lrp=lrp, class_names=class_names, max_dets=max_dets,
                                 img_ids=img_ids)[0]

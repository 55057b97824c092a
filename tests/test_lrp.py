"""Optimal LRP and ρ: the official reference numbers, hand-computed edge cases and rank-correlation cases."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detector.metrics import evaluate_detections, load_gt, load_results, optimal_lrp, run_cocoeval
from detector.metrics.lrp import GRID, class_matches
from detector.metrics.rho import average_ranks, rank_correlation

VARIANT_KEYS = {"grid": "cancam_LRP-Error", "exact": "kemaloksuz_LRP-Error"}
COMPONENTS = (("oLRP", "olrp"), ("oLRP_loc", "loc"), ("oLRP_fp", "fp"), ("oLRP_fn", "fn"))


# ----------------------------------------------------------------------------------------------------------------
# Reference: ../shared/reference/lrp (official code's output on the 'noisy' result set)
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def noisy(reference_dir):
    ref = reference_dir / "lrp"
    gt = load_gt(ref / "gt.json")
    cocoeval = run_cocoeval(gt, load_results(ref / "dets_noisy.json", gt))
    expected = json.loads((ref / "expected_noisy.json").read_text())["result_sets"]["noisy"]
    return gt, cocoeval, expected, ref


def _close(expected, got: float) -> bool:
    return math.isnan(got) if expected is None else abs(expected - got) <= 1e-9


@pytest.mark.parametrize("variant", ["grid", "exact"])
@pytest.mark.parametrize("area", ["all", "small", "medium", "large"])
def test_reference_per_class(noisy, variant, area):
    _, cocoeval, expected, _ = noisy
    ref = expected["lrp"][VARIANT_KEYS[variant]]["per_class"][area]
    per_class, _ = optimal_lrp(cocoeval, variant, area)
    assert sorted(per_class) == sorted(int(c) for c in ref)
    for cat, row in ref.items():
        got = per_class[int(cat)]
        if row["oLRP"] == -1:  # official "not evaluated" (no non-ignored GT): excluded, values undefined
            assert not got.evaluated and math.isnan(got.olrp)
            continue
        assert got.evaluated
        for key, attr in COMPONENTS:
            assert _close(row[key], getattr(got, attr)), (variant, area, cat, key, row[key], getattr(got, attr))
        if variant == "exact":  # thresholds are detection scores: exact, NaN for a class without a TP
            assert _close(row["opt_threshold"], got.threshold) and (
                row["opt_threshold"] is None or row["opt_threshold"] == got.threshold)
        else:  # any member of the recorded tie run is a correct grid answer
            assert any(lo <= got.threshold <= hi for lo, hi in row["opt_threshold_ties"]), (cat, got.threshold)
            assert got.threshold in GRID


@pytest.mark.parametrize("variant", ["grid", "exact"])
def test_reference_means(noisy, variant):
    _, cocoeval, expected, _ = noisy
    ref = expected["lrp"][VARIANT_KEYS[variant]]
    _, summary = optimal_lrp(cocoeval, variant, "all")
    for key in ("oLRP", "oLRP_loc", "oLRP_fp", "oLRP_fn"):
        assert summary[key] == pytest.approx(ref["summary"][key], abs=1e-9)
    for area, row in ref.get("summary_by_size", {}).items():
        _, s = optimal_lrp(cocoeval, variant, area)
        for key in row:
            assert s[key] == pytest.approx(row[key], abs=1e-9), (area, key)


def test_reference_through_evaluate_detections(noisy):
    gt, _, expected, ref = noisy
    for variant, key in VARIANT_KEYS.items():
        m = evaluate_detections(gt, ref / "dets_noisy.json", lrp=variant)
        assert m["lrp_variant"] == variant
        assert m["oLRP"] == pytest.approx(expected["lrp"][key]["summary"]["oLRP"], abs=1e-9)
        row = expected["lrp"][key]["per_class"]["all"]["1"]
        assert m["per_class"]["person"]["oLRP"] == pytest.approx(row["oLRP"], abs=1e-9)
        assert m["per_class"]["unicorn"]["oLRP"] is None  # declared, dets but no GT: not evaluated


def test_tp_iou_recovered_for_the_right_pair(noisy):
    """Every TP's IoU equals the IoU recomputed by hand from its own box and its matched GT box."""
    gt, cocoeval, _, _ = noisy
    n = 0
    for m in class_matches(cocoeval).values():
        for dt_id, gt_id, iou in zip(m.dt_ids[m.tp], m.gt_ids[m.tp], m.iou[m.tp]):
            x, y, w, h = cocoeval.cocoDt.anns[int(dt_id)]["bbox"]
            gx, gy, gw, gh = gt.anns[int(gt_id)]["bbox"]
            iw = max(0.0, min(x + w, gx + gw) - max(x, gx))
            ih = max(0.0, min(y + h, gy + gh) - max(y, gy))
            assert iou == pytest.approx(iw * ih / (w * h + gw * gh - iw * ih), abs=1e-12)
            assert iou >= 0.5
            n += 1
    assert n > 50


def test_tp_count_matches_pycocotools_recall(noisy):
    _, cocoeval, _, _ = noisy
    recall = cocoeval.eval["recall"][0, :, 0, -1]  # IoU 0.5, area all, 100 dets
    for k, m in enumerate(class_matches(cocoeval).values()):
        if m.num_gt:
            assert m.tp.sum() / m.num_gt == pytest.approx(recall[k])
        assert np.all(np.diff(m.scores) <= 0)


# ----------------------------------------------------------------------------------------------------------------
# Hand-built edge cases (expected values computed by hand in the comments)
# ----------------------------------------------------------------------------------------------------------------
def _det(img, cat, box, score):
    return {"image_id": img, "category_id": cat, "bbox": box, "score": score}


@pytest.fixture
def hand(tmp_path):
    """Six classes covering the degenerate cases; image 3 has no annotations; image 4 holds > 100 detections."""
    anns = [  # (image, category, box, iscrowd)
        (1, 1, [0, 0, 10, 10], 0), (1, 1, [50, 50, 40, 40], 1), (2, 1, [0, 0, 20, 20], 0),
        (4, 2, [0, 0, 20, 20], 0), (4, 2, [50, 50, 20, 20], 0),
        (1, 4, [20, 20, 30, 30], 0), (2, 5, [50, 50, 10, 10], 0), (4, 6, [100, 100, 10, 10], 0)]
    gt = {"images": [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in (1, 2, 3, 4)],
          "categories": [{"id": c, "name": n} for c, n in zip(range(1, 7), "abcdef")],
          "annotations": [{"id": k + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3],
                           "iscrowd": cr} for k, (im, c, b, cr) in enumerate(anns)]}
    dets = [
        # a: TP IoU .8 | on the crowd region (ignored) | on an image without annotations (FP) | TP IoU .9 | FP
        _det(1, 1, [0, 0, 10, 8], 0.9), _det(1, 1, [60, 60, 10, 10], 0.8), _det(3, 1, [0, 0, 10, 10], 0.7),
        _det(2, 1, [0, 0, 20, 18], 0.6), _det(2, 1, [30, 30, 10, 10], 0.41),
        # b: IoU exactly 0.5 (a TP: the match condition is >=) | IoU 1
        _det(4, 2, [0, 0, 20, 10], 0.5), _det(4, 2, [50, 50, 20, 20], 0.4),
        # c: declared, no annotations
        _det(1, 3, [0, 0, 5, 5], 0.99),
        # d: GT but no detection; e: detections but no TP
        _det(2, 5, [0, 60, 10, 10], 0.95), _det(1, 5, [80, 0, 10, 10], 0.2),
    ]
    # f: 100 FPs in image 4 outrank its only TP, which the per-(image, class) cut to 100 then drops
    dets += [_det(4, 6, [0, 150, 5, 5], round(0.99 - i * 0.001, 3)) for i in range(100)]
    dets.append(_det(4, 6, [100, 100, 10, 10], 0.05))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return load_gt(tmp_path / "gt.json"), dets


def test_hand_grid(hand):
    m = evaluate_detections(*hand, lrp="grid")
    pc = m["per_class"]
    # a: ranked TP(.8) ign FP TP(.9) FP, 2 GT -> prefix LRPs .7 .7 .8 (0.4+0.2+1)/3 .65: optimum after 4 dets
    assert pc["a"]["oLRP"] == pytest.approx(1.6 / 3) and pc["a"]["oLRP_loc"] == pytest.approx(0.15)
    assert pc["a"]["oLRP_fp"] == pytest.approx(1 / 3) and pc["a"]["oLRP_fn"] == 0
    # the grid's 0.41 is 0.41000000000000003, which drops the detection scored 0.41: first optimal grid point
    assert pc["a"]["threshold"] == GRID[41] and pc["a"]["threshold"] > 0.41
    assert (pc["a"]["num_gt"], pc["a"]["num_tp"], pc["a"]["num_dets"]) == (2, 2, 5)
    # b: LRP 1 after the IoU-0.5 TP, (1 + 0 + 0)/2 after both; ties over s in [0, 0.4] -> first grid point 0
    assert pc["b"]["oLRP"] == pytest.approx(0.5) and pc["b"]["oLRP_loc"] == pytest.approx(0.25)
    assert (pc["b"]["oLRP_fp"], pc["b"]["oLRP_fn"], pc["b"]["threshold"]) == (0, 0, 0)
    # c: no GT -> not evaluated
    assert all(pc["c"][k] is None for k in ("AP", "oLRP", "oLRP_loc", "oLRP_fp", "oLRP_fn", "threshold"))
    # d: GT, no detections; e and f: detections, no TP (grid: FP = 1 at s = 0)
    assert (pc["d"]["oLRP"], pc["d"]["oLRP_fn"], pc["d"]["oLRP_loc"], pc["d"]["oLRP_fp"]) == (1, 1, None, None)
    for name in "ef":
        assert (pc[name]["oLRP"], pc[name]["oLRP_fn"], pc[name]["oLRP_fp"], pc[name]["oLRP_loc"]) == (1, 1, 1, None)
        assert pc[name]["threshold"] == 0 and pc[name]["num_tp"] == 0
    assert pc["f"]["num_dets"] == 101 and pc["f"]["AP"] == 0
    # means over a, b, d, e, f; Loc over a, b; FP over a, b, e, f
    assert m["oLRP"] == pytest.approx((1.6 / 3 + 0.5 + 3) / 5)
    assert m["oLRP_loc"] == pytest.approx(0.2)
    assert m["oLRP_fp"] == pytest.approx((1 / 3 + 0 + 1 + 1) / 4)
    assert m["oLRP_fn"] == pytest.approx(0.6)


def test_hand_exact(hand):
    m = evaluate_detections(*hand, lrp="exact")
    pc = m["per_class"]
    assert pc["a"]["oLRP"] == pytest.approx(1.6 / 3) and pc["a"]["threshold"] == 0.6
    assert pc["b"]["oLRP"] == pytest.approx(0.5) and pc["b"]["threshold"] == 0.4
    for name in "def":  # no TP: FP and threshold undefined in the exact variant
        assert (pc[name]["oLRP"], pc[name]["oLRP_fn"], pc[name]["oLRP_fp"], pc[name]["threshold"]) == (1, 1, None, None)
    assert m["oLRP"] == pytest.approx((1.6 / 3 + 0.5 + 3) / 5)
    assert m["oLRP_fp"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["lrp_variant"] == "exact"


def test_per_category_cut_keeps_other_classes(hand):
    """Image 4 has 103 detections; only class f loses its 101st, class b keeps both TPs."""
    gt, dets = hand
    m = {c.cat_id: c for c in class_matches(run_cocoeval(gt, dets)).values()}
    assert len(m[6].scores) == 100 and not m[6].tp.any()
    assert m[2].tp.sum() == 2 and np.allclose(m[2].iou, [0.5, 1.0])


def test_crowd_detection_ignored_not_fp(hand):
    gt, dets = hand
    a = class_matches(run_cocoeval(gt, dets))[1]
    assert a.num_gt == 2  # the crowd box is not a GT to find
    assert a.tp.tolist() == [True, False, False, True, False] and a.fp.tolist() == [False, False, True, False, True]


def test_no_evaluated_class_gives_null_means(tmp_path):
    gt = {"images": [{"id": 1, "width": 10, "height": 10}], "categories": [{"id": 1, "name": "x"}], "annotations": []}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    m = evaluate_detections(load_gt(tmp_path / "gt.json"), [_det(1, 1, [0, 0, 5, 5], 0.5)])
    assert m["oLRP"] is None and m["AP"] is None and m["rho"] is None
    json.dumps(m, allow_nan=False)


# ----------------------------------------------------------------------------------------------------------------
# ρ
# ----------------------------------------------------------------------------------------------------------------
def _rho_case(tmp_path, scores):
    """Three images, one GT each; detections with IoU 0.9, 0.8, 0.6 get ``scores``."""
    gt = {"images": [{"id": i, "width": 50, "height": 50} for i in (1, 2, 3)], "categories": [{"id": 1, "name": "x"}],
          "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                           "iscrowd": 0} for i in (1, 2, 3)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dets = [_det(i, 1, [0, 0, 10, h], s) for i, h, s in zip((1, 2, 3), (9, 8, 6), scores)]
    return evaluate_detections(load_gt(tmp_path / "gt.json"), dets)


def test_rho_perfect_and_reversed(tmp_path):
    assert _rho_case(tmp_path, (0.9, 0.8, 0.7))["rho"] == pytest.approx(1.0)
    assert _rho_case(tmp_path, (0.7, 0.8, 0.9))["rho"] == pytest.approx(-1.0)
    assert _rho_case(tmp_path, (0.7, 0.8, 0.9))["per_class"]["x"]["rho"] == pytest.approx(-1.0)


def test_rho_hand_classes(hand):
    # a: TP scores (.9, .6) with IoUs (.8, .9); b: (.5, .4) with (.5, 1.0): both reversed; others < 2 TPs
    m = evaluate_detections(*hand)
    assert m["per_class"]["a"]["rho"] == pytest.approx(-1) and m["per_class"]["b"]["rho"] == pytest.approx(-1)
    assert m["per_class"]["d"]["rho"] is None and m["rho"] == pytest.approx(-1)


def test_average_ranks_ties():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_rank_correlation_cases():
    assert rank_correlation(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1)
    assert rank_correlation(np.array([1.0, 2, 3]), np.array([0.9, 0.5, 0.1])) == pytest.approx(-1)
    # hand value with a tie: ranks a (1, 2, 3, 4), b (1.5, 1.5, 3, 4) -> r = 4.5 / sqrt(5 * 4.5)
    assert rank_correlation(np.array([1.0, 2, 3, 4]), np.array([5.0, 5, 6, 7])) == pytest.approx(4.5 / math.sqrt(22.5))
    assert math.isnan(rank_correlation(np.array([1.0]), np.array([0.7])))
    assert math.isnan(rank_correlation(np.array([1.0, 2.0]), np.array([0.7, 0.7])))  # constant ranking


def test_rank_correlation_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 40).astype(float), rng.random(40)
    assert rank_correlation(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# oLRP by object size (oLRP_small / _medium / _large, as LRP-Error 2021 reports them)
# ----------------------------------------------------------------------------------------------------------------
@pytest.fixture
def sized(tmp_path):
    """Class 1 has a small (20x20), a medium (50x50) and a large (100x100) GT; class 2 one medium GT."""
    anns = [(1, [0, 0, 20, 20]), (1, [50, 50, 50, 50]), (1, [100, 100, 100, 100]), (2, [0, 100, 40, 40])]
    gt = {"images": [{"id": 1, "width": 200, "height": 200}],
          "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
          "annotations": [{"id": k + 1, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3],
                           "iscrowd": 0} for k, (c, b) in enumerate(anns)]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    dets = [_det(1, 1, [100, 100, 100, 80], 0.9),  # large GT, IoU 0.8
            _det(1, 1, [50, 50, 50, 40], 0.8),  # medium GT, IoU 0.8
            _det(1, 1, [0, 0, 20, 15], 0.7),  # small GT, IoU 0.75
            _det(1, 1, [150, 0, 10, 10], 0.6),  # FP, small (area 100)
            _det(1, 1, [0, 100, 100, 100], 0.5),  # FP, large (area 10000)
            _det(1, 2, [0, 100, 40, 40], 0.4)]  # dog: medium GT, IoU 1
    return load_gt(tmp_path / "gt.json"), dets


@pytest.mark.parametrize("variant", ["grid", "exact"])
def test_olrp_by_size_hand(sized, variant):
    """Hand values. A GT outside the range is ignored, and so is a detection matched to it or unmatched and outside.

    small, cat: ign(.9) ign(.8) TP .75 FP(small) ign(large FP) with 1 GT -> best after the TP: (0.25/0.5)/1 = 0.5;
        dog has no small GT (not evaluated) -> oLRP_small = 0.5.
    medium, cat: one TP of IoU 0.8, every other detection ignored -> 0.2/0.5 = 0.4; dog: IoU 1 -> 0 -> mean 0.2.
    large, cat: TP .8, then the large FP -> min(0.4, (0.4 + 1)/2) = 0.4; dog not evaluated -> 0.4.
    all, cat: TPs .8 .8 .75 then two FPs, 3 GT -> best after 3: (1.3 + 0 + 0)/3; dog 0 -> mean 1.3/6.
    """
    m = evaluate_detections(*sized, lrp=variant)
    assert m["oLRP_small"] == pytest.approx(0.5, abs=1e-12)
    assert m["oLRP_medium"] == pytest.approx(0.2, abs=1e-12)
    assert m["oLRP_large"] == pytest.approx(0.4, abs=1e-12)
    assert m["oLRP"] == pytest.approx(1.3 / 6, abs=1e-12)
    for size in ("small", "medium", "large"):
        assert m["lrp_by_size"][size]["oLRP"] == m[f"oLRP_{size}"]
    json.dumps(m, allow_nan=False)


def test_olrp_by_size_no_gt_in_range_is_null(sized):
    gt, dets = sized
    only_dog = [d for d in dets if d["category_id"] == 2]
    gt.dataset["annotations"] = [a for a in gt.dataset["annotations"] if a["category_id"] == 2]
    gt.createIndex()
    m = evaluate_detections(gt, only_dog, lrp="exact")
    assert m["oLRP_medium"] == 0 and m["oLRP_small"] is None and m["oLRP_large"] is None


def test_olrp_by_size_reference_and_printed_lines(noisy):
    """The official exact code's oLRP_small/medium/large and its printed lines for them."""
    from detector.metrics.reports import format_summary
    gt, _, expected, ref = noisy
    official = expected["lrp"][VARIANT_KEYS["exact"]]
    m = evaluate_detections(gt, ref / "dets_noisy.json", lrp="exact")
    for size in ("small", "medium", "large"):
        assert m[f"oLRP_{size}"] == pytest.approx(official["summary"][f"oLRP_{size}"], abs=1e-9)
    lines = [line.strip() for line in format_summary(m).splitlines()]
    for size in ("small", "medium", "large"):
        want = [p for p in official["printed"] if p.startswith("Optimal LRP  ") and f"area={size:>6}" in p]
        assert len(want) == 1 and want[0] in lines, (size, want)
    olrp_lines = [line for line in lines if line.startswith("Optimal LRP")]
    assert olrp_lines == [p for p in official["printed"] if p.startswith("Optimal LRP")][:7]  # LRP-Error's order

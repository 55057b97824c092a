"""COCO AP through the wrapper (reference numbers, AP90, per-class AP by hand) and results-file I/O errors."""
from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from detector.metrics import (ResultsFormatError, evaluate_detections, load_gt, load_results, run_cocoeval,
                              write_results, write_zip)
from detector.metrics.coco_eval import STAT_NAMES


@pytest.fixture
def noisy(reference_dir):
    ref = reference_dir / "lrp"
    gt = load_gt(ref / "gt.json")
    expected = json.loads((ref / "expected_noisy.json").read_text())["result_sets"]["noisy"]
    return gt, ref / "dets_noisy.json", expected


def test_reference_coco_stats(noisy):
    gt, dets_path, expected = noisy
    m = evaluate_detections(gt, dets_path)
    for name in STAT_NAMES:
        assert m[name] == pytest.approx(expected["coco"][name], abs=1e-12), name


def test_ap90_equals_a_separate_iou_090_run(noisy):
    """AP90 taken from the 10-threshold run equals pycocotools run with iouThrs = [0.9] alone."""
    gt, dets_path, _ = noisy
    m = evaluate_detections(gt, dets_path)
    with contextlib.redirect_stdout(io.StringIO()):
        e = COCOeval(gt, gt.loadRes(str(dets_path)), "bbox")
        e.params.iouThrs = np.array([0.9])
        e.evaluate()
        e.accumulate()
    p = e.eval["precision"][0, :, :, 0, -1]
    assert m["AP90"] == pytest.approx(p[p > -1].mean(), abs=1e-12)
    assert 0 < m["AP90"] < m["AP75"]


def test_per_class_ap_averages_to_ap(noisy):
    gt, dets_path, _ = noisy
    m = evaluate_detections(gt, dets_path)
    aps = [c["AP"] for c in m["per_class"].values() if c["AP"] is not None]
    assert len(aps) == 5  # 'unicorn' has no GT
    assert np.mean(aps) == pytest.approx(m["AP"], abs=1e-12)
    assert np.mean([c["AP50"] for c in m["per_class"].values() if c["AP50"] is not None]) == pytest.approx(m["AP50"])


def test_metrics_are_strict_json(noisy):
    gt, dets_path, _ = noisy
    m = evaluate_detections(gt, dets_path, lrp="exact")
    back = json.loads(json.dumps(m, allow_nan=False))
    assert back["per_class"]["unicorn"]["AP"] is None and back["lrp_variant"] == "exact"


def _tiny_gt(tmp_path, anns, images=(1, 2), cats=((1, "a"),)):
    gt = {"images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in images],
          "categories": [{"id": c, "name": n} for c, n in cats],
          "annotations": [{"id": k + 1, "image_id": im, "category_id": c, "bbox": b, "area": b[2] * b[3],
                           "iscrowd": 0} for k, (im, c, b) in enumerate(anns)]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return load_gt(path), path


def test_per_class_ap_by_hand(tmp_path):
    # 2 GT; detections: IoU 0.5 (score .5), IoU 1 (score .4).
    # IoU 0.5: both TP -> AP 1.  IoU >= 0.55: FP then TP -> precision 1/2 up to recall 1/2 -> 51 * 0.5 / 101.
    gt, _ = _tiny_gt(tmp_path, [(1, 1, [0, 0, 20, 20]), (1, 1, [50, 50, 20, 20])])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 10], "score": 0.5},
            {"image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.4}]
    c = evaluate_detections(gt, dets)["per_class"]["a"]
    assert c["AP50"] == pytest.approx(1.0)
    assert c["AP75"] == pytest.approx(25.5 / 101)
    assert c["AP"] == pytest.approx((1 + 9 * 25.5 / 101) / 10)


def test_empty_results_list_scores_zero(tmp_path):
    gt, _ = _tiny_gt(tmp_path, [(1, 1, [0, 0, 20, 20])])
    m = evaluate_detections(gt, [])
    assert m["AP"] == 0 and m["AP50"] == 0 and m["oLRP"] == 1 and m["oLRP_fn"] == 1
    assert m["rho"] is None and m["num_detections"] == 0
    json.dumps(m, allow_nan=False)


def test_img_ids_restriction_equals_a_smaller_annotation_file(tmp_path):
    anns = [(1, 1, [0, 0, 20, 20]), (2, 1, [10, 10, 30, 30]), (3, 1, [5, 5, 10, 10])]
    gt, _ = _tiny_gt(tmp_path, anns, images=(1, 2, 3))
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 15], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [50, 50, 30, 30], "score": 0.8},
            {"image_id": 3, "category_id": 1, "bbox": [5, 5, 10, 9], "score": 0.3}]
    sub = tmp_path / "sub"
    sub.mkdir()
    small, _ = _tiny_gt(sub, [a for a in anns if a[0] != 2], images=(1, 3))
    got = evaluate_detections(gt, dets, img_ids=[3, 1])
    want = evaluate_detections(small, [d for d in dets if d["image_id"] != 2])
    for key in ("AP", "AP50", "AP75", "oLRP", "oLRP_loc", "num_images", "num_detections"):
        assert got[key] == pytest.approx(want[key]), key
    assert got["num_images"] == 2


# ----------------------------------------------------------------------------------------------------------------
# results_io
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("[{\"image_id\": 1,", "not valid JSON"),
    ("[]", "no detections"),
    ("{\"annotations\": []}", "looks like an annotation file"),
    ("[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 5, 5]}]", "detection #0 (image_id 1, category_id 1) "
                                                                        "lacks key(s) ['score']"),
    ("[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 5], \"score\": 0.5}]", "'bbox' must be [x, y, w, h]"),
    ("[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, -5, 5], \"score\": 0.5}]", "negative width"),
    ("[{\"image_id\": \"1\", \"category_id\": 1, \"bbox\": [0, 0, 5, 5], \"score\": 0.5}]", "'image_id' must be an"),
    ("[{\"image_id\": 77, \"category_id\": 1, \"bbox\": [0, 0, 5, 5], \"score\": 0.5}]",
     "image id(s) are not in the annotation file: 77"),
    ("[{\"image_id\": 1, \"category_id\": 42, \"bbox\": [0, 0, 5, 5], \"score\": 0.5}]",
     "category id(s) not declared in the annotation file: 42"),
    ("[{\"image_id\": 1, \"category_id\": 1, \"bbox\": [0, 0, 5, 5], \"score\": NaN}]", "'score' must be a finite"),
])
def test_bad_results_files(tmp_path, content, message):
    gt, _ = _tiny_gt(tmp_path, [(1, 1, [0, 0, 20, 20])])
    path = tmp_path / "dets.json"
    path.write_text(content)
    with pytest.raises(ResultsFormatError) as err:
        evaluate_detections(gt, path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_results_file(tmp_path):
    gt, _ = _tiny_gt(tmp_path, [(1, 1, [0, 0, 20, 20])])
    with pytest.raises(ResultsFormatError, match="results file not found"):
        load_results(tmp_path / "nope.json", gt)


@pytest.mark.parametrize("gt, message", [
    ({"images": [], "categories": []}, "lacks ['annotations']"),
    ({"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
      "annotations": [{"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1}]}, "ids must be"),
    ({"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}, "lacks ['area']"),
])
def test_bad_annotation_files(tmp_path, gt, message):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with pytest.raises(ResultsFormatError) as err:
        load_gt(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_write_results_atomic_roundtrip_and_zip(tmp_path):
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0.5, 1.0, 2.0, 3.0], "score": 0.25}]
    path = write_results(dets, tmp_path / "out" / "dets.json")
    assert json.loads(path.read_text()) == dets
    assert sorted(os.listdir(path.parent)) == ["dets.json"]  # no temporary file left behind
    import zipfile
    with zipfile.ZipFile(write_zip(path)) as zf:
        assert zf.namelist() == ["dets.json"] and json.loads(zf.read("dets.json")) == dets
    with pytest.raises(ValueError):
        write_results([{"score": float("nan")}], tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists() and not list(tmp_path.glob(".bad.json*"))


def test_run_cocoeval_rejects_tiny_max_dets(tmp_path):
    gt, _ = _tiny_gt(tmp_path, [(1, 1, [0, 0, 20, 20])])
    with pytest.raises(ValueError, match="max_dets"):
        run_cocoeval(gt, [], max_dets=5)

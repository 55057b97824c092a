"""SSD-style train pipeline (docs/REPRODUCTION.md §6) and test resize: exact pieces and properties over many seeds."""
from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from data.transforms import (IMAGENET_MEAN, IMAGENET_STD, Expand, KeepRatioResize, MinIoURandomCrop,
                             PhotoMetricDistortion, box_iou_np, build_test_transform, build_train_transform)

MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)


def _release_photometric_bgr(img_bgr, brightness, contrast_first, contrast, saturation, hue, perm_bgr):
    """The release's PhotoMetricDistortion written on a BGR image (the reference)."""
    img = img_bgr.astype(np.float32).copy()
    if brightness is not None:
        img += np.float32(brightness)
    if contrast_first and contrast is not None:
        img *= np.float32(contrast)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    if saturation is not None:
        img[..., 1] *= np.float32(saturation)
    if hue is not None:
        img[..., 0] += np.float32(hue)
        img[..., 0][img[..., 0] > 360] -= 360
        img[..., 0][img[..., 0] < 0] += 360
    img = cv2.cvtColor(img, cv2.COLOR_HSV2BGR)
    if not contrast_first and contrast is not None:
        img *= np.float32(contrast)
    if perm_bgr is not None:
        img = img[..., perm_bgr]
    return img


@pytest.mark.parametrize("params", [
    dict(brightness=-30.0, contrast_first=True, contrast=1.4, saturation=0.6, hue=17.0, perm_bgr=[2, 0, 1]),
    dict(brightness=25.0, contrast_first=False, contrast=0.55, saturation=1.45, hue=-17.5, perm_bgr=[1, 0, 2]),
    dict(brightness=None, contrast_first=True, contrast=None, saturation=None, hue=None, perm_bgr=None),
    dict(brightness=31.0, contrast_first=False, contrast=None, saturation=None, hue=-5.0, perm_bgr=[0, 2, 1]),
])
def test_photometric_on_rgb_equals_release_on_bgr(params):
    rng = np.random.default_rng(0)
    rgb = rng.uniform(0, 255, (24, 32, 3)).astype(np.float32)
    perm = params["perm_bgr"]
    perm_rgb = None if perm is None else [2 - perm[2 - j] for j in range(3)]
    ours = PhotoMetricDistortion().apply(rgb, brightness=params["brightness"], contrast_first=params["contrast_first"],
                                         contrast=params["contrast"], saturation=params["saturation"],
                                         hue=params["hue"], permutation=perm_rgb)
    ref = _release_photometric_bgr(rgb[..., ::-1], **params)[..., ::-1]
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-3)
    if params["brightness"] is not None and params["brightness"] < 0:
        assert ours.min() < 0  # no clipping, as in the release


def test_photometric_parameter_distribution():
    t = PhotoMetricDistortion()
    t.set_random_seed(123)
    draws = [t.get_params() for _ in range(4000)]
    for key in ("brightness", "contrast", "saturation", "hue", "permutation"):
        freq = np.mean([d[key] is not None for d in draws])
        assert 0.46 < freq < 0.54, (key, freq)
    assert 0.46 < np.mean([d["contrast_first"] for d in draws]) < 0.54
    b = [d["brightness"] for d in draws if d["brightness"] is not None]
    c = [d["contrast"] for d in draws if d["contrast"] is not None]
    h = [d["hue"] for d in draws if d["hue"] is not None]
    assert -32 <= min(b) < -30 and 30 < max(b) <= 32
    assert 0.5 <= min(c) < 0.52 and 1.48 < max(c) <= 1.5
    assert -18 <= min(h) < -17 and 17 < max(h) <= 18
    perms = {tuple(d["permutation"]) for d in draws if d["permutation"] is not None}
    assert len(perms) == 6


def test_expand_geometry_and_fill():
    img = np.full((10, 20, 3), 7.0, dtype=np.float32)
    e = Expand()
    out = e.apply(img, left=5, top=3, canvas=(25, 41))
    assert out.shape == (25, 41, 3)
    assert np.all(out[3:13, 5:25] == 7.0)
    np.testing.assert_allclose(out[0, 0], MEAN)
    np.testing.assert_allclose(out[24, 40], MEAN)
    boxes = np.array([[0.1, 0.2, 0.5, 1.0, 3.0]])  # normalised, plus one label column
    moved = e.apply_to_bboxes(boxes, left=5, top=3, canvas=(25, 41), shape=(10, 20))
    np.testing.assert_allclose(moved[0, :4] * [41, 25, 41, 25], [2 + 5, 2 + 3, 10 + 5, 10 + 3])
    assert moved[0, 4] == 3.0
    e.set_random_seed(0)
    for _ in range(200):
        p = e.sample(e.py_random, 10, 20)
        assert 1 <= p["ratio"] <= 4
        assert p["canvas"] == (int(10 * p["ratio"]), int(20 * p["ratio"]))
        assert 0 <= p["left"] <= p["canvas"][1] - 20 and 0 <= p["top"] <= p["canvas"][0] - 10


def test_min_iou_crop_rule_over_many_seeds():
    crop = MinIoURandomCrop()
    crop.set_random_seed(7)
    h, w = 300, 400
    boxes = np.array([[50, 60, 250, 200], [200, 100, 380, 290], [10, 10, 60, 50]], dtype=np.float64)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    modes = []
    for _ in range(600):
        p = crop.sample(crop.py_random, h, w, boxes)
        modes.append(p["mode"])
        if p["patch"] is None:
            assert p["mode"] == 1.0
            continue
        x0, y0, x1, y1 = p["patch"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert x1 - x0 >= 0.3 * w - 1 and y1 - y0 >= 0.3 * h - 1
        assert 0.5 * (x1 - x0) - 1 <= y1 - y0 <= 2 * (x1 - x0) + 1
        ious = box_iou_np(np.array([p["patch"]], dtype=np.float64), boxes)[0]
        assert ious.min() >= p["mode"]
        inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
        assert np.array_equal(inside, p["keep"]) and inside.any()
    assert set(modes) <= {1.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.0}


def test_crop_applies_clip_and_shift():
    crop = MinIoURandomCrop()
    img = np.arange(20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3)
    out = crop.apply(img, patch=[5, 4, 25, 14])
    assert np.array_equal(out, img[4:14, 5:25])
    bboxes = np.array([[0 / 30, 0 / 20, 10 / 30, 10 / 20, 1], [20 / 30, 2 / 20, 29 / 30, 19 / 20, 2],
                       [0, 0, 2 / 30, 2 / 20, 3]])
    keep = np.array([True, True, False])
    res = crop.apply_to_bboxes(bboxes, patch=[5, 4, 25, 14], keep=keep, shape=(20, 30))
    np.testing.assert_allclose(res[:, :4] * [20, 10, 20, 10], [[0, 0, 5, 6], [15, 0, 20, 10]], atol=1e-9)
    assert res[:, 4].tolist() == [1, 2]


def test_branch_probabilities():
    """No crop in about 1/7 of samples (exactly 1/7 per draw when every crop succeeds), expand about 1/2."""
    t = build_train_transform(32, photometric=False, flip_prob=0.0, fuse=False)
    expand, crop = t.compose.transforms[0], t.compose.transforms[1]
    img = np.zeros((24, 32, 3), dtype=np.float32)
    n, expanded, no_crop = 1400, 0, 0
    for seed in range(n):
        t(img, np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), seed=seed)
        expanded += bool(expand.params)
        no_crop += crop.params["mode"] == 1.0
    assert 0.45 < expanded / n < 0.55
    assert 0.11 < no_crop / n < 0.175


def _coloured_scene(h: int, w: int):
    """Grey image with non-overlapping solid rectangles, one colour per label; crowd box last."""
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]], dtype=np.float32)
    boxes = np.array([[5, 5, 40, 30], [50, 10, 90, 60], [100, 40, 150, 110], [20, 60, 70, 115], [120, 5, 155, 30]],
                     dtype=np.float64)
    img = np.full((h, w, 3), 128, dtype=np.float32)
    for (x0, y0, x1, y1), c in zip(boxes.astype(int), colours):
        img[y0:y1, x0:x1] = c
    labels = np.arange(5, dtype=np.int64)
    crowd = np.array([False, False, False, False, True])
    return img, boxes, labels, crowd, colours


@pytest.mark.parametrize("size,seeds", [(512, 150), (800, 25)])
def test_pipeline_properties_over_seeds(size, seeds):
    """Exact output size; boxes inside, positive; each label's box centre shows that label's colour."""
    img, boxes, labels, crowd, colours = _coloured_scene(120, 160)
    t = build_train_transform(size, photometric=False)
    for seed in range(seeds):
        out = t(img, boxes, labels, crowd, seed=seed)
        assert out["image"].shape == (3, size, size) and out["image"].dtype == torch.float32
        assert out["img_size"] == (size, size)
        b, lab = out["boxes"].numpy(), out["labels"].numpy()
        assert len(b) == len(lab) and lab.dtype == np.int64
        assert 4 not in lab  # the crowd box never becomes a training box
        assert np.all(b >= 0) and np.all(b <= size)
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        pixels = out["image"].numpy().transpose(1, 2, 0) * STD + MEAN
        for (x0, y0, x1, y1), k in zip(b, lab):
            cy, cx = int((y0 + y1) / 2), int((x0 + x1) / 2)
            np.testing.assert_allclose(pixels[cy, cx], colours[k], atol=2.0, err_msg=f"seed {seed} label {k}")


def test_fused_expand_crop_equals_sequence():
    img, boxes, labels, crowd, _ = _coloured_scene(120, 160)
    img = img + np.random.default_rng(0).uniform(0, 20, img.shape).astype(np.float32)
    fused, seq = build_train_transform(256), build_train_transform(256, fuse=False)
    for seed in range(80):
        a, b = fused(img, boxes, labels, crowd, seed=seed), seq(img, boxes, labels, crowd, seed=seed)
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(a["crowd_boxes"], b["crowd_boxes"], atol=1e-4, rtol=0)


def test_same_seed_same_sample_different_seed_differs():
    img, boxes, labels, crowd, _ = _coloured_scene(120, 160)
    t = build_train_transform(128)
    a, b, c = (t(img, boxes, labels, crowd, seed=s) for s in (5, 5, 6))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["boxes"], b["boxes"])
    assert not torch.equal(a["image"], c["image"])


def test_expand_fill_is_zero_after_normalise():
    img = np.full((20, 20, 3), 200, dtype=np.float32)
    t = build_train_transform(64, photometric=False, expand_prob=1.0, min_iou_crop=False, flip_prob=0.0)
    out = t(img, np.array([[2.0, 2, 18, 18]]), np.array([0]), np.array([False]), seed=3)
    ratio = t.compose.transforms[0].params["ratio"]
    assert ratio > 1.5  # this seed expands enough to leave a border
    corners = out["image"][:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert corners.abs().max() < 1e-5


def test_user_transform_in_albumentations_style():
    img, boxes, labels, crowd, _ = _coloured_scene(120, 160)
    t = build_train_transform(120, photometric=False, expand=False, min_iou_crop=False, flip_prob=0.0,
                              extra=[A.VerticalFlip(p=1.0)])
    out = t(img, boxes, labels, crowd, seed=0)
    sy, sx = 120 / 120, 120 / 160
    expected = np.stack([boxes[:4, 0] * sx, (120 - boxes[:4, 3]) * sy, boxes[:4, 2] * sx, (120 - boxes[:4, 1]) * sy], 1)
    np.testing.assert_allclose(out["boxes"].numpy(), expected, atol=1e-3)


@pytest.mark.parametrize("hw,expected", [((480, 640), (500, 667)), ((640, 480), (667, 500)),
                                         ((100, 1000), (83, 833)), ((612, 612), (500, 500)), ((333, 500), (500, 751))])
def test_keep_ratio_resize_sizes(hw, expected):
    assert KeepRatioResize.new_size(*hw, short=500, max_long=833) == expected


def test_test_transform_scale_maps_boxes_back():
    img = np.random.default_rng(1).uniform(0, 255, (333, 500, 3)).astype(np.float32)
    boxes = np.array([[0.0, 0.0, 500.0, 333.0], [10.5, 20.25, 30.75, 40.0]])
    out = build_test_transform(500, 833)(img, boxes, np.array([1, 2]), np.array([False, False]))
    assert out["image"].shape == (3, 500, 751) and out["img_size"] == (500, 751)
    sx, sy = out["scale_factor"]
    assert sx == 751 / 500 and sy == 500 / 333
    back = out["boxes"].numpy() / np.array([sx, sy, sx, sy])
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    ref = (cv2.resize(img, (751, 500), interpolation=cv2.INTER_LINEAR) - MEAN) / STD
    np.testing.assert_allclose(out["image"].numpy().transpose(1, 2, 0), ref, atol=1e-4)

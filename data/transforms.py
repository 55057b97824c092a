"""SSD-style training pipeline (docs/REPRODUCTION.md §6) and the keep-ratio test resize, on albumentations 2.x.

Both pipelines are :class:`albumentations.Compose` objects with ``BboxParams(format="pascal_voc",
label_fields=["labels", "iscrowd"])`` wrapped in a small callable that seeds the randomness per sample
and returns torch tensors. Users add their own steps as ordinary albumentations transforms
(``extra=[A.Blur(p=0.1), ...]``, inserted before the final resize).

Colour order. The release loads BGR and converts to RGB in ``Normalize``; we load RGB. Every step is
equivalent under that change:

* brightness, contrast and saturation act on all channels alike;
* the HSV round trip uses ``COLOR_RGB2HSV``/``COLOR_HSV2RGB`` on RGB, which is, pixel for pixel, the
  release's ``COLOR_BGR2HSV``/``COLOR_HSV2BGR`` on the same pixels stored as BGR (same hue formula);
* the channel swap draws a uniform permutation of three channels: permutation ``p`` of BGR equals
  permutation ``q[j] = 2 - p[2 - j]`` of RGB, a bijection, so the distribution is the same;
* the Expand fill is the RGB mean in RGB order (the release reverses it to BGR), 0 after Normalize.

Deviations, all deliberate: boxes are clipped to the image when loaded (albumentations requires
boxes inside the image; COCO boxes are at most a rounding error outside); random numbers come from a
per-sample generator (see :class:`TrainTransform`) rather than numpy's global one.
"""
from __future__ import annotations

import random
import warnings
from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
import torch

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "PhotoMetricDistortion", "Expand", "MinIoURandomCrop", "ExpandMinIoUCrop",
    "KeepRatioResize", "TrainTransform", "TestTransform", "build_train_transform", "build_test_transform",
    "build_normalise_only", "box_iou_np",
]

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)
_BBOX_PARAMS = dict(format="pascal_voc", label_fields=["labels", "iscrowd"])


def box_iou_np(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of (n, 4) and (m, 4) xyxy boxes -> (n, m), no +1 offset (mmdet 2.x ``bbox_overlaps``)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = np.maximum(area_a[:, None] + area_b[None, :] - inter, np.finfo(np.float64).eps)
    return inter / union


def _to_pixels(bboxes: np.ndarray, h: int, w: int) -> np.ndarray:
    """albumentations' normalised xyxy -> pixel xyxy (float64), extra columns dropped."""
    return bboxes[:, :4].astype(np.float64) * np.array([w, h, w, h], dtype=np.float64)


def _to_normalised(bboxes: np.ndarray, pixels: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixel xyxy back into albumentations' normalised rows, keeping the extra (label) columns."""
    out = bboxes.copy()
    out[:, :4] = pixels / np.array([w, h, w, h], dtype=np.float64)
    return out


def _crop_pixels(pix: np.ndarray, patch: Sequence[int]) -> np.ndarray:
    """Clip (n, 4) pixel boxes to the patch and move them into its frame."""
    x0, y0, x1, y1 = patch
    pix = pix.copy()
    pix[:, 0::2] = pix[:, 0::2].clip(x0, x1) - x0
    pix[:, 1::2] = pix[:, 1::2].clip(y0, y1) - y0
    return pix


class PhotoMetricDistortion(A.ImageOnlyTransform):
    """The release's PhotoMetricDistortion on a float32 RGB image (0-255 scale, never clipped).

    In order, each step with probability 0.5: brightness ``+U(-b, b)``; contrast ``*U(lo, hi)`` either
    here or after the HSV steps (a fair coin); HSV conversion (always); saturation ``*U(lo, hi)``; hue
    ``+U(-d, d)`` wrapped into [0, 360]; back to RGB; contrast if not done before; channel permutation.
    """

    def __init__(self, brightness_delta: float = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: float = 18, p: float = 1.0):
        super().__init__(p=p)
        self.brightness_delta = float(brightness_delta)
        self.contrast_range = tuple(float(v) for v in contrast_range)
        self.saturation_range = tuple(float(v) for v in saturation_range)
        self.hue_delta = float(hue_delta)

    def get_params(self) -> dict[str, Any]:
        r = self.py_random
        params: dict[str, Any] = {}
        params["brightness"] = r.uniform(-self.brightness_delta, self.brightness_delta) if r.random() < 0.5 else None
        params["contrast_first"] = r.random() < 0.5
        params["contrast"] = r.uniform(*self.contrast_range) if r.random() < 0.5 else None
        params["saturation"] = r.uniform(*self.saturation_range) if r.random() < 0.5 else None
        params["hue"] = r.uniform(-self.hue_delta, self.hue_delta) if r.random() < 0.5 else None
        perm = list(range(3))
        r.shuffle(perm)
        params["permutation"] = perm if r.random() < 0.5 else None
        return params

    def apply(self, img: np.ndarray, brightness: float | None = None, contrast_first: bool = True,
              contrast: float | None = None, saturation: float | None = None, hue: float | None = None,
              permutation: list[int] | None = None, **params: Any) -> np.ndarray:
        img = img.astype(np.float32, copy=True)
        if brightness is not None:
            img += np.float32(brightness)
        if contrast_first and contrast is not None:
            img *= np.float32(contrast)
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        if saturation is not None:
            hsv[..., 1] *= np.float32(saturation)
        if hue is not None:
            h = hsv[..., 0]
            h += np.float32(hue)
            h[h > 360] -= 360
            h[h < 0] += 360
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and contrast is not None:
            img *= np.float32(contrast)
        if permutation is not None:
            img = np.ascontiguousarray(img[..., permutation])
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("brightness_delta", "contrast_range", "saturation_range", "hue_delta")


class Expand(A.DualTransform):
    """Zoom out: paste the image at a random offset on an ``int(h r) x int(w r)`` mean-filled canvas.

    ``r ~ U(ratio_range)``; offsets ``int(U(0, w r - w))``, ``int(U(0, h r - h))``. Applied with
    probability ``p`` (the release's default 0.5).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, ratio_range: Sequence[float] = (1.0, 4.0),
                 p: float = 0.5):
        super().__init__(p=p)
        self.mean = tuple(float(v) for v in mean)
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))

    @property
    def targets_as_params(self) -> list[str]:
        return ["image"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        return self.sample(self.py_random, h, w)

    def sample(self, r: random.Random, h: int, w: int) -> dict[str, Any]:
        """Draw the ratio and the offsets for an h x w image."""
        ratio = r.uniform(*self.ratio_range)
        left = int(r.uniform(0, w * ratio - w))
        top = int(r.uniform(0, h * ratio - h))
        return {"ratio": ratio, "left": left, "top": top, "canvas": (int(h * ratio), int(w * ratio))}

    def apply(self, img: np.ndarray, left: int = 0, top: int = 0, canvas: tuple[int, int] = (0, 0),
              **params: Any) -> np.ndarray:
        h, w = img.shape[:2]
        if img.ndim == 3 and img.shape[2] == len(self.mean) <= 4:  # one C pass instead of fill + copy
            return cv2.copyMakeBorder(img, top, canvas[0] - top - h, left, canvas[1] - left - w,
                                      cv2.BORDER_CONSTANT, value=self.mean)
        out = np.empty((canvas[0], canvas[1], img.shape[2]), dtype=img.dtype)
        out[...] = np.asarray(self.mean, dtype=img.dtype)
        out[top:top + h, left:left + w] = img
        return out

    def apply_to_bboxes(self, bboxes: np.ndarray, left: int = 0, top: int = 0, canvas: tuple[int, int] = (0, 0),
                        shape: tuple[int, ...] = (0, 0), **params: Any) -> np.ndarray:
        if len(bboxes) == 0:
            return bboxes
        h, w = shape[:2]
        pix = _to_pixels(bboxes, h, w) + np.array([left, top, left, top], dtype=np.float64)
        return _to_normalised(bboxes, pix, canvas[0], canvas[1])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("mean", "ratio_range")


class MinIoURandomCrop(A.DualTransform):
    """SSD crop: a patch whose IoU with every box is at least a randomly chosen threshold.

    The mode is drawn uniformly from ``(1, *min_ious, 0)``; 1 means no crop. For up to ``max_trials``
    trials: ``new_w ~ U(min_crop_size w, w)``, ``new_h ~ U(min_crop_size h, h)``; rejected unless
    ``new_h / new_w`` is in [0.5, 2]; ``left ~ U(0, w - new_w)``, ``top ~ U(0, h - new_h)``; the integer
    patch is ``(int(left), int(top), int(left + new_w), int(top + new_h))``. A trial is rejected if any
    box has IoU(patch, box) < min_iou, or if no box centre lies strictly inside the patch. Boxes whose
    centre is inside are kept, clipped to the patch and shifted. After ``max_trials`` failures the mode
    is redrawn. With no boxes at all the first well-shaped patch is taken. Every box takes part in the
    IoU and centre tests, crowd boxes included (the release concatenates all its bbox fields).
    """

    def __init__(self, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size: float = 0.3,
                 max_trials: int = 50, p: float = 1.0):
        super().__init__(p=p)
        self.min_ious = tuple(float(v) for v in min_ious)
        self.min_crop_size = float(min_crop_size)
        self.max_trials = int(max_trials)

    @property
    def modes(self) -> tuple[float, ...]:
        return (1.0, *self.min_ious, 0.0)

    @property
    def targets_as_params(self) -> list[str]:
        return ["image"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        bboxes = data.get("bboxes")
        boxes = _to_pixels(np.asarray(bboxes), h, w) if bboxes is not None and len(bboxes) else np.zeros((0, 4))
        return self.sample(self.py_random, h, w, boxes)

    def sample(self, r: random.Random, h: int, w: int, boxes: np.ndarray) -> dict[str, Any]:
        """Draw the mode and the patch for an h x w image with (n, 4) pixel boxes."""
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        while True:
            mode = r.choice(self.modes)
            if mode == 1.0:
                return {"mode": mode, "patch": None, "keep": None}
            for _ in range(self.max_trials):
                new_w = r.uniform(self.min_crop_size * w, w)
                new_h = r.uniform(self.min_crop_size * h, h)
                if new_h / new_w < 0.5 or new_h / new_w > 2:
                    continue
                left = r.uniform(0, w - new_w)
                top = r.uniform(0, h - new_h)
                patch = np.array([int(left), int(top), int(left + new_w), int(top + new_h)], dtype=np.float64)
                if patch[2] == patch[0] or patch[3] == patch[1]:
                    continue  # a line or a point
                if len(boxes) == 0:
                    return {"mode": mode, "patch": patch.astype(int).tolist(), "keep": np.zeros(0, dtype=bool)}
                if box_iou_np(patch[None], boxes)[0].min() < mode:
                    continue
                keep = ((centres[:, 0] > patch[0]) & (centres[:, 1] > patch[1])
                        & (centres[:, 0] < patch[2]) & (centres[:, 1] < patch[3]))
                if not keep.any():
                    continue
                return {"mode": mode, "patch": patch.astype(int).tolist(), "keep": keep}

    def apply(self, img: np.ndarray, patch: list[int] | None = None, **params: Any) -> np.ndarray:
        if patch is None:
            return img
        x0, y0, x1, y1 = patch
        return np.ascontiguousarray(img[y0:y1, x0:x1])

    def apply_to_bboxes(self, bboxes: np.ndarray, patch: list[int] | None = None, keep: np.ndarray | None = None,
                        shape: tuple[int, ...] = (0, 0), **params: Any) -> np.ndarray:
        if patch is None or len(bboxes) == 0:
            return bboxes
        h, w = shape[:2]
        bboxes = bboxes[keep]
        pix = _crop_pixels(_to_pixels(bboxes, h, w), patch)
        return _to_normalised(bboxes, pix, patch[3] - patch[1], patch[2] - patch[0])

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_ious", "min_crop_size", "max_trials")


class ExpandMinIoUCrop(A.DualTransform):
    """:class:`Expand` then :class:`MinIoURandomCrop` in one step, without building the whole canvas.

    Same random draws in the same order as the two transforms in sequence (so the same seed gives the
    same output), but only the cropped part of the up-to-16x larger canvas is ever allocated.
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, ratio_range: Sequence[float] = (1.0, 4.0),
                 expand_prob: float = 0.5, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                 min_crop_size: float = 0.3, max_trials: int = 50, p: float = 1.0):
        super().__init__(p=p)
        self.expand = Expand(mean, ratio_range, p=expand_prob)
        self.crop = MinIoURandomCrop(min_ious, min_crop_size, max_trials)

    @property
    def targets_as_params(self) -> list[str]:
        return ["image"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        r = self.py_random
        bboxes = data.get("bboxes")
        boxes = _to_pixels(np.asarray(bboxes), h, w) if bboxes is not None and len(bboxes) else np.zeros((0, 4))
        expand = None
        p = self.expand.p
        if p >= 1.0 or (p > 0.0 and r.random() < p):  # albumentations' should_apply, same draw
            expand = self.expand.sample(r, h, w)
            boxes = boxes + np.array([expand["left"], expand["top"]] * 2, dtype=np.float64)
            h, w = expand["canvas"]
        crop = self.crop.sample(r, h, w, boxes)
        return {"expand": expand, **crop}

    def apply(self, img: np.ndarray, expand: dict | None = None, patch: list[int] | None = None,
              **params: Any) -> np.ndarray:
        if expand is None:
            return self.crop.apply(img, patch)
        if patch is None:
            return self.expand.apply(img, **expand)
        h, w = img.shape[:2]
        x0, y0, x1, y1 = patch
        out = np.empty((y1 - y0, x1 - x0, img.shape[2]), dtype=img.dtype)
        out[...] = np.asarray(self.expand.mean, dtype=img.dtype)
        # the image occupies [left, left + w) x [top, top + h) of the canvas
        ix0, iy0 = max(x0, expand["left"]), max(y0, expand["top"])
        ix1, iy1 = min(x1, expand["left"] + w), min(y1, expand["top"] + h)
        if ix1 > ix0 and iy1 > iy0:
            out[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = img[iy0 - expand["top"]:iy1 - expand["top"],
                                                            ix0 - expand["left"]:ix1 - expand["left"]]
        return out

    def apply_to_bboxes(self, bboxes: np.ndarray, expand: dict | None = None, patch: list[int] | None = None,
                        keep: np.ndarray | None = None, shape: tuple[int, ...] = (0, 0), **params: Any) -> np.ndarray:
        if len(bboxes) == 0:
            return bboxes
        h, w = shape[:2]
        pix = _to_pixels(bboxes, h, w)
        if expand is not None:
            pix = pix + np.array([expand["left"], expand["top"]] * 2, dtype=np.float64)
            h, w = expand["canvas"]
        if patch is None:
            return _to_normalised(bboxes, pix, h, w)
        return _to_normalised(bboxes[keep], _crop_pixels(pix[keep], patch), patch[3] - patch[1], patch[2] - patch[0])

    def get_transform_init_args(self) -> dict[str, Any]:
        return {"mean": self.expand.mean, "ratio_range": self.expand.ratio_range, "expand_prob": self.expand.p,
                "min_ious": self.crop.min_ious, "min_crop_size": self.crop.min_crop_size,
                "max_trials": self.crop.max_trials}


class KeepRatioResize(A.DualTransform):
    """mmcv ``imrescale`` rule: scale so the short side is ``short`` and the long side at most ``max_long``.

    The new size is ``int(w s + 0.5) x int(h s + 0.5)`` with ``s = min(max_long / long, short / short_side)``;
    the exact per-axis factors are ``new_w / w`` and ``new_h / h`` (what boxes are mapped back with).
    """

    def __init__(self, short: int = 500, max_long: int = 833, interpolation: int = cv2.INTER_LINEAR, p: float = 1.0):
        super().__init__(p=p)
        self.short = int(short)
        self.max_long = int(max_long)
        self.interpolation = interpolation

    @staticmethod
    def new_size(h: int, w: int, short: int, max_long: int) -> tuple[int, int]:
        """(new_h, new_w) for an h x w image."""
        s = min(max_long / max(h, w), short / min(h, w))
        return int(h * s + 0.5), int(w * s + 0.5)

    @property
    def targets_as_params(self) -> list[str]:
        return ["image"]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        return {"new_hw": self.new_size(h, w, self.short, self.max_long)}

    def apply(self, img: np.ndarray, new_hw: tuple[int, int] = (0, 0), **params: Any) -> np.ndarray:
        return cv2.resize(img, (new_hw[1], new_hw[0]), interpolation=self.interpolation)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        return bboxes  # normalised coordinates are unchanged by a resize

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("short", "max_long", "interpolation")


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float64)


class _Pipeline:
    """Runs an albumentations Compose on (image, boxes, labels, iscrowd) and returns torch tensors."""

    def __init__(self, compose: A.Compose):
        self.compose = compose

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray,
                 seed: int | None = None) -> dict[str, Any]:
        """Transform one sample.

        Args:
            image: (H, W, 3) float32 RGB on the 0-255 scale.
            boxes: (n, 4) xyxy pixels inside the image; labels (n,) int64; iscrowd (n,) bool.
            seed: seeds every random draw of this call; None draws from the pipeline's own state.

        Returns:
            dict with ``image`` (3, H', W') float32 tensor, ``boxes`` (k, 4) float32, ``labels`` (k,) int64
            (non-crowd only), ``crowd_boxes`` (c, 4) float32, ``img_size`` (H', W') and ``scale_factor``
            (sx, sy) of the last resize.
        """
        if seed is not None:
            self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))
        h_in, w_in = image.shape[:2]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if len(boxes) else _empty_boxes()
        out = self.compose(image=image, bboxes=boxes, labels=np.asarray(labels, dtype=np.int64),
                           iscrowd=np.asarray(iscrowd, dtype=bool))
        img = out["image"]
        h, w = img.shape[:2]
        b = np.asarray(out["bboxes"], dtype=np.float64).reshape(-1, 4)
        lab = np.asarray(out["labels"], dtype=np.int64).reshape(-1)
        crowd = np.asarray(out["iscrowd"], dtype=bool).reshape(-1)
        valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)),
            "boxes": torch.from_numpy(b[valid & ~crowd].astype(np.float32)),
            "labels": torch.from_numpy(lab[valid & ~crowd]),
            "crowd_boxes": torch.from_numpy(b[valid & crowd].astype(np.float32)),
            "img_size": (h, w),
            "scale_factor": self._scale_factor(h_in, w_in, h, w),
        }

    def _scale_factor(self, h_in: int, w_in: int, h: int, w: int) -> tuple[float, float]:
        return (w / w_in, h / h_in)


class TrainTransform(_Pipeline):
    """The training pipeline. ``scale_factor`` is exact only when neither Expand nor the crop fired."""


class TestTransform(_Pipeline):
    """The deterministic test pipeline; ``scale_factor`` maps its boxes back to the original exactly."""


def build_train_transform(train_size: int = 512, photometric: bool = True, expand: bool = True,
                          expand_prob: float = 0.5, expand_ratio: Sequence[float] = (1.0, 4.0),
                          min_iou_crop: bool = True, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                          min_crop_size: float = 0.3, flip_prob: float = 0.5,
                          extra: Sequence[A.BasicTransform] = (), fuse: bool = True) -> TrainTransform:
    """docs/REPRODUCTION.md §6 train pipeline: photometric, Expand, MinIoURandomCrop, [extra], square resize, flip, normalise.

    ``extra`` albumentations transforms run on the float32 0-255 RGB image right before the resize.
    ``fuse`` runs Expand + MinIoURandomCrop as :class:`ExpandMinIoUCrop` (same output, less memory traffic).
    """
    steps: list[A.BasicTransform] = []
    if photometric:
        steps.append(PhotoMetricDistortion(32, (0.5, 1.5), (0.5, 1.5), 18))
    if fuse and expand and min_iou_crop:  # fused: identical output, without allocating the whole canvas
        steps.append(ExpandMinIoUCrop(IMAGENET_MEAN, expand_ratio, expand_prob, min_ious, min_crop_size))
    else:
        if expand:
            steps.append(Expand(IMAGENET_MEAN, expand_ratio, p=expand_prob))
        if min_iou_crop:
            steps.append(MinIoURandomCrop(min_ious, min_crop_size))
    steps.extend(extra)
    steps.append(A.Resize(train_size, train_size, interpolation=cv2.INTER_LINEAR))
    if flip_prob > 0:
        steps.append(A.HorizontalFlip(p=flip_prob))
    steps.append(A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=1.0))
    return TrainTransform(A.Compose(steps, bbox_params=A.BboxParams(**_BBOX_PARAMS), seed=0))


def build_test_transform(short: int = 500, max_long: int = 833) -> TestTransform:
    """docs/REPRODUCTION.md §6 test pipeline: keep-ratio resize (short side, long side capped) and normalise."""
    steps = [KeepRatioResize(short, max_long),
             A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=1.0)]
    return TestTransform(A.Compose(steps, bbox_params=A.BboxParams(**_BBOX_PARAMS), seed=0))


def build_normalise_only() -> TestTransform:
    """No geometry, only ImageNet normalisation (scale factor 1)."""
    normalise = A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD, max_pixel_value=1.0)
    with warnings.catch_warnings():  # "processor for bboxes but no transform": intended, boxes pass through
        warnings.simplefilter("ignore", UserWarning)
        return TestTransform(A.Compose([normalise], bbox_params=A.BboxParams(**_BBOX_PARAMS), seed=0))

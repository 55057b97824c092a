"""COCO-format detection dataset (pycocotools) with the release's annotation rules (docs/REPRODUCTION.md §6).

* Category ids may be non-contiguous: ``cat_ids`` (sorted) <-> contiguous labels ``0..K-1``.
* Image and annotation ids stay Python ints (COCO crowd annotation ids exceed 2^32; nothing here
  casts them to a fixed-width integer).
* Crowd boxes (``iscrowd=1``) are kept apart: never in ``target["boxes"]``, returned in
  ``target["crowd_boxes"]`` and left in the COCO index for evaluation.
* Boxes with ``w < 1``, ``h < 1``, ``area <= 0`` or no overlap with the image are dropped (counted and
  logged once), as mmdet's ``CocoDataset._parse_ann_info`` does.
* Training images are kept if they have at least one annotation (crowd-only included) when
  ``filter_empty`` and if their shorter side is at least ``min_size`` (mmdet ``_filter_imgs``).
* A json without ``annotations`` (test-dev image info) loads; its images have empty targets.

Bad input raises a :class:`~detector.errors.DataError` naming the file, the image id and what to do: the json
is checked by :func:`data.validate.validate_coco` (the validator ``evaluate.py`` uses too), every listed image
file is checked to exist and be non-empty when the dataset is built (not an epoch later), and each image is
decoded with truncation detected (:func:`data.image_io.read_image`). With ``skip_bad_images=True`` bad images are
warned about, counted and left out (annotation problems, missing or empty files: at start-up) or replaced by the
next good image (decoding failures while training; in evaluation the sample is returned as ``None`` and dropped
by the collate, so no image is duplicated and a batch of only bad images never reaches the model).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data.image_io import ImageDecodeError, read_image
from data.transforms import build_normalise_only
from data.validate import SKIP_HINT, AnnotationError, DataFileNotFoundError, apply_check, load_coco_json, validate_coco
from detector.errors import DataError
from data.coco_index import coco_from_dict

__all__ = ["CocoDetection", "BadSampleError", "load_coco_json"]

logger = logging.getLogger(__name__)
_MAX_REPLACEMENTS = 100


class BadSampleError(DataError):
    """One image cannot be used (missing, empty, truncated, undecodable, wrong size); names file and image id."""


class CocoDetection(Dataset):
    """A COCO-format detection dataset.

    Args:
        ann_file: COCO instances json (or test-dev image info json).
        image_dir: folder the images' ``file_name`` are relative to.
        transforms: callable ``(image HWC float32 RGB, boxes (n,4), labels (n,), iscrowd (n,), seed) -> dict``
            as built by :mod:`data.transforms`; None = normalise only.
        train: apply the training image filter (``filter_empty``, ``min_size``).
        filter_empty: drop training images without any annotation.
        min_size: drop training images whose shorter side is below this.
        skip_bad_images: warn, count and skip bad images instead of raising.

    ``dataset[i]`` or ``dataset[(i, seed)]`` returns ``(image (3, H, W) float32, target)``; see
    docs/ARCHITECTURE.md for the target keys (plus ``crowd_boxes`` (m, 4)).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path, transforms: Callable | None = None,
                 train: bool = False, filter_empty: bool = True, min_size: int = 32, skip_bad_images: bool = False):
        self.ann_file = Path(ann_file)
        self.image_dir = Path(image_dir)
        self.train = train
        self.skip_bad_images = skip_bad_images
        self.num_bad = 0  # bad images met so far (in this process)
        data = load_coco_json(self.ann_file)
        if not self.image_dir.is_dir():
            raise DataFileNotFoundError(f"image folder not found: {self.image_dir} (images of {self.ann_file})")
        check = validate_coco(data, self.ann_file, skip_bad=skip_bad_images)
        check.bad_image_ids |= self._unusable_files(data["images"], check.bad_image_ids)
        data = apply_check(data, check)
        self.num_bad = len(check.bad_image_ids)
        self._fill_area(data)
        self.coco = coco_from_dict(data)

        self.cat_ids: list[int] = sorted(int(c["id"]) for c in data["categories"])
        self.cat_id_to_label: dict[int, int] = {c: i for i, c in enumerate(self.cat_ids)}
        self.label_to_cat_id: list[int] = list(self.cat_ids)
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
        self.class_names: list[str] = [names[c] for c in self.cat_ids]

        self.num_dropped_boxes = 0
        self._targets = self._parse_all(data)
        if self.num_dropped_boxes:
            logger.warning("%s: dropped %d boxes with w < 1, h < 1, area <= 0 or outside the image",
                           self.ann_file, self.num_dropped_boxes)

        ids = [int(img["id"]) for img in data["images"]]
        self.dropped: dict[str, int] = {}  # reason -> images left out (logged by data/summary.py)
        if self.num_bad:
            self.dropped["bad image or annotation (data.skip_bad_images)"] = self.num_bad
        if train:
            with_ann = {int(a["image_id"]) for a in data.get("annotations", [])}
            empty = {i for i in ids if filter_empty and i not in with_ann}
            small = {i for i in ids if i not in empty
                     and min(self.coco.imgs[i]["width"], self.coco.imgs[i]["height"]) < min_size}
            for reason, n in (("no annotations (data.filter_empty)", len(empty)),
                              (f"shorter side below data.min_size={min_size}", len(small))):
                if n:
                    self.dropped[reason] = n
            ids = [i for i in ids if i not in empty and i not in small]
        if not ids:
            raise AnnotationError(f"{self.ann_file}: no usable images ({len(data['images'])} listed and valid; "
                                  + (", ".join(f"{n} left out: {r}" for r, n in self.dropped.items()) or "none listed")
                                  + "); check the file, data.filter_empty and data.min_size")
        self.ids: list[int] = ids
        self.transforms = transforms if transforms is not None else build_normalise_only()

    # ------------------------------------------------------------------ validation
    def _unusable_files(self, images: list[dict], already_bad: set[int]) -> set[int]:
        """Ids of images whose file is missing or empty (one stat each); raises unless ``skip_bad_images``."""
        bad: dict[int, str] = {}
        for img in images:
            if img["id"] in already_bad:
                continue
            path = self.image_dir / img["file_name"]
            try:
                if os.stat(path).st_size == 0:
                    bad[img["id"]] = f"{path}: empty file (0 bytes)"
            except OSError:
                bad[img["id"]] = f"{path}: file missing"
        if not bad:
            return set()
        first_id, first = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more images)" if len(bad) > 1 else ""
        if not self.skip_bad_images:
            raise BadSampleError(f"image {first_id}: {first} (listed in {self.ann_file}){more}; restore the file, "
                                 f"remove the image from the json, or set data.skip_bad_images=true to skip it")
        logger.warning("%s: %d image files are missing or empty, e.g. image %d: %s; skipped (data.skip_bad_images)",
                       self.ann_file, len(bad), first_id, first)
        return set(bad)

    @staticmethod
    def _fill_area(data: dict) -> None:
        """Annotations without ``area`` get w * h (COCO evaluation reads it for the small/medium/large split)."""
        for a in data.get("annotations", []):
            if "area" not in a:
                a["area"] = float(a["bbox"][2]) * float(a["bbox"][3])

    def _parse_all(self, data: dict) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per image id: (boxes (n, 4) float64 xyxy, labels (n,) int64, iscrowd (n,) bool), mmdet's rules.

        Vectorised over the whole file (COCO train has 860k annotations); json order is kept per image.
        """
        empty = (np.zeros((0, 4), dtype=np.float64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool))
        out = {int(img["id"]): empty for img in data["images"]}
        anns = data.get("annotations", [])
        if not anns:
            return out
        row_of = {int(img["id"]): i for i, img in enumerate(data["images"])}
        sizes = np.array([[img["width"], img["height"]] for img in data["images"]], dtype=np.float64)
        rows = np.array([row_of[a["image_id"]] for a in anns], dtype=np.int64)
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        labels = np.array([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        area = np.array([a.get("area", math.nan) for a in anns], dtype=np.float64)
        x, y, w, h = xywh.T
        area = np.where(np.isnan(area), w * h, area)
        img_w, img_h = sizes[rows, 0], sizes[rows, 1]
        inter_w = np.maximum(0.0, np.minimum(x + w, img_w) - np.maximum(x, 0.0))
        inter_h = np.maximum(0.0, np.minimum(y + h, img_h) - np.maximum(y, 0.0))
        valid = (inter_w * inter_h > 0) & (area > 0) & (w >= 1) & (h >= 1)
        self.num_dropped_boxes = int((~valid).sum())
        boxes = np.stack([x, y, x + w, y + h], axis=1)
        rows, boxes, labels, crowd = rows[valid], boxes[valid], labels[valid], crowd[valid]
        order = np.argsort(rows, kind="stable")
        rows, boxes, labels, crowd = rows[order], boxes[order], labels[order], crowd[order]
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, dtype=np.int64)
        ends = np.r_[starts[1:], len(rows)]
        for s, e in zip(starts, ends):
            out[int(data["images"][rows[s]]["id"])] = (boxes[s:e], labels[s:e], crowd[s:e])
        return out

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.ids)

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The parsed (boxes xyxy, labels, iscrowd) of image ``self.ids[index]`` in original pixels."""
        return self._targets[self.ids[index]]

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.coco.imgs[self.ids[index]]["file_name"]

    def load_image(self, index: int) -> np.ndarray:
        """The image as (H, W, 3) float32 RGB, 0-255; raises :class:`BadSampleError` naming file and id."""
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_path(index)
        try:
            # EXIF orientation is ignored: COCO boxes are drawn on the stored pixel grid.
            img = read_image(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        except FileNotFoundError:
            raise BadSampleError(f"image {image_id}: {path}: file missing (listed in {self.ann_file}); restore it "
                                 f"or {SKIP_HINT}") from None
        except (ImageDecodeError, OSError) as e:
            raise BadSampleError(f"image {image_id}: {path}: {e} (listed in {self.ann_file}); replace the file or "
                                 f"{SKIP_HINT}") from e
        if img.shape[0] != info["height"] or img.shape[1] != info["width"]:
            raise BadSampleError(f"image {image_id}: {path} is {img.shape[1]}x{img.shape[0]} but {self.ann_file} "
                                 f"says {info['width']}x{info['height']}; fix the json or {SKIP_HINT}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32)

    def _get(self, index: int, seed: int | None) -> tuple[torch.Tensor, dict[str, Any]]:
        image = self.load_image(index)
        boxes, labels, crowd = self.annotations(index)
        h, w = image.shape[:2]
        boxes = boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        out = self.transforms(image, boxes, labels, crowd, seed=seed)
        sx, sy = out["scale_factor"]
        target = {
            "boxes": out["boxes"],
            "labels": out["labels"],
            "crowd_boxes": out["crowd_boxes"],
            "image_id": self.ids[index],
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "img_size": torch.tensor(list(out["img_size"]), dtype=torch.int64),
            "scale_factor": torch.tensor([sx, sy], dtype=torch.float32),
        }
        return out["image"], target

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]] | None:
        index, seed = item if isinstance(item, tuple) else (item, None)
        index = int(index)
        if not self.skip_bad_images:
            return self._get(index, seed)
        for attempt in range(min(len(self), _MAX_REPLACEMENTS)):
            j = (index + attempt) % len(self)
            try:
                return self._get(j, seed)
            except BadSampleError as e:
                self.num_bad += 1
                if not self.train:  # evaluation: drop it rather than duplicate another image
                    logger.warning("skipped bad image (%d so far in this process; its ground truth counts as missed "
                                   "in the evaluation): %s", self.num_bad, e)
                    return None
                logger.warning("skipped bad image (%d so far in this process; replaced by the next image): %s",
                               self.num_bad, e)
        raise DataError(f"{self.ann_file}: {_MAX_REPLACEMENTS} consecutive bad images from index {index}; "
                        f"check {self.image_dir}")

    def __repr__(self) -> str:
        return (f"CocoDetection({self.ann_file}, {len(self)} images, {len(self.cat_ids)} classes, "
                f"train={self.train})")

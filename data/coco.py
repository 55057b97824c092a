"""COCO-format detection dataset (pycocotools) with the release's annotation rules (SPEC §6).

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

Bad input (wrong path, empty/invalid json, orphan annotation, malformed box, missing or unreadable
image, image size differing from the json) raises an error naming the file and the image id. With
``skip_bad_images=True`` bad images are warned about, counted and left out (annotation problems, and
files missing at start-up) or replaced by the next good image (decoding failures while training; in
evaluation the sample is returned as ``None`` and dropped by the collate, so no image is duplicated).
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data.transforms import build_normalise_only
from data.coco_index import coco_from_dict

__all__ = ["CocoDetection", "BadSampleError", "load_coco_json"]

logger = logging.getLogger(__name__)
_MAX_REPLACEMENTS = 100


class BadSampleError(RuntimeError):
    """One image cannot be used (missing, unreadable, wrong size); the message names file and image id."""


def load_coco_json(ann_file: str | Path) -> dict:
    """Read a COCO json with errors that name the file; checks the top-level structure only."""
    path = Path(ann_file)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path}: the annotation file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with 'images' and 'categories', got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: missing or invalid '{key}' list (is this a COCO instances file?)")
    if not data["categories"]:
        raise ValueError(f"{path}: 'categories' is empty; a detector needs at least one class")
    cat_ids = [c.get("id") if isinstance(c, dict) else None for c in data["categories"]]
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in cat_ids) or len(set(cat_ids)) != len(cat_ids):
        raise ValueError(f"{path}: every category needs a unique integer 'id', got {cat_ids}")
    if "annotations" in data and not isinstance(data["annotations"], list):
        raise ValueError(f"{path}: 'annotations' must be a list")
    return data


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_box(b: Any) -> bool:
    """A list of 4 finite numbers (fast path: one sum; strings, None or NaN/inf fail)."""
    if type(b) not in (list, tuple) or len(b) != 4:
        return False
    try:
        return math.isfinite(b[0] + b[1] + b[2] + b[3]) and all(type(v) is not bool for v in b)
    except TypeError:
        return False


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
            raise FileNotFoundError(f"image folder not found: {self.image_dir} (images of {self.ann_file})")
        bad_image_ids = self._validate(data)
        if skip_bad_images:
            bad_image_ids |= self._missing_files(data["images"])
            if bad_image_ids:
                data = self._without_images(data, bad_image_ids)
                self.num_bad = len(bad_image_ids)
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
            raise ValueError(f"{self.ann_file}: no usable images (train={train}, filter_empty={filter_empty}, "
                             f"min_size={min_size})")
        self.ids: list[int] = ids
        self.transforms = transforms if transforms is not None else build_normalise_only()

    # ------------------------------------------------------------------ validation
    def _validate(self, data: dict) -> set[int]:
        """Check image records and annotations; return ids of images with bad annotations (skip mode)."""
        src = self.ann_file
        images: dict[int, dict] = {}
        for img in data["images"]:
            iid = img.get("id") if isinstance(img, dict) else None
            if not isinstance(iid, int) or isinstance(iid, bool):
                raise ValueError(f"{src}: image record without an integer 'id': {img!r}")
            if iid in images:
                raise ValueError(f"{src}: duplicate image id {iid}")
            for key in ("file_name", "width", "height"):
                if key not in img:
                    raise ValueError(f"{src}: image {iid} has no '{key}'")
            if not (_is_number(img["width"]) and _is_number(img["height"])):
                raise ValueError(f"{src}: image {iid} ({img['file_name']}) has a non-numeric width/height")
            images[iid] = img
        cats = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
        problems: list[tuple[int | None, str]] = []
        orphans = []
        for ann in data.get("annotations", []):
            if not isinstance(ann, dict) or "image_id" not in ann or "id" not in ann:
                problems.append((None, f"annotation without 'id'/'image_id': {ann!r}"))
                continue
            aid, iid = ann["id"], ann["image_id"]
            if iid not in images:
                orphans.append(ann)
                problems.append((None, f"annotation {aid} points to image id {iid}, which is not in 'images'"))
                continue
            where = f"annotation {aid} of image {iid} ({images[iid]['file_name']})"
            bbox = ann.get("bbox")
            if not _is_box(bbox):
                problems.append((iid, f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r}"))
            elif ann.get("category_id") not in cats:
                problems.append((iid, f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'"))
        if problems and not self.skip_bad_images:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise ValueError(f"{src}: {problems[0][1]}{more}; fix the file or set data.skip_bad_images: true")
        if problems:
            for _, msg in problems[:5]:
                logger.warning("%s: skipped: %s", src, msg)
            logger.warning("%s: %d bad annotations; their images (and orphan annotations) are skipped",
                           src, len(problems))
            orphan_ids = {id(a) for a in orphans}
            data["annotations"] = [a for a in data["annotations"] if id(a) not in orphan_ids and isinstance(a, dict)
                                   and "id" in a and "image_id" in a]
        return {iid for iid, _ in problems if iid is not None}

    def _missing_files(self, images: list[dict]) -> set[int]:
        missing = {int(img["id"]) for img in images if not (self.image_dir / img["file_name"]).is_file()}
        if missing:
            first = next(img for img in images if int(img["id"]) in missing)
            logger.warning("%s: %d image files are missing, e.g. image %d: %s; skipped", self.ann_file, len(missing),
                           first["id"], self.image_dir / first["file_name"])
        return missing

    @staticmethod
    def _without_images(data: dict, image_ids: set[int]) -> dict:
        data = dict(data)
        data["images"] = [img for img in data["images"] if int(img["id"]) not in image_ids]
        if "annotations" in data:
            data["annotations"] = [a for a in data["annotations"] if a["image_id"] not in image_ids]
        return data

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
        # EXIF orientation is ignored: COCO boxes are drawn on the stored pixel grid.
        img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if img is None:
            why = "file missing" if not path.is_file() else "cannot be decoded"
            raise BadSampleError(f"image {image_id}: {path}: {why} (listed in {self.ann_file})")
        if img.shape[0] != info["height"] or img.shape[1] != info["width"]:
            raise BadSampleError(f"image {image_id}: {path} is {img.shape[1]}x{img.shape[0]} but {self.ann_file} "
                                 f"says {info['width']}x{info['height']}")
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
                logger.warning("skipped bad image (%d so far in this process): %s", self.num_bad, e)
                if not self.train:
                    return None  # evaluation: drop it rather than duplicate another image
        raise RuntimeError(f"{self.ann_file}: {_MAX_REPLACEMENTS} consecutive bad images from index {index}; "
                           f"check {self.image_dir}")

    def __repr__(self) -> str:
        return (f"CocoDetection({self.ann_file}, {len(self)} images, {len(self.cat_ids)} classes, "
                f"train={self.train})")

"""The one validator of COCO-format annotation files, shared by the training/validation datasets
(:class:`data.coco.CocoDetection`) and the ground truth that ``evaluate.py`` scores against.

Every problem is reported with the file, the image id and/or annotation id, and what to do:

* file level (always fatal): not found, empty, not JSON, not an object, no ``images``/``categories`` list,
  no category, category ids not unique integers, duplicate or non-integer image ids;
* per image (fatal, or the image is skipped with ``skip_bad=True``): image record without ``file_name`` or with a
  non-positive width/height; an annotation with a non-integer id or id < 1 (pycocotools keeps 0 for
  "unmatched": an annotation with id 0 is silently never matched), an annotation id used twice (the COCO index
  keeps one of them: evaluation silently loses the others), a bbox that is not 4 finite numbers, an undeclared
  category, a non-0/1 ``iscrowd``, a non-numeric ``area`` (or none, in a file only scored against:
  ``scoring=True``);
* per annotation (fatal, or the annotation is dropped with ``skip_bad=True``): not an object, no
  ``id``/``image_id``, an ``image_id`` that is not in ``images``.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detector.errors import DataError

__all__ = ["AnnotationError", "DataFileNotFoundError", "CocoCheck", "load_coco_json", "check_structure",
           "validate_coco", "apply_check", "SKIP_HINT"]

logger = logging.getLogger(__name__)

SKIP_HINT = "fix the file, or set data.skip_bad_images=true to skip such images"
_LISTED = 5


class AnnotationError(DataError, ValueError):
    """An annotation file is unusable as it is; the message names the file, the image/annotation id and the fix."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """An annotation file or image folder named by the config does not exist."""


@dataclass
class CocoCheck:
    """What :func:`validate_coco` found: problems (one line each) and what skipping them removes."""
    problems: list[str] = field(default_factory=list)
    bad_image_ids: set[int] = field(default_factory=set)  # images to skip (their annotations go with them)
    bad_annotations: list[int] = field(default_factory=list)  # positions in 'annotations' to drop (orphans, ...)


def load_coco_json(ann_file: str | Path) -> dict:
    """Read a COCO json with errors that name the file; checks the top-level structure only."""
    path = Path(ann_file)
    if not path.is_file():
        raise DataFileNotFoundError(f"annotation file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise AnnotationError(f"{path}: the annotation file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from e
    check_structure(data, path)
    return data


def check_structure(data: Any, source: str | Path) -> None:
    """The top level of a COCO dict: ``images`` and ``categories`` lists, unique integer category ids."""
    if not isinstance(data, dict):
        raise AnnotationError(f"{source}: expected a JSON object with 'images' and 'categories', got "
                              f"{type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{source}: missing or invalid '{key}' list (is this a COCO instances file?)")
    if not data["categories"]:
        raise AnnotationError(f"{source}: 'categories' is empty; a detector needs at least one class")
    cat_ids = [c.get("id") if isinstance(c, dict) else None for c in data["categories"]]
    if not all(_is_int(c) for c in cat_ids) or len(set(cat_ids)) != len(cat_ids):
        raise AnnotationError(f"{source}: every category needs a unique integer 'id', got {cat_ids}")
    if "annotations" in data and not isinstance(data["annotations"], list):
        raise AnnotationError(f"{source}: 'annotations' must be a list")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


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


def _check_images(data: dict, source: str, check: CocoCheck, image_files: bool) -> dict[int, dict]:
    images: dict[int, dict] = {}
    for i, img in enumerate(data["images"]):
        iid = img.get("id") if isinstance(img, dict) else None
        if not _is_int(iid):
            raise AnnotationError(f"{source}: image record #{i} has no integer 'id': {img!r}; every image needs one")
        if iid in images:
            raise AnnotationError(f"{source}: duplicate image id {iid} (records {images[iid].get('file_name')!r} and "
                                  f"{img.get('file_name')!r}); image ids must be unique")
        images[iid] = img
        if not image_files:
            continue
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            check.problems.append(f"image {iid} has no 'file_name'")
            check.bad_image_ids.add(iid)
        elif not (_is_number(img.get("width")) and _is_number(img.get("height"))
                  and img["width"] > 0 and img["height"] > 0):
            check.problems.append(f"image {iid} ({name}) needs a positive numeric 'width' and 'height', got "
                                  f"{img.get('width')!r} x {img.get('height')!r}")
            check.bad_image_ids.add(iid)
    return images


def validate_coco(data: dict, source: str | Path, *, skip_bad: bool = False, scoring: bool = False,
                  hint: str = SKIP_HINT) -> CocoCheck:
    """Check a loaded COCO dict; raise :class:`AnnotationError` on the first problem unless ``skip_bad``.

    With ``skip_bad`` the returned :class:`CocoCheck` lists the images to skip and the annotations to drop (see
    :func:`apply_check`). ``scoring``: the file is only ground truth to score detections against (results-file
    mode): ``annotations`` and each annotation's ``area`` are required, image records need only their id.
    """
    source = str(source)
    if scoring and isinstance(data, dict) and "annotations" not in data:
        raise AnnotationError(f"{source}: the annotation file lacks ['annotations'] (a test-dev 'image_info' file "
                              f"has no annotations and cannot be scored)")
    check_structure(data, source)
    check = CocoCheck()
    images = _check_images(data, source, check, image_files=not scoring)
    cats = {c["id"] for c in data["categories"]}
    anns = data.get("annotations", [])
    id_count = Counter(a.get("id") for a in anns if isinstance(a, dict))
    for pos, ann in enumerate(anns):
        if not isinstance(ann, dict) or "image_id" not in ann or "id" not in ann:
            check.problems.append(f"annotation #{pos} has no 'id'/'image_id': {ann!r}")
            check.bad_annotations.append(pos)
            continue
        aid, iid = ann["id"], ann["image_id"]
        if iid not in images:
            check.problems.append(f"annotation {aid} points to image id {iid!r}, which is not in 'images'")
            check.bad_annotations.append(pos)
            continue
        name = images[iid].get("file_name")
        where = f"annotation {aid} of image {iid}" + (f" ({name})" if name else "")
        problem = None
        lacking = [k for k in ("category_id", "bbox", "area") if k not in ann] if scoring else []
        if lacking:
            problem = f"{where}: lacks {lacking} (COCO evaluation needs them; 'area' sorts boxes by size)"
        elif not _is_int(aid) or aid < 1:
            problem = f"{where}: annotation ids must be integers >= 1 (pycocotools uses 0 for 'unmatched')"
        elif id_count[aid] > 1:
            problem = f"{where}: annotation id {aid} is used {id_count[aid]} times; annotation ids must be unique"
        elif not _is_box(ann.get("bbox")):
            problem = f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {ann.get('bbox')!r}"
        elif ann.get("category_id") not in cats or isinstance(ann.get("category_id"), bool):
            problem = f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'"
        elif ann.get("iscrowd", 0) not in (0, 1):
            problem = f"{where}: 'iscrowd' must be 0 or 1, got {ann.get('iscrowd')!r}"
        elif "area" in ann and not _is_number(ann["area"]):
            problem = f"{where}: 'area' must be a finite number, got {ann['area']!r}"
        if problem is not None:
            check.problems.append(problem)
            check.bad_image_ids.add(iid)
    if check.problems and not skip_bad:
        more = f" (and {len(check.problems) - 1} more problems)" if len(check.problems) > 1 else ""
        raise AnnotationError(f"{source}: {check.problems[0]}{more}; {hint}")
    if check.problems:
        for msg in check.problems[:_LISTED]:
            logger.warning("%s: skipped: %s", source, msg)
        logger.warning("%s: %d problems: %d images skipped, %d annotations dropped (data.skip_bad_images)", source,
                       len(check.problems), len(check.bad_image_ids), len(check.bad_annotations))
    return check


def apply_check(data: dict, check: CocoCheck) -> dict:
    """A shallow copy of ``data`` without the images and annotations ``check`` marked as bad."""
    if not check.bad_image_ids and not check.bad_annotations:
        return data
    out = dict(data)
    out["images"] = [img for img in data["images"] if img["id"] not in check.bad_image_ids]
    if "annotations" in data:
        dropped = set(check.bad_annotations)
        out["annotations"] = [a for pos, a in enumerate(data["annotations"])
                              if pos not in dropped and a["image_id"] not in check.bad_image_ids]
    return out

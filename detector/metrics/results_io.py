"""Reading, validating and writing COCO detection results and ground-truth files.

Results are the COCO "bbox" results format: a JSON list of
``{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}``.
pycocotools' own checks are asserts with terse messages (or none at all), so every problem is caught
here first and reported with the file, the detection's index and the offending image/category id.
"""
from __future__ import annotations

import contextlib
import json
import math
import numbers
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from pycocotools.coco import COCO

from data.coco_index import coco_from_dict
from data.validate import AnnotationError, validate_coco

__all__ = ["ResultsFormatError", "coco_from_dict", "load_gt", "load_results", "validate_results", "write_results",
           "write_zip"]

_RESULT_KEYS = ("image_id", "category_id", "bbox", "score")
_MAX_LISTED = 10


class ResultsFormatError(ValueError):
    """A results or annotation file is missing, malformed or does not fit the annotation file."""


def _listed(ids: list[Any]) -> str:
    ids = sorted(ids, key=str)
    more = f" (and {len(ids) - _MAX_LISTED} more)" if len(ids) > _MAX_LISTED else ""
    return ", ".join(str(i) for i in ids[:_MAX_LISTED]) + more


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise ResultsFormatError(f"{path}: {what} not found")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ResultsFormatError(f"{path}: {what} is empty (0 bytes of JSON)")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsFormatError(f"{path}: {what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})")


def load_gt(path: str | Path) -> COCO:
    """Load a COCO instances file as a pycocotools ``COCO`` object, with clear errors for broken files.

    Annotation ids must be >= 1 because pycocotools stores matches as ids with 0 meaning "unmatched".
    """
    path = Path(path)
    data = _read_json(path, "annotation file")
    if not isinstance(data, dict):
        raise ResultsFormatError(f"{path}: an annotation file must be a JSON object with 'images', 'annotations' "
                                 f"and 'categories', got a {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise ResultsFormatError(f"{path}: the annotation file lacks {missing} (a test-dev 'image_info' file has no "
                                 f"annotations and cannot be scored)")
    try:  # the validator the datasets use: ids unique and >= 1, boxes, categories, area
        validate_coco(data, path, scoring=True, hint="fix the annotation file")
    except AnnotationError as e:
        raise ResultsFormatError(str(e)) from e
    return coco_from_dict(data)


def _finite_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _check_one(det: Any, i: int, source: str) -> dict:
    """One detection as a clean dict of Python scalars, or a ResultsFormatError naming it."""
    if not isinstance(det, dict):
        raise ResultsFormatError(f"{source}: detection #{i} must be an object with keys {list(_RESULT_KEYS)}, "
                                 f"got {type(det).__name__}")
    where = f"{source}: detection #{i} (image_id {det.get('image_id')!r}, category_id {det.get('category_id')!r})"
    lacking = [k for k in _RESULT_KEYS if k not in det]
    if lacking:
        raise ResultsFormatError(f"{where} lacks key(s) {lacking}; each detection needs {list(_RESULT_KEYS)}")
    for key in ("image_id", "category_id"):
        if not isinstance(det[key], numbers.Integral) or isinstance(det[key], bool):
            raise ResultsFormatError(f"{where}: '{key}' must be an integer, got {det[key]!r}")
    box = det["bbox"]
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_finite_number(v) for v in box):
        raise ResultsFormatError(f"{where}: 'bbox' must be [x, y, w, h] with 4 finite numbers, got {box!r}")
    if box[2] < 0 or box[3] < 0:
        raise ResultsFormatError(f"{where}: 'bbox' {box!r} has a negative width or height (COCO boxes are x, y, w, h)")
    if not _finite_number(det["score"]):
        raise ResultsFormatError(f"{where}: 'score' must be a finite number, got {det['score']!r}")
    return {"image_id": int(det["image_id"]), "category_id": int(det["category_id"]),
            "bbox": [float(v) for v in box], "score": float(det["score"])}


def validate_results(results: Any, coco_gt: COCO, source: str = "<results>", allow_empty: bool = True) -> list[dict]:
    """Check a list of COCO results against ``coco_gt``; returns clean copies (pycocotools mutates its input).

    Raises ResultsFormatError naming ``source`` and the offending detection, image ids or category ids.
    """
    if isinstance(results, dict):
        hint = " (this looks like an annotation file; pass the detections list)" if "annotations" in results else ""
        raise ResultsFormatError(f"{source}: results must be a JSON list of detections, got an object{hint}")
    if not isinstance(results, (list, tuple)):
        raise ResultsFormatError(f"{source}: results must be a JSON list of detections, got {type(results).__name__}")
    if not results and not allow_empty:
        raise ResultsFormatError(f"{source}: the results file contains no detections (an empty list)")
    clean = [_check_one(det, i, source) for i, det in enumerate(results)]
    bad_imgs = {d["image_id"] for d in clean} - set(coco_gt.getImgIds())
    if bad_imgs:
        raise ResultsFormatError(f"{source}: {len(bad_imgs)} image id(s) are not in the annotation file: "
                                 f"{_listed(list(bad_imgs))}")
    bad_cats = {d["category_id"] for d in clean} - set(coco_gt.getCatIds())
    if bad_cats:
        raise ResultsFormatError(f"{source}: category id(s) not declared in the annotation file: "
                                 f"{_listed(list(bad_cats))} (declared: {_listed(coco_gt.getCatIds())})")
    return clean


def load_results(path: str | Path, coco_gt: COCO, allow_empty: bool = False) -> list[dict]:
    """Read and validate a results json; an empty list is an error unless ``allow_empty``."""
    path = Path(path)
    return validate_results(_read_json(path, "results file"), coco_gt, str(path), allow_empty=allow_empty)


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_results(results: list[dict] | dict, path: str | Path, indent: int | None = None) -> Path:
    """Write COCO results (or any JSON-able object) atomically: a reader never sees a half-written file.

    NaN/inf are rejected (ValueError) rather than written as the non-standard ``NaN`` token.
    """
    path = Path(path)
    separators = (",", ":") if indent is None else (",", ": ")
    data = json.dumps(results, indent=indent, separators=separators, allow_nan=False).encode("utf-8")
    _atomic_write(path, lambda f: f.write(data))
    return path


def write_zip(json_path: str | Path, zip_path: str | Path | None = None) -> Path:
    """Zip one file (stored under its own name at the archive root), as the COCO server expects; atomic."""
    json_path = Path(json_path)
    zip_path = Path(zip_path) if zip_path is not None else json_path.with_suffix(".zip")

    def _write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(json_path, arcname=json_path.name)

    _atomic_write(zip_path, _write)
    return zip_path

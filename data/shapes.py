"""The built-in synthetic "shapes" dataset (COCO format), generated once and reused.

Four classes (circle, square, triangle, cross; category ids 1..4) of flat-coloured shapes from about
9% to 50% of the image side, on noisy gradient backgrounds with faint line clutter. Shapes may overlap
(an earlier shape is at most 35% covered by a later one; its box stays the full, amodal extent) and
about 7% of the images are empty. Everything is a pure function of the parameters: each image draws
from ``numpy.random.default_rng([seed, split, index])``.

Layout under ``root``: ``images/{train,val}_NNNNN.png``, ``annotations/instances_{train,val}.json``,
``shapes_meta.json`` (the parameters). The folder is written to a temporary sibling and renamed into
place, so an interrupted generation never leaves a half-written dataset behind.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from detector.errors import ConfigError

__all__ = ["CLASSES", "ensure_shapes_dataset", "generate_shapes_dataset"]

CLASSES = ("circle", "square", "triangle", "cross")
_META = "shapes_meta.json"
_VERSION = 1
_EMPTY_PROB = 0.07
_MAX_COVER = 0.35  # an existing shape may be covered by at most this fraction of its box


def _params(num_train: int, num_val: int, image_size: int, seed: int) -> dict:
    return {"generator_version": _VERSION, "num_train": num_train, "num_val": num_val, "image_size": image_size,
            "seed": seed}


def ensure_shapes_dataset(root: str | Path, num_train: int = 300, num_val: int = 60, image_size: int = 128,
                          seed: int = 0) -> Path:
    """Generate the dataset into ``root`` unless it is already there with the same parameters.

    Returns:
        ``root`` as a Path. Raises ConfigError (a ValueError) if ``root`` is a non-empty folder that is not a
        shapes set.
    """
    root = Path(root)
    params = _params(num_train, num_val, image_size, seed)
    if _read_meta(root) == params:
        return root
    if root.exists() and not (root / _META).is_file() and any(root.iterdir()):
        raise ConfigError(f"data.root: {root} exists and is not a generated shapes dataset; "
                          f"point data.root at an empty or new folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        generate_shapes_dataset(tmp, num_train, num_val, image_size, seed)
        old = None
        if (root / _META).is_file():  # stale parameters: move the old set aside, then swap
            old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(root, old)
        elif root.is_dir():
            root.rmdir()  # empty
        try:
            os.rename(tmp, root)
        except OSError:
            if _read_meta(root) != params:  # another process won the race with other parameters
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _read_meta(root: Path) -> dict | None:
    try:
        return json.loads((root / _META).read_text())
    except (OSError, ValueError):
        return None


def generate_shapes_dataset(out_dir: str | Path, num_train: int, num_val: int, image_size: int, seed: int) -> None:
    """Write the whole dataset into ``out_dir`` (which must not exist yet)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True)
    (out / "annotations").mkdir()
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
    next_image_id, next_ann_id = 1, 1
    for split_code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        images, anns = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_code, i])
            pixels, objects = _draw_image(rng, image_size)
            name = f"{split}_{i:05d}.png"
            Image.fromarray(pixels).save(out / "images" / name, compress_level=1)
            images.append({"id": next_image_id, "file_name": name, "width": image_size, "height": image_size})
            for cls, (x, y, w, h), area in objects:
                anns.append({"id": next_ann_id, "image_id": next_image_id, "category_id": cls + 1,
                             "bbox": [float(x), float(y), float(w), float(h)], "area": float(area), "iscrowd": 0})
                next_ann_id += 1
            next_image_id += 1
        data = {"info": {"description": f"synthetic shapes ({split})", "version": str(_VERSION)},
                "licenses": [{"id": 1, "name": "CC0 1.0 (generated)", "url": ""}],
                "images": images, "annotations": anns, "categories": categories}
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    (out / _META).write_text(json.dumps(_params(num_train, num_val, image_size, seed)))


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient between two random colours, plus faint lines; float32 (size, size, 3)."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    t = (math.cos(angle) * xx + math.sin(angle) * yy)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    bg = c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]
    img = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 7))):
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        base = np.asarray(img.getpixel(pts[0]), dtype=np.float64)
        colour = tuple(int(v) for v in (base + rng.uniform(-35, 35, 3)).clip(0, 255))
        draw.line(pts, fill=colour, width=1)
    return np.asarray(img, dtype=np.float32)


def _shape_colour(rng: np.random.Generator, bg_mean: np.ndarray) -> tuple[int, int, int]:
    """A colour far (L1 >= 180) from the local background, so every shape stays visible."""
    best, best_d = None, -1.0
    for _ in range(20):
        c = rng.uniform(0, 255, 3)
        d = float(np.abs(c - bg_mean).sum())
        if d > best_d:
            best, best_d = c, d
        if d >= 180:
            break
    return tuple(int(v) for v in best)


def _draw_shape(draw: ImageDraw.ImageDraw, cls: int, x: int, y: int, w: int, h: int, colour: tuple,
                rng: np.random.Generator) -> float:
    """Draw one shape filling the pixel box [x, x+w) x [y, y+h); return its geometric area."""
    x1, y1 = x + w - 1, y + h - 1
    if cls == 0:
        draw.ellipse([x, y, x1, y1], fill=colour)
        return math.pi * w * h / 4
    if cls == 1:
        draw.rectangle([x, y, x1, y1], fill=colour)
        return float(w * h)
    if cls == 2:
        if rng.random() < 0.5:  # apex up or down
            pts = [(x + (w - 1) / 2, y), (x, y1), (x1, y1)]
        else:
            pts = [(x, y), (x1, y), (x + (w - 1) / 2, y1)]
        draw.polygon(pts, fill=colour)
        return w * h / 2
    t = max(2, round(min(w, h) / 3))
    cy, cx = y + (h - t) // 2, x + (w - t) // 2
    draw.rectangle([x, cy, x1, cy + t - 1], fill=colour)
    draw.rectangle([cx, y, cx + t - 1, y1], fill=colour)
    return float(w * t + h * t - t * t)


def _cover(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Fraction of box a (x, y, w, h) covered by box b."""
    iw = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return iw * ih / (a[2] * a[3])


def _draw_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list]:
    """One image (size, size, 3) uint8 and its objects [(class, (x, y, w, h), area)]."""
    bg = _background(rng, size)
    img = Image.fromarray(bg.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    n = 0 if rng.random() < _EMPTY_PROB else int(rng.choice([1, 2, 3, 4, 5], p=[0.2, 0.3, 0.25, 0.15, 0.1]))
    objects: list = []
    lo, hi = math.log(max(8, 0.09 * size)), math.log(0.5 * size)
    for _ in range(n):
        cls = int(rng.integers(len(CLASSES)))
        for _attempt in range(20):
            w = int(round(math.exp(rng.uniform(lo, hi))))
            h = w if cls != 2 else max(4, int(round(w * rng.uniform(0.8, 1.0))))
            x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = (x, y, w, h)
            if all(_cover(o[1], box) <= _MAX_COVER and _cover(box, o[1]) < 1.0 for o in objects):
                break
        else:
            continue
        local = bg[y:y + h, x:x + w].reshape(-1, 3).mean(0)
        area = _draw_shape(draw, cls, x, y, w, h, _shape_colour(rng, local), rng)
        objects.append((cls, box, area))
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(2, 8), (size, size, 3))
    return pixels.clip(0, 255).astype(np.uint8), objects

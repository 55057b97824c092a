"""Drawing detections (class name and score) and ground truth onto a PIL image; shared by ``predict.py`` and
``scripts/visualize.py``.

Detections get one colour per category id, with a "name score" label inside the box's top-left corner (so it
never leaves the image); ground-truth boxes are drawn in green underneath (crowd regions thinner, dark green).
"""
from __future__ import annotations

import colorsys

from PIL import Image, ImageDraw, ImageFont

__all__ = ["GT_COLOR", "CROWD_COLOR", "class_color", "draw_detections"]

GT_COLOR = (0, 230, 0)
CROWD_COLOR = (0, 120, 0)


def class_color(cat_id: int) -> tuple[int, int, int]:
    """A stable, well-spread colour per category id (golden-ratio hue steps; never pure green)."""
    hue = (cat_id * 0.6180339887) % 1.0
    if abs(hue - 1 / 3) < 0.06:  # keep clear of the ground-truth green
        hue = (hue + 0.15) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: Image.Image, dets: list[dict], names: dict[int, str], gts: list[dict] | None = None,
                    score_thr: float = 0.3) -> Image.Image:
    """A copy of ``image`` with GT boxes (if given) and the detections scoring >= ``score_thr`` drawn on it.

    ``dets`` and ``gts`` are COCO-style dicts (``bbox`` = [x, y, w, h], ``category_id``, ``score``); ``names``
    maps category ids to the label text.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    width = max(1, round(min(out.size) / 250))
    font = ImageFont.load_default()
    for g in gts or []:
        x, y, w, h = g["bbox"]
        crowd = bool(g.get("iscrowd", 0))
        draw.rectangle([x, y, x + w, y + h], outline=CROWD_COLOR if crowd else GT_COLOR,
                       width=max(1, width - 1) if crowd else width)
    for d in sorted(dets, key=lambda d: d["score"]):  # highest score drawn last, on top
        if d["score"] < score_thr:
            continue
        x, y, w, h = d["bbox"]
        color = class_color(d["category_id"])
        draw.rectangle([x, y, x + w, y + h], outline=color, width=width)
        label = f"{names.get(d['category_id'], d['category_id'])} {d['score']:.2f}"
        l, t, r, b = draw.textbbox((0, 0), label, font=font)
        tx, ty = x + width, y + width
        draw.rectangle([tx, ty, tx + (r - l) + 2, ty + (b - t) + 2], fill=color)
        dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 140
        draw.text((tx + 1 - l, ty + 1 - t), label, fill=(255, 255, 255) if dark else (0, 0, 0), font=font)
    return out

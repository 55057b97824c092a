#!/usr/bin/env python
"""Convert a Pascal VOC folder (Annotations/*.xml, JPEGImages/, ImageSets/Main/<split>.txt) to COCO json.

Conventions:
* VOC boxes are 1-based inclusive pixel indices; COCO boxes are continuous:
  ``x = xmin - 1, y = ymin - 1, w = xmax - xmin + 1, h = ymax - ymin + 1`` (clipped to the image).
  Boxes with ``xmax <= xmin`` or ``ymax <= ymin`` are dropped and counted.
* ``difficult=1`` objects become ``iscrowd=1``: ignored in training (our reader keeps crowd boxes out
  of the targets) and in evaluation (pycocotools does not count detections matched to them, nor
  misses of them), which is what VOC's own evaluation does with difficult objects.
* Categories get ids 1..K in the order of ``--classes`` (or the sorted names found in the split).
* ``file_name`` is relative to the image folder (JPEGImages by default); use it as the image dir.

Example:
    python -m scripts.voc_to_coco /data/VOC2007 --split trainval --out /data/VOC2007/instances_trainval.json
then train with ``data.root=/data/VOC2007 data.train_ann=instances_trainval.json data.train_images=JPEGImages``.
"""
from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image

_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


def _read_split(voc_root: Path, split: str) -> list[str]:
    path = voc_root / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _parse_xml(path: Path) -> ET.Element:
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as e:
        raise ValueError(f"{path}: invalid XML ({e})") from e


def _find_image(image_dir: Path, stem: str, filename: str | None) -> Path:
    candidates = ([image_dir / filename] if filename else []) + [image_dir / (stem + ext) for ext in _IMAGE_EXTS]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"image of {stem} not found in {image_dir} (tried {', '.join(c.name for c in candidates)})")


def _number(obj: ET.Element, key: str, xml_path: Path) -> float:
    text = obj.findtext(f"bndbox/{key}")
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ValueError(f"{xml_path}: object '{obj.findtext('name')}' has a bad bndbox/{key}: {text!r}") from None


def discover_classes(voc_root: str | Path, split: str) -> list[str]:
    """Sorted object names found in the split's XML files."""
    voc_root = Path(voc_root)
    names = set()
    for stem in _read_split(voc_root, split):
        for obj in _parse_xml(voc_root / "Annotations" / f"{stem}.xml").findall("object"):
            names.add((obj.findtext("name") or "").strip())
    return sorted(n for n in names if n)


def convert_voc(voc_root: str | Path, split: str, classes: list[str] | None = None,
                image_dir: str = "JPEGImages") -> dict:
    """The COCO dict of one VOC split; raises errors naming the XML/image file on bad input."""
    voc_root = Path(voc_root)
    img_root = voc_root / image_dir
    classes = list(classes) if classes else discover_classes(voc_root, split)
    cat_id = {name: i + 1 for i, name in enumerate(classes)}
    images, anns, dropped = [], [], 0
    for image_id, stem in enumerate(_read_split(voc_root, split), start=1):
        xml_path = voc_root / "Annotations" / f"{stem}.xml"
        root = _parse_xml(xml_path)
        img_path = _find_image(img_root, stem, (root.findtext("filename") or "").strip() or None)
        w, h = int(float(root.findtext("size/width") or 0)), int(float(root.findtext("size/height") or 0))
        if w <= 0 or h <= 0:
            with Image.open(img_path) as im:
                w, h = im.size
        images.append({"id": image_id, "file_name": img_path.relative_to(img_root).as_posix(), "width": w,
                       "height": h})
        for obj in root.findall("object"):
            name = (obj.findtext("name") or "").strip()
            if name not in cat_id:
                raise ValueError(f"{xml_path}: class '{name}' is not in the class list {classes}")
            xmin, ymin, xmax, ymax = (_number(obj, k, xml_path) for k in ("xmin", "ymin", "xmax", "ymax"))
            if xmax <= xmin or ymax <= ymin:
                dropped += 1
                continue
            x1, y1 = max(xmin - 1.0, 0.0), max(ymin - 1.0, 0.0)
            x2, y2 = min(xmax, float(w)), min(ymax, float(h))
            if x2 <= x1 or y2 <= y1:
                dropped += 1
                continue
            difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat_id[name],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": int(difficult)})
    if dropped:
        print(f"voc_to_coco: dropped {dropped} degenerate boxes (xmax <= xmin or ymax <= ymin)", file=sys.stderr)
    return {"info": {"description": f"converted from Pascal VOC {voc_root.name} {split}"},
            "images": images, "annotations": anns,
            "categories": [{"id": i, "name": n, "supercategory": "none"} for n, i in cat_id.items()]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.voc_to_coco", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("voc_root", help="folder with Annotations/, JPEGImages/ and ImageSets/Main/")
    p.add_argument("--split", default="trainval", help="name of ImageSets/Main/<split>.txt (default: trainval)")
    p.add_argument("--out", required=True, help="output json path")
    p.add_argument("--classes", default=None,
                   help="comma-separated class names fixing the category ids 1..K (default: sorted names found)")
    p.add_argument("--image-dir", default="JPEGImages", help="image folder under voc_root (default: JPEGImages)")
    args = p.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    data = convert_voc(args.voc_root, args.split, classes, args.image_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))
    crowd = sum(a["iscrowd"] for a in data["annotations"])
    print(f"{out}: {len(data['images'])} images, {len(data['annotations'])} boxes ({crowd} difficult -> iscrowd), "
          f"{len(data['categories'])} classes: {', '.join(c['name'] for c in data['categories'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
r"""Draw detections (class name and score) and, optionally, the ground truth onto images and save PNGs.

From a results json (the annotation/image-info json gives file names and class names):

    python scripts/visualize.py --results dets.json --ann-file instances_val2017.json --images val2017/ \
        [--show-gt] [--score-thr 0.3] [--max-images 20] [--output-dir vis/]

From a checkpoint (runs the same inference as evaluate.py):

    python scripts/visualize.py --config CFG --checkpoint CKPT [--split minival|test-dev] [--max-images 20] \
        [key=value ...]

Detections get one colour per class, with a "name score" label inside the box's top-left corner; ground-truth
boxes are drawn in green underneath (crowd regions thinner, in dark green).
"""
from __future__ import annotations

import argparse
import colorsys
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from detector.metrics import ResultsFormatError, load_gt, load_results  # noqa: E402

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
    """A copy of ``image`` with GT boxes (if given) and the detections scoring >= ``score_thr`` drawn on it."""
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
        tx, ty = x + width, y + width  # inside the box's top-left corner, so it never leaves the image
        draw.rectangle([tx, ty, tx + (r - l) + 2, ty + (b - t) + 2], fill=color)
        dark = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] < 140
        draw.text((tx + 1 - l, ty + 1 - t), label, fill=(255, 255, 255) if dark else (0, 0, 0), font=font)
    return out


def visualize(coco, results: list[dict], image_dir: Path, out_dir: Path, show_gt: bool = False,
              score_thr: float = 0.3, image_ids: list[int] | None = None, max_images: int | None = None,
              class_names: dict[int, str] | None = None) -> list[Path]:
    """Draw ``results`` on the images of ``coco`` (those in ``image_ids``, else all) and save one PNG per image."""
    names = {c: str(cat.get("name", c)) for c, cat in coco.cats.items()}
    names.update(class_names or {})
    ids = sorted(coco.getImgIds()) if image_ids is None else list(image_ids)
    unknown = [i for i in ids if i not in coco.imgs]
    if unknown:
        raise ValueError(f"image id(s) not in the annotation file: {unknown[:10]}")
    ids = ids[:max_images] if max_images is not None else ids
    by_image: dict[int, list[dict]] = {}
    for d in results:
        by_image.setdefault(d["image_id"], []).append(d)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for img_id in ids:
        info = coco.imgs[img_id]
        path = image_dir / info["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"image {img_id}: {path} not found (check --images)")
        gts = coco.loadAnns(coco.getAnnIds(imgIds=[img_id])) if show_gt else None
        with Image.open(path) as im:
            drawn = draw_detections(im, by_image.get(img_id, []), names, gts, score_thr)
        target = out_dir / f"{Path(info['file_name']).stem}.png"
        drawn.save(target)
        written.append(target)
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="visualize.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("from a results json")
    src.add_argument("--results", type=Path, help="COCO results json (list of image_id, category_id, bbox, score)")
    src.add_argument("--ann-file", type=Path, help="COCO annotation (or test-dev image_info) json: file names, class "
                     "names and, with --show-gt, the ground truth; in checkpoint mode it defaults to the split's")
    mod = p.add_argument_group("from a checkpoint")
    mod.add_argument("--config", type=Path, help="experiment YAML config")
    mod.add_argument("--checkpoint", type=Path, help="checkpoint whose model is run")
    mod.add_argument("--split", choices=("minival", "test-dev"), default="minival", help="images to run on")
    mod.add_argument("--device", choices=("cpu", "cuda"), default=None, help="device (default: the config's)")
    mod.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted.key=value)")
    p.add_argument("--images", type=Path, default=None,
                   help="image folder (required with --results; checkpoint mode: the dataset's own folder)")
    p.add_argument("--output-dir", type=Path, default=Path("vis"), help="where PNGs are written (default: vis/)")
    p.add_argument("--show-gt", action="store_true", help="also draw the ground-truth boxes (green; crowd dark green)")
    p.add_argument("--score-thr", type=float, default=0.3, help="draw detections scoring at least this (default 0.3)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="draw the first N images only")
    p.add_argument("--image-ids", type=int, nargs="+", default=None, metavar="ID", help="draw these image ids only")
    return p


def _from_checkpoint(args: argparse.Namespace):
    """(coco, results, image_dir, names, image ids) from running the checkpoint on the split (evaluate.py's code)."""
    from detector.config import load_config
    from evaluate import run_model_inference

    cfg = load_config(args.config, args.overrides)
    results, dataset = run_model_inference(cfg, args.checkpoint, args.split, args.device, args.max_images)
    coco = load_gt(args.ann_file) if args.ann_file else dataset.coco
    images = args.images if args.images is not None else Path(dataset.image_dir)
    ids = args.image_ids or [int(i) for i in dataset.ids[:args.max_images or len(dataset.ids)]]
    return coco, results, images, dict(zip(dataset.label_to_cat_id, dataset.class_names)), ids


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.results is None) == (args.config is None):
        parser.error("give either --results with --ann-file and --images, or --config with --checkpoint")
    try:
        if args.results is not None:
            if args.ann_file is None or args.images is None:
                parser.error("--results needs --ann-file (file and class names) and --images (the image folder)")
            coco = load_gt(args.ann_file) if args.show_gt else _load_image_info(args.ann_file)
            results, images, names = load_results(args.results, coco, allow_empty=True), args.images, None
            ids = args.image_ids
        else:
            if args.checkpoint is None:
                parser.error("--config needs --checkpoint")
            from detector.distributed import is_main_process
            coco, results, images, names, ids = _from_checkpoint(args)
            if not is_main_process():
                return 0
        written = visualize(coco, results, images, args.output_dir, show_gt=args.show_gt, score_thr=args.score_thr,
                            image_ids=ids, max_images=args.max_images, class_names=names)
    except (ResultsFormatError, ValueError, OSError) as e:
        print(f"visualize.py: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(written)} image(s) written to {args.output_dir}")
    return 0


def _load_image_info(path: Path):
    """A COCO object from an annotation or image-info json (annotations optional: only file/class names needed)."""
    from data.coco import load_coco_json
    from detector.metrics.results_io import coco_from_dict

    data = load_coco_json(path)  # errors name the file (FileNotFoundError / ValueError)
    data.setdefault("annotations", [])
    return coco_from_dict(data)


if __name__ == "__main__":
    sys.exit(main())

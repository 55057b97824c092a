#!/usr/bin/env python
r"""Draw detections (class name and score) and, optionally, the ground truth onto images and save PNGs.

From a results json (the annotation/image-info json gives file names and class names):

    python -m scripts.visualize --results dets.json --ann-file instances_val2017.json --images val2017/ \
        [--show-gt] [--score-thr 0.3] [--max-images 20] [--output-dir vis/]

From a checkpoint or a release file (runs the same inference as evaluate.py):

    python -m scripts.visualize --checkpoint CKPT [--config CFG] [--split val|test|minival|test-dev] \
        [--max-images 20] [key=value ...]

Detections get one colour per class, with a "name score" label inside the box's top-left corner; ground-truth
boxes are drawn in green underneath (crowd regions thinner, in dark green). The drawing is ``detector.draw``'s,
which ``predict.py --draw`` uses too.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from detector.cli import run_cli
from detector.draw import CROWD_COLOR, GT_COLOR, class_color, draw_detections  # noqa: F401 - re-exported
from detector.errors import DataError, UserError
from detector.metrics import load_gt, load_results


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
    p = argparse.ArgumentParser(prog="python -m scripts.visualize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("from a results json")
    src.add_argument("--results", type=Path, help="COCO results json (list of image_id, category_id, bbox, score)")
    src.add_argument("--ann-file", type=Path, help="COCO annotation (or test-dev image_info) json: file names, class "
                     "names and, with --show-gt, the ground truth; in checkpoint mode it defaults to the split's")
    mod = p.add_argument_group("from a checkpoint")
    mod.add_argument("--checkpoint", type=Path, help="training checkpoint or release file whose model is run")
    mod.add_argument("--config", type=Path, help="YAML config replacing the one stored in the checkpoint")
    mod.add_argument("--split", choices=("val", "test", "minival", "test-dev"), default="val",
                     help="images to run on (default val; minival = val, test-dev = test)")
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
    from evaluate import run_model_inference

    results, dataset, _, _ = run_model_inference(args.checkpoint, args.split, args.config, args.overrides, args.device,
                                              args.max_images)
    coco = load_gt(args.ann_file) if args.ann_file else dataset.coco
    images = args.images if args.images is not None else Path(dataset.image_dir)
    ids = args.image_ids or [int(i) for i in dataset.ids[:args.max_images or len(dataset.ids)]]
    return coco, results, images, dict(zip(dataset.label_to_cat_id, dataset.class_names)), ids


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.results is None) == (args.checkpoint is None):
        parser.error("give either --results with --ann-file and --images, or --checkpoint")
    if args.results is not None and (args.ann_file is None or args.images is None):
        parser.error("--results needs --ann-file (file and class names) and --images (the image folder)")
    try:
        if args.results is not None:
            coco = load_gt(args.ann_file) if args.show_gt else _load_image_info(args.ann_file)
            results, images, names = load_results(args.results, coco, allow_empty=True), args.images, None
            ids = args.image_ids
        else:
            from detector.distributed import is_main_process
            coco, results, images, names, ids = _from_checkpoint(args)
            if not is_main_process():
                return 0
        written = visualize(coco, results, images, args.output_dir, show_gt=args.show_gt, score_thr=args.score_thr,
                            image_ids=ids, max_images=args.max_images, class_names=names)
    except UserError:
        raise
    except (ValueError, FileNotFoundError) as e:  # a bad results/annotation file, a missing image
        raise DataError(str(e)) from e
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
    run_cli(main)

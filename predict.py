#!/usr/bin/env python
"""Run a trained detector on your own images: one COCO-style JSON of detections, optionally drawn PNGs.

    python predict.py --checkpoint checkpoints/default/last.pth .cache/shapes/images --draw
    python predict.py --checkpoint model.pth photos/*.jpg extra.png --score-thr 0.5 --output-dir out/

IMAGES are image files, folders (their images, not recursive) or glob patterns. The checkpoint is a training
checkpoint (last.pth, best.pth, epoch_XXX.pth) or a release file written by ``python -m scripts.export``; both
carry their config and class names, so --config is needed only for checkpoints written without a config.
The images go through ``detector.inference.Detector``: the test-time resize and normalisation of the config,
boxes in the pixels of each image as stored (EXIF orientation is ignored, as in training).

Writes ``<output-dir>/detections.json``: a COCO instances file (``images``, ``categories`` with the class names,
``annotations`` = the detections, each with ``bbox`` [x, y, w, h], ``score``, ``category_id`` and
``category_name``), loadable by pycocotools or ``python -m scripts.visualize --ann-file``. With --draw also
``<output-dir>/<image name>.png`` with the boxes, class names and scores. An image that cannot be read is reported
and skipped; the run goes on.
"""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from detector.cli import run_cli
from detector.errors import ConfigError, DataError, DiskError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="predict.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="training checkpoint or release file (.pth / .safetensors)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config replacing the one stored in the checkpoint (optional)")
    p.add_argument("--output-dir", type=Path, default=Path("predictions"),
                   help="where detections.json (and the --draw PNGs) go (default: predictions/)")
    p.add_argument("--draw", action="store_true", help="also save each image with its detections drawn, as PNG")
    p.add_argument("--score-thr", type=float, default=0.3,
                   help="keep (and draw) detections scoring at least this (default 0.3)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the model runs (default auto: cuda if available)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    return p


def find_images(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Image paths (in order, without duplicates) for files, folders and globs; plus the inputs matching nothing."""
    found: list[Path] = []
    unmatched: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            hits = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            hits = [path]
        else:
            hits = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
        if not hits:
            unmatched.append(item)
        found.extend(hits)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique, unmatched


def read_image(path: Path) -> np.ndarray | None:
    """(H, W, 3) uint8 RGB as the datasets read it (EXIF orientation ignored), or None if it cannot be decoded."""
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        return None
    if img is None or img.size == 0:
        return None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _png_names(paths: list[Path]) -> list[str]:
    """Output PNG names: the image's stem, made unique with a counter when two inputs share one."""
    names, used = [], set()
    for p in paths:
        name, n = f"{p.stem}.png", 1
        while name in used:
            name, n = f"{p.stem}_{n}.png", n + 1
        used.add(name)
        names.append(name)
    return names


def predict(detector, paths: list[Path], out_dir: Path, score_thr: float = 0.3, draw: bool = False,
            batch_size: int = 1, show_progress: bool = True) -> dict:
    """Run ``detector`` on ``paths``; returns the COCO-style dict written to ``out_dir/detections.json``."""
    from PIL import Image

    from detector.draw import draw_detections
    from detector.inference import to_coco_results

    names = {int(c): n for c, n in zip(detector.category_ids, detector.class_names)}
    out = {"info": {"description": "detections by predict.py", "score_thr": score_thr},
           "images": [], "annotations": [],
           "categories": [{"id": int(c), "name": n} for c, n in zip(detector.category_ids, detector.class_names)]}
    png_names = dict(zip(paths, _png_names(paths)))
    skipped: list[str] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not show_progress, dynamic_ncols=True)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        batch = []
        for path in chunk:
            img = read_image(path)
            if img is None:
                msg = f"{path}: cannot be read as an image (missing, truncated or not an image); skipped"
                tqdm.write(f"warning: {msg}", file=sys.stderr)
                skipped.append(str(path))
                continue
            batch.append((path, img))
        if batch:
            outputs = detector([torch.from_numpy(img).permute(2, 0, 1) for _, img in batch])
            for (path, img), o in zip(batch, outputs):
                keep = o["scores"] >= score_thr
                o = {k: v[keep] for k, v in o.items()}
                image_id = len(out["images"]) + 1
                out["images"].append({"id": image_id, "file_name": str(path), "height": int(img.shape[0]),
                                      "width": int(img.shape[1])})
                dets = to_coco_results([o], [image_id], detector.category_ids, detector.class_names)
                for d in dets:
                    d.update(id=len(out["annotations"]) + 1, area=round(d["bbox"][2] * d["bbox"][3], 3), iscrowd=0)
                    out["annotations"].append(d)
                if draw:
                    drawn = draw_detections(Image.fromarray(img), dets, names, score_thr=score_thr)
                    _save(lambda p, im=drawn: im.save(p), out_dir / png_names[path])
        bar.update(len(chunk))
    bar.close()
    out["info"]["skipped"] = skipped
    _save(lambda p: p.write_text(json.dumps(out, indent=1)), out_dir / "detections.json")
    return out


def _save(write, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as e:
        raise DiskError(f"cannot write {path}: {e.strerror or e}") from e


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    paths, unmatched = find_images(args.images)
    for item in unmatched:
        print(f"warning: {item}: no such image, folder or matching file", file=sys.stderr)
    if not paths:
        raise DataError(f"no images found in {', '.join(args.images)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine")
    device = "cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu"
    from detector.inference import load_detector

    detector = load_detector(args.checkpoint, args.config, device)
    out = predict(detector, paths, args.output_dir, args.score_thr, args.draw, args.batch_size,
                  show_progress=sys.stderr.isatty())
    n_ok = len(out["images"])
    print(f"{len(out['annotations'])} detections (score >= {args.score_thr}) on {n_ok} image(s) written to "
          f"{args.output_dir / 'detections.json'}" + (f"; PNGs in {args.output_dir}" if args.draw else "")
          + (f"; {len(out['info']['skipped'])} unreadable image(s) skipped" if out["info"]["skipped"] else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)

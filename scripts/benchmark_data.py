#!/usr/bin/env python
"""Images per second of the training data pipeline (decode + SSD augmentation + to tensor).

Measures (1) one process calling the dataset directly (the rate of one loader worker), split into
decode-only and the full pipeline, and (2) the training loader with N workers (batching included,
the first batch, which pays for worker start-up, excluded). Defaults: ../shared/datasets/bccd train
split at 512x512.

    python -m scripts.benchmark_data                       # BCCD, 2 workers
    python -m scripts.benchmark_data --root /data/coco --ann annotations/instances_val2017.json \
        --images val2017 --workers 8 --size 800
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
from data.build import build_dataset, build_train_loader
from data.coco import CocoDetection
from detector.config import DataCfg

_SHARED = Path(os.environ.get("ALRP_SHARED_DIR", REPO.parent / "shared"))


def per_process(ds: CocoDetection, n: int) -> tuple[float, float]:
    """(decode-only images/s, full pipeline images/s) in this process."""
    t0 = time.perf_counter()
    for i in range(n):
        ds.load_image(i % len(ds))
    decode = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for i in range(n):
        ds[(i % len(ds), i)]
    return decode, n / (time.perf_counter() - t0)


def with_loader(ds: CocoDetection, cfg: DataCfg, batches: int) -> float:
    """Loader images/s with ``cfg.num_workers`` workers, after the first batch."""
    batch_size = cfg.batch_size
    loader, sampler = build_train_loader(cfg, ds, seed=0, pin_memory=False)
    done, t0 = 0, None
    for epoch in range(1000):
        sampler.set_epoch(epoch)
        for images, _ in loader:
            if t0 is None:
                t0 = time.perf_counter()
                continue
            done += images.shape[0]
            if done >= batches * batch_size:
                return done / (time.perf_counter() - t0)
    raise RuntimeError("dataset too small for the requested number of batches")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scripts.benchmark_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(_SHARED / "datasets" / "bccd"), help="dataset folder (default: BCCD)")
    p.add_argument("--ann", default="annotations/instances_train.json", help="annotation json under --root")
    p.add_argument("--images", default="images", help="image folder under --root")
    p.add_argument("--size", type=int, default=512, help="square training size (512 or 800)")
    p.add_argument("--workers", type=int, default=2, help="loader workers for the second measurement")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-images", type=int, default=200, help="images for the per-process measurement")
    p.add_argument("--batches", type=int, default=25, help="timed batches for the loader measurement")
    args = p.parse_args(argv)
    cfg = DataCfg(root=args.root, train_ann=args.ann, train_images=args.images, train_size=args.size,
                  batch_size=args.batch_size, num_workers=args.workers)
    ds = build_dataset(cfg, "train")  # the training pipeline exactly as train.py builds it
    print(f"dataset: {ds}; size {args.size}; cpu cores {os.cpu_count()}")
    decode, full = per_process(ds, args.num_images)
    print(f"per process: decode only {decode:.1f} images/s; decode + augment + to tensor {full:.1f} images/s")
    rate = with_loader(ds, cfg, args.batches)
    print(f"loader with {args.workers} workers (batch {args.batch_size}): {rate:.1f} images/s "
          f"({rate / max(args.workers, 1):.1f} per worker)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

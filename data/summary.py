"""What a training run will see of its dataset, logged before the first step.

A small dataset loses images silently otherwise: images without annotations are filtered out
(``data.filter_empty``), too-small ones too (``data.min_size``), bad ones in ``data.skip_bad_images`` mode, and
``drop_last`` leaves the last partial batch of every epoch unused. :func:`dataset_stats` counts all of that (plus
boxes per class) as a dict; :func:`dataset_summary` formats it as a few log lines.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

__all__ = ["dataset_stats", "dataset_summary"]

_MAX_NAMES = 15  # class names listed per line before "... and N more"


def dataset_stats(ds: Any, batch_size: int, world_size: int = 1, drop_last: bool = True) -> dict[str, Any]:
    """Counts for a :class:`data.coco.CocoDetection` (the shapes set is one too) read ``batch_size`` per process.

    Keys: ``ann_file``, ``images_listed`` (records in the file), ``images_kept``, ``dropped`` (reason -> images),
    ``annotations`` (records in the file, bad images' excluded), ``boxes`` (non-crowd boxes of the kept images,
    the ones trained on), ``crowd`` (crowd regions of the kept images), ``invalid_boxes`` (dropped when parsed),
    ``images_without_boxes`` (kept images with nothing to learn from: crowd-only or invalid boxes),
    ``boxes_per_class`` (class name -> boxes, every class), ``images_per_iter``, ``iters_per_epoch``,
    ``unused_per_epoch`` (images drop_last leaves out of each epoch).
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}")
    dropped = dict(getattr(ds, "dropped", {}))
    kept = len(ds)
    per_label: Counter[int] = Counter()
    crowd = without = 0
    for i in range(kept):
        _, labels, iscrowd = ds.annotations(i)
        own = labels[~iscrowd]
        per_label.update(int(lab) for lab in own)
        crowd += int(iscrowd.sum())
        without += int(len(own) == 0)
    per_iter = batch_size * world_size
    return {
        "ann_file": str(ds.ann_file),
        "images_listed": kept + sum(dropped.values()),
        "images_kept": kept,
        "dropped": dropped,
        "annotations": len(ds.coco.anns),
        "boxes": sum(per_label.values()),
        "crowd": crowd,
        "invalid_boxes": int(getattr(ds, "num_dropped_boxes", 0)),
        "images_without_boxes": without,
        "boxes_per_class": {name: per_label.get(k, 0) for k, name in enumerate(ds.class_names)},
        "images_per_iter": per_iter,
        "iters_per_epoch": kept // per_iter if drop_last else math.ceil(kept / per_iter),
        "unused_per_epoch": kept % per_iter if drop_last else 0,
    }


def _names(names: list[str]) -> str:
    more = f" ... and {len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else ""
    return ", ".join(names[:_MAX_NAMES]) + more


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


def format_stats(stats: dict[str, Any], batch_size: int, world_size: int, drop_last: bool = True,
                 split: str = "train") -> list[str]:
    """The log lines of :func:`dataset_summary` for a :func:`dataset_stats` dict."""
    tag = f"{split} data"
    dropped = stats["dropped"]
    left_out = ("; left out: " + ", ".join(f"{n} {why}" for why, n in dropped.items())) if dropped else \
        "; none left out"
    lines = [f"{tag}: {stats['ann_file']}: {_plural(stats['images_listed'], 'image')} listed, "
             f"{stats['images_kept']} kept{left_out}"]
    extra = ""
    if stats["invalid_boxes"]:
        extra += (f"; {_plural(stats['invalid_boxes'], 'invalid box', 'invalid boxes')} dropped "
                  f"(w or h < 1, area <= 0 or outside the image)")
    if stats["images_without_boxes"]:
        extra += (f"; {_plural(stats['images_without_boxes'], 'kept image')} with no box to learn from "
                  f"(crowd regions only, or invalid boxes)")
    use = " to learn from" if split == "train" else ""
    lines.append(f"{tag}: {_plural(stats['annotations'], 'annotation')} in the file; the kept images hold "
                 f"{_plural(stats['boxes'], 'box', 'boxes')}{use} and {stats['crowd']} crowd regions "
                 f"(ignored){extra}")
    per_class = stats["boxes_per_class"]
    present = sorted(((n, name) for name, n in per_class.items() if n > 0), key=lambda t: -t[0])
    absent = [name for name, n in per_class.items() if n == 0]
    counts = _names([f"{name} {n}" for n, name in present])
    lines.append(f"{tag}: boxes per class ({len(present)} of {len(per_class)} classes present): {counts or '-'}"
                 + (f"; no boxes: {_names(absent)}" if absent else ""))
    procs = f" x {_plural(world_size, 'process', 'processes')}" if world_size > 1 else ""
    unused = stats["unused_per_epoch"]
    if not drop_last:
        lines.append(f"{tag}: {stats['images_kept']} images in {_plural(stats['iters_per_epoch'], 'batch', 'batches')}"
                     f" of {batch_size}{procs}")
        return lines
    unused_text = f" (drop_last: {_plural(unused, 'image')} unused in each epoch, different ones each time)"
    lines.append(f"{tag}: {stats['images_kept']} images / ({batch_size} per batch{procs}) = "
                 f"{_plural(stats['iters_per_epoch'], 'iteration')} per epoch" + (unused_text if unused else ""))
    return lines


def dataset_summary(ds: Any, batch_size: int, world_size: int = 1, drop_last: bool = True,
                    split: str = "train") -> list[str]:
    """Log lines: images listed/kept and why some were left out, boxes (per class), iterations per epoch."""
    stats = dataset_stats(ds, batch_size, world_size, drop_last)
    return format_stats(stats, batch_size, world_size, drop_last, split)

"""Datasets and loaders from ``cfg.data`` (the only place in ``data/`` that reads the config)."""
from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader

from data.coco import CocoDetection
from data.sampler import InferenceSampler, TrainSampler
from data.shapes import ensure_shapes_dataset
from data.transforms import build_test_transform, build_train_transform
from data.validate import DataFileNotFoundError
from detector.config import DataCfg
from detector.errors import ConfigError, UserError

__all__ = ["build_dataset", "build_train_loader", "build_test_loader", "collate", "worker_init_fn", "dataset_paths",
           "Loader", "worker_error_message"]

_SPLITS = ("train", "val", "test")
logger = logging.getLogger(__name__)


def _resolve(root: str, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else Path(root) / p


def dataset_paths(data_cfg: DataCfg, split: str) -> tuple[Path, Path]:
    """(annotation json, image folder) of ``split``; checks they exist and names the config key if not."""
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(_SPLITS)}")
    if data_cfg.dataset == "shapes":
        root = ensure_shapes_dataset(data_cfg.root, **vars(data_cfg.shapes))
        name = "train" if split == "train" else "val"  # the shapes set has no separate test split
        return root / "annotations" / f"instances_{name}.json", root / "images"
    if data_cfg.dataset != "coco":
        raise ConfigError(f"data.dataset: unknown dataset {data_cfg.dataset!r}; expected 'coco' or 'shapes'")
    ann = _resolve(data_cfg.root, getattr(data_cfg, f"{split}_ann"))
    images = _resolve(data_cfg.root, getattr(data_cfg, f"{split}_images"))
    if not ann.is_file():
        raise DataFileNotFoundError(f"data.{split}_ann: annotation file not found: {ann} (data.root = "
                                    f"{data_cfg.root}); fix data.root or data.{split}_ann")
    if not images.is_dir():
        raise DataFileNotFoundError(f"data.{split}_images: image folder not found: {images} "
                                    f"(data.root = {data_cfg.root}); fix data.root or data.{split}_images")
    return ann, images


def build_dataset(data_cfg: DataCfg, split: str, num_classes: int | None = None) -> CocoDetection:
    """The dataset of ``split`` ('train', 'val' or 'test') with its pipeline (docs/REPRODUCTION.md §6), validated.

    ``num_classes`` (``model.num_classes``), when given, must equal the number of categories the file declares.
    """
    ann, images = dataset_paths(data_cfg, split)
    train = split == "train"
    if train:
        aug = data_cfg.aug
        transforms = build_train_transform(
            data_cfg.train_size, photometric=aug.photometric, expand=aug.expand, expand_prob=aug.expand_prob,
            expand_ratio=aug.expand_ratio, min_iou_crop=aug.min_iou_crop, min_ious=aug.min_ious,
            min_crop_size=aug.min_crop_size, flip_prob=aug.flip_prob)
    else:
        transforms = build_test_transform(data_cfg.test_short, data_cfg.test_max)
    ds = CocoDetection(ann, images, transforms, train=train, filter_empty=data_cfg.filter_empty,
                       min_size=data_cfg.min_size, skip_bad_images=data_cfg.skip_bad_images)
    if num_classes is not None and num_classes != len(ds.cat_ids):
        names = ", ".join(ds.class_names[:10]) + (", ..." if len(ds.class_names) > 10 else "")
        raise ConfigError(f"model.num_classes is {num_classes} but {ann} declares {len(ds.cat_ids)} categories "
                          f"({names}); set model.num_classes={len(ds.cat_ids)}")
    if ds.num_bad:
        logger.warning("%s: %d images skipped as bad when the dataset was built (data.skip_bad_images); %d left",
                       ann, ds.num_bad, len(ds))
    return ds


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]] | None], size_divisor: int = 1
            ) -> tuple[torch.Tensor, list[dict[str, Any]]] | None:
    """Zero-pad images bottom/right to the batch maximum rounded up to ``size_divisor``.

    ``None`` samples (bad images skipped during evaluation) are dropped, and a batch of only such samples is
    ``None``: the training loop skips it and inference never passes it to the model.

    Returns:
        images (B, 3, H, W) float32 and the list of B targets, or None.
    """
    skipped = sum(b is None for b in batch)
    batch = [b for b in batch if b is not None]
    if not batch:
        logger.warning("a batch of %d images all skipped as bad (data.skip_bad_images): no batch", skipped)
        return None
    h = max(img.shape[1] for img, _ in batch)
    w = max(img.shape[2] for img, _ in batch)
    h = -(-h // size_divisor) * size_divisor
    w = -(-w // size_divisor) * size_divisor
    images = batch[0][0].new_zeros(len(batch), 3, h, w)
    for i, (img, _) in enumerate(batch):
        images[i, :, :img.shape[1], :img.shape[2]] = img
    return images, [t for _, t in batch]


def worker_init_fn(worker_id: int) -> None:
    """Seed numpy and random in each worker from torch's per-worker seed (itself from the loader generator).

    OpenCV's own thread pool is switched off in workers: the workers already use every core.
    """
    cv2.setNumThreads(0)
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


_WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\s*\nOriginal Traceback")


def worker_error_message(exc: BaseException) -> str | None:
    """The original one-line message of an error re-raised from a DataLoader worker (torch prefixes it with
    "Caught X in DataLoader worker process N." and the worker's traceback), or None for any other error."""
    text = str(exc)
    if not _WORKER_ERROR.match(text):
        return None
    name = re.escape(type(exc).__name__)
    for line in reversed(text.rstrip().splitlines()):
        m = re.match(rf"^(?:[\w.]+\.)?{name}: (.*)$", line)
        if m:
            return m.group(1)
    return None


class Loader(DataLoader):
    """A DataLoader whose user errors (bad image, ...) from worker processes keep their one-line message; the
    worker's traceback stays in the chained exception (log.txt)."""

    def __iter__(self) -> Iterator[Any]:
        return _plain_user_errors(super().__iter__())


def _plain_user_errors(it: Iterator[Any]) -> Iterator[Any]:
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except UserError as e:
            msg = worker_error_message(e)
            if msg is None:
                raise
            raise type(e)(msg) from e
        yield batch


def build_train_loader(data_cfg: DataCfg, dataset: CocoDetection, seed: int, world_size: int = 1, rank: int = 0,
                       pin_memory: bool | None = None) -> tuple[DataLoader, TrainSampler]:
    """Shuffled, resumable training loader of full batches of ``data_cfg.batch_size`` images.

    Call ``sampler.set_epoch(epoch, start_iter)`` before iterating each epoch.
    """
    sampler = TrainSampler(len(dataset), data_cfg.batch_size, world_size, rank, seed)
    loader = Loader(dataset, batch_size=data_cfg.batch_size, sampler=sampler, drop_last=True,
                    num_workers=data_cfg.num_workers, collate_fn=partial(collate, size_divisor=1),
                    pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                    persistent_workers=False, worker_init_fn=worker_init_fn,
                    generator=torch.Generator().manual_seed(seed))
    return loader, sampler


def build_test_loader(data_cfg: DataCfg, dataset: CocoDetection, world_size: int = 1, rank: int = 0,
                      pin_memory: bool | None = None, limit: int | None = None) -> DataLoader:
    """In-order loader over this rank's contiguous shard, padded to multiples of ``data_cfg.size_divisor``.

    ``limit``: only the first ``limit`` images of the dataset, still split evenly over the ranks.
    """
    size = len(dataset) if limit is None else min(limit, len(dataset))
    sampler = InferenceSampler(size, world_size, rank)
    return Loader(dataset, batch_size=data_cfg.test_batch_size, sampler=sampler, drop_last=False,
                  num_workers=data_cfg.num_workers,
                  collate_fn=partial(collate, size_divisor=data_cfg.size_divisor),  # picklable
                  pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                  persistent_workers=False, worker_init_fn=worker_init_fn)

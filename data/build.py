"""Datasets and loaders from ``cfg.data`` (the only place in ``data/`` that reads the config)."""
from __future__ import annotations

import random
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
from detector.config import DataCfg

__all__ = ["build_dataset", "build_train_loader", "build_test_loader", "collate", "worker_init_fn", "dataset_paths"]

_SPLITS = ("train", "val", "test")


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
        raise ValueError(f"data.dataset: unknown dataset {data_cfg.dataset!r}; expected 'coco' or 'shapes'")
    ann = _resolve(data_cfg.root, getattr(data_cfg, f"{split}_ann"))
    images = _resolve(data_cfg.root, getattr(data_cfg, f"{split}_images"))
    if not ann.is_file():
        raise FileNotFoundError(f"data.{split}_ann: annotation file not found: {ann} (data.root = {data_cfg.root})")
    if not images.is_dir():
        raise FileNotFoundError(f"data.{split}_images: image folder not found: {images} "
                                f"(data.root = {data_cfg.root})")
    return ann, images


def build_dataset(data_cfg: DataCfg, split: str) -> CocoDetection:
    """The dataset of ``split`` ('train', 'val' or 'test') with its pipeline (SPEC §6)."""
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
    return CocoDetection(ann, images, transforms, train=train, filter_empty=data_cfg.filter_empty,
                         min_size=data_cfg.min_size, skip_bad_images=data_cfg.skip_bad_images)


def collate(batch: list[tuple[torch.Tensor, dict[str, Any]] | None], size_divisor: int = 1
            ) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Zero-pad images bottom/right to the batch maximum rounded up to ``size_divisor``.

    ``None`` samples (bad images skipped during evaluation) are dropped.

    Returns:
        images (B, 3, H, W) float32 and the list of B targets.
    """
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.zeros(0, 3, size_divisor, size_divisor), []
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


def build_train_loader(data_cfg: DataCfg, dataset: CocoDetection, seed: int, world_size: int = 1, rank: int = 0,
                       pin_memory: bool | None = None) -> tuple[DataLoader, TrainSampler]:
    """Shuffled, resumable training loader of full batches of ``data_cfg.batch_size`` images.

    Call ``sampler.set_epoch(epoch, start_iter)`` before iterating each epoch.
    """
    sampler = TrainSampler(len(dataset), data_cfg.batch_size, world_size, rank, seed)
    loader = DataLoader(dataset, batch_size=data_cfg.batch_size, sampler=sampler, drop_last=True,
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
    return DataLoader(dataset, batch_size=data_cfg.test_batch_size, sampler=sampler, drop_last=False,
                      num_workers=data_cfg.num_workers, collate_fn=partial(collate, size_divisor=data_cfg.size_divisor),  # picklable
                      pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                      persistent_workers=False, worker_init_fn=worker_init_fn)

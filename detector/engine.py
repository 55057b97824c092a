"""Inference loop and the small helpers the trainer shares with it.

``run_inference`` runs a :class:`~detector.inference.Detector` over a dataset and gathers COCO result dicts on
every rank; the training loop lives in :mod:`detector.trainer`.
"""
from __future__ import annotations

import logging

import torch
from tqdm import tqdm

from . import distributed as du
from .logger import progress_enabled

log = logging.getLogger(__name__)


def move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
            for t in targets]


def scalar_stats(values: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Tensors and numbers as Python floats (one host sync for all the tensors)."""
    keys = [k for k, v in values.items() if torch.is_tensor(v)]
    out = {k: float(v) for k, v in values.items() if not torch.is_tensor(v)}
    if keys:
        vals = torch.stack([values[k].detach().float().reshape(()) for k in keys]).tolist()
        out.update(zip(keys, vals))
    return out


def run_inference(detector, dataset, batch_size: int, num_workers: int = 0, world_size: int = 1, rank: int = 0,
                  limit: int | None = None, show_progress: bool = True) -> tuple[list[dict], list[int]]:
    """COCO results of a :class:`~detector.inference.Detector` on ``dataset``, and the ids of the images it ran on,
    both gathered on every rank.

    The one test-time path of the framework: ``evaluate.py`` and the trainer's validation both come here, and
    the Detector does the resizing and normalisation (the dataset yields images as stored). Each rank runs its
    contiguous shard of the first ``limit`` images; the results come back sorted by image and descending score.
    A collective (all ranks call it). Images skipped as bad (``data.skip_bad_images``) never reach the model and
    are left out of the returned ids, so they can be left out of the scoring too.
    """
    from data.build import Loader, worker_init_fn
    from data.sampler import InferenceSampler
    from .inference import list_collate, raw_image_transform, to_coco_results

    dataset.transforms = raw_image_transform  # the Detector resizes and normalises
    size = len(dataset) if limit is None else min(limit, len(dataset))
    loader = Loader(dataset, batch_size=batch_size, sampler=InferenceSampler(size, world_size, rank),
                        num_workers=num_workers, collate_fn=list_collate, worker_init_fn=worker_init_fn,
                        pin_memory=detector.device.type == "cuda")
    results: list[dict] = []
    ran: list[int] = []
    bar = tqdm(total=len(loader), desc="inference", dynamic_ncols=True, leave=False,
               disable=not (show_progress and progress_enabled(du.is_main_process())))
    with torch.inference_mode():
        for batch in loader:
            bar.update(1)
            if not batch:
                continue
            outputs = detector([image for image, _ in batch])
            ids = [t["image_id"] for _, t in batch]
            ran.extend(int(i) for i in ids)
            results.extend(to_coco_results(outputs, ids, detector.category_ids))
    bar.close()
    parts = du.all_gather_object((results, ran))
    merged = [r for part, _ in parts for r in part]
    merged.sort(key=lambda r: (r["image_id"], -r["score"]))
    return merged, sorted(i for _, ids in parts for i in ids)

"""Inference loop and the small helpers the trainer shares with it.

``run_inference`` turns a test loader into COCO result dicts gathered on every rank; the training loop lives in
:mod:`detector.trainer`.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
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
        vals = torch.stack([values[k].detach().float().reshape(()).cpu() for k in keys]).tolist()
        out.update(zip(keys, vals))
    return out


def _to_coco(outputs: list[dict], targets: list[dict], label_to_cat_id: list[int]) -> list[dict]:
    results = []
    for out, tgt in zip(outputs, targets):
        boxes = out["boxes"].float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(xywh, out["scores"].float().cpu().tolist(), out["labels"].cpu().tolist()):
            results.append({"image_id": int(tgt["image_id"]), "category_id": int(label_to_cat_id[label]),
                            "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return results


@torch.inference_mode()
def run_inference(model: nn.Module, loader, device: torch.device, label_to_cat_id: list[int], amp: bool = False,
                  show_progress: bool = True) -> list[dict]:
    """Detections of every image in ``loader`` as COCO result dicts (xywh in original image coordinates).

    Each rank runs its shard; the results are gathered on every rank (a collective: call it on all ranks).
    A batch whose images were all skipped as bad (``None`` from the collate function) never reaches the model.
    """
    was_training = model.training
    model.eval()
    results: list[dict] = []
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    bar = tqdm(total=len(loader), disable=not (show_progress and progress_enabled(du.is_main_process())),
               desc="inference", dynamic_ncols=True, leave=False)
    for batch in loader:
        bar.update(1)
        if batch is None or len(batch[1]) == 0:
            continue
        images, targets = batch
        images = images.to(device, non_blocking=True)
        tg = move_targets(targets, device)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
            outputs = model(images, tg)
        results.extend(_to_coco(outputs, targets, label_to_cat_id))
    bar.close()
    model.train(was_training)
    gathered = du.all_gather_object(results)
    merged = [r for part in gathered for r in part]
    merged.sort(key=lambda r: (r["image_id"], -r["score"]))
    return merged

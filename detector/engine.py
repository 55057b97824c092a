"""Training and inference loops.

``train_one_epoch`` runs one epoch (or the rest of one after a resume) and hands checkpoints and
metrics to callbacks; ``run_inference`` turns a test loader into COCO result dicts gathered on
rank 0. The ranking losses pool all (anchor, class) entries of the batch *on one device*, as in the
paper; across GPUs the only coupling is DDP's gradient averaging and the self-balance all-reduce.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from . import distributed as du
from .checkpoint import atomic_save, unwrap

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when a loss becomes NaN/inf; ``nan_dump.pth`` has been written before."""


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""
    epoch: int = 0
    iter_in_epoch: int = 0
    global_iter: int = 0
    best_ap: float = -1.0
    stop_requested: bool = False  # set by SIGTERM/SIGINT handlers


def move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
            for t in targets]


def _scalar_stats(loss_dict: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss components and statistics as Python floats (one host sync, only on logging steps)."""
    keys = list(loss_dict)
    values = torch.stack([loss_dict[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
    return dict(zip(keys, values))


def _criterion(model: nn.Module) -> nn.Module | None:
    return getattr(unwrap(model), "criterion", None)


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scheduler, scaler, state: TrainState,
                    *, device: torch.device, amp: bool, grad_clip: float | None, log_interval: int,
                    max_iters: int | None, iters_per_epoch: int, total_batch: int, channels_last: bool,
                    on_log: Callable[[dict], None], on_iter_end: Callable[[TrainState], None],
                    dump_dir, show_progress: bool) -> None:
    """Train from ``state.iter_in_epoch`` to the end of the epoch (or ``max_iters`` / a stop request).

    ``state`` is advanced in place. The only per-iteration host sync is the finiteness check of the total
    loss (a NaN must stop the run before it reaches the weights); under DDP that check is one all-reduce of
    (non-finite, stop requested) over the ranks, so every rank stops together instead of waiting on the others
    in the gradient all-reduce.
    """
    model.train()
    crit = _criterion(model)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    bar = tqdm(total=iters_per_epoch, initial=state.iter_in_epoch, disable=not show_progress, dynamic_ncols=True,
               desc=f"epoch {state.epoch + 1}", leave=False)
    t_window, n_window = time.perf_counter(), 0
    for images, targets in loader:
        log_now = (state.global_iter + 1) % log_interval == 0
        if crit is not None and hasattr(crit, "track_balance"):
            crit.track_balance = log_now
        images = images.to(device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = move_targets(targets, device)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
            loss_dict = model(images, targets)
        total = sum(v for k, v in loss_dict.items() if k.startswith("loss_"))
        stop_now = state.stop_requested
        if du.is_dist():  # a NaN or a pre-emption signal may reach the ranks at different iterations: agree
            flags = torch.stack([(~torch.isfinite(total.detach())).float(),
                                 torch.full((), float(stop_now), device=total.device)])
            non_finite, stop_now = (bool(v) for v in du.max_over_ranks(flags))
            state.stop_requested = state.stop_requested or stop_now  # never drop a signal that just came in
        else:
            non_finite = not bool(torch.isfinite(total))
        if non_finite:
            _dump_non_finite(dump_dir, state, loss_dict, images, targets, model)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        grad_norm = None
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        state.iter_in_epoch += 1
        state.global_iter += 1
        n_window += 1
        bar.update(1)
        if log_now:
            extra = {} if grad_norm is None else {"grad_norm": grad_norm}  # before clipping: a divergence sign
            balance = getattr(crit, "last_balance", None) if crit is not None else None
            if balance is not None:
                extra.update(_balance_pos=balance[0], _balance_neg=balance[1])
            stats = _scalar_stats({"loss": total, **loss_dict, **extra})  # one host sync for all of them
            if balance is not None:
                pos, neg = stats.pop("_balance_pos"), stats.pop("_balance_neg")
                stats["grad_balance"] = pos / neg if neg != 0 else float("nan")
            elapsed = time.perf_counter() - t_window
            stats.update(lr=lr, imgs_per_s=n_window * total_batch / max(elapsed, 1e-9),
                         epoch=state.epoch + 1, iter=state.iter_in_epoch)
            bar.set_postfix({k: f"{stats[k]:.4g}" for k in ("loss", "loss_cls", "loss_box", "sb_weight", "lr",
                                                            "imgs_per_s") if k in stats})
            on_log(stats)
            t_window, n_window = time.perf_counter(), 0
        if not du.is_dist():
            stop_now = state.stop_requested  # a signal during this iteration stops right after it
        on_iter_end(state)
        done = max_iters is not None and state.global_iter >= max_iters
        if stop_now or done or state.iter_in_epoch >= iters_per_epoch:  # a later signal: agreed at the next check
            break
    bar.close()


def _dump_non_finite(dump_dir, state: TrainState, loss_dict, images, targets, model) -> None:
    parts = {k: float(v.detach().float()) for k, v in loss_dict.items()}
    if du.is_main_process() and dump_dir is not None:
        atomic_save({"global_iter": state.global_iter, "epoch": state.epoch, "losses": parts,
                     "images": images.detach().cpu(),
                     "targets": [{k: v.cpu() for k, v in t.items() if torch.is_tensor(v)} for t in targets],
                     "model": unwrap(model).state_dict()}, f"{dump_dir}/nan_dump.pth")
    raise NonFiniteLossError(
        f"non-finite loss at iteration {state.global_iter + 1} (epoch {state.epoch + 1}, iteration "
        f"{state.iter_in_epoch + 1} of the epoch): " + ", ".join(f"{k}={v:.6g}" for k, v in parts.items())
        + (f"; inputs and weights saved to {dump_dir}/nan_dump.pth" if dump_dir is not None else ""))


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

    Each rank runs its shard; the results are gathered on rank 0 (other ranks get an empty list).
    """
    was_training = model.training
    model.eval()
    results: list[dict] = []
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    bar = tqdm(total=len(loader), disable=not (show_progress and du.is_main_process()), desc="inference",
               dynamic_ncols=True, leave=False)
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        tg = move_targets(targets, device)
        with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp):
            outputs = model(images, tg)
        results.extend(_to_coco(outputs, targets, label_to_cat_id))
        bar.update(1)
    bar.close()
    model.train(was_training)
    gathered = du.all_gather_object(results)
    if not du.is_main_process():
        return []
    merged = [r for part in gathered for r in part]
    merged.sort(key=lambda r: (r["image_id"], -r["score"]))
    return merged

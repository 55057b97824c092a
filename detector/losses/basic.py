"""Baseline losses and the GIoU localisation error, on torchvision.ops where it has the function.

Regression losses take the coder's normalised deltas of the positives, (P, 4) each, in the same row order.
Every reduction divides by ``max(P, 1)`` so that an empty batch gives 0 (still connected to the graph); with
``num_pos`` (a tensor, e.g. the positives of every rank all-reduced for ``loss.rank_scope: global``) they divide by
``max(num_pos, 1)`` instead, so that the ranks' losses add up to the loss of the whole batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from ..box_ops import MAX_LOG_RATIO  # dw, dh clamp of the release's delta2bbox (4.135)

__all__ = ["GIOU_EPS", "decode_unit_anchor", "giou_errors", "focal_loss", "smooth_l1_loss", "l1_loss", "giou_loss"]

GIOU_EPS = 1e-6  # mmdet GIoULoss eps (added to the union and the enclosing area)


def decode_unit_anchor(deltas: Tensor, stds: list[float] | tuple[float, ...]) -> Tensor:
    """Normalised deltas (P, 4) -> xyxy boxes (P, 4) around a unit anchor centred at 0 (means 0, docs/REPRODUCTION.md
    §2.2)."""
    # per-column float scaling (no tensor built from ``stds``: on CUDA that copy would sync the stream)
    x, y = deltas[:, 0] * stds[0], deltas[:, 1] * stds[1]
    w = (deltas[:, 2] * stds[2]).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    h = (deltas[:, 3] * stds[3]).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    return torch.stack([x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h], dim=1)


def giou_errors(pred_deltas: Tensor, target_deltas: Tensor, stds: list[float] | tuple[float, ...]) -> Tensor:
    """``1 - GIoU`` per positive, both boxes decoded against a unit anchor. GIoU is invariant to the anchor's
    translation and per-axis scale, so this equals the image-space value up to the eps. Float32, (P,)."""
    with torch.autocast(pred_deltas.device.type, enabled=False):
        pred = decode_unit_anchor(pred_deltas.float(), stds)
        target = decode_unit_anchor(target_deltas.float(), stds)
        return generalized_box_iou_loss(pred, target, reduction="none", eps=GIOU_EPS)


def focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss summed over non-ignored entries (targets 1 / 0; -1 ignored) / max(#positives, 1)."""
    with torch.autocast(logits.device.type, enabled=False):
        valid = targets >= 0
        per = sigmoid_focal_loss(logits.float(), (targets == 1).float(), alpha=alpha, gamma=gamma, reduction="none")
        num_pos = (targets == 1).sum().clamp_min(1)
        return torch.where(valid, per, torch.zeros_like(per)).sum() / num_pos


def _per_positive(total: Tensor, count: int, num_pos: Tensor | None, per_row: int) -> Tensor:
    """``total / max(count, 1)`` or, given ``num_pos``, ``total / max(per_row * num_pos, 1)``."""
    if num_pos is None:
        return total / max(count, 1)
    return total / (num_pos.to(total.dtype) * per_row).clamp_min(1)


def smooth_l1_loss(pred: Tensor, target: Tensor, beta: float = 1.0, num_pos: Tensor | None = None) -> Tensor:
    """Smooth L1 on normalised deltas, mean over the 4·P entries (beta 0 = L1); ``num_pos``: see the module doc."""
    with torch.autocast(pred.device.type, enabled=False):
        total = F.smooth_l1_loss(pred.float(), target.float(), beta=beta, reduction="sum")
        return _per_positive(total, pred.numel(), num_pos, 4)


def l1_loss(pred: Tensor, target: Tensor, num_pos: Tensor | None = None) -> Tensor:
    """L1 on normalised deltas, mean over the 4·P entries; ``num_pos``: see the module doc."""
    with torch.autocast(pred.device.type, enabled=False):
        return _per_positive(F.l1_loss(pred.float(), target.float(), reduction="sum"), pred.numel(), num_pos, 4)


def giou_loss(pred: Tensor, target: Tensor, stds: list[float] | tuple[float, ...],
              num_pos: Tensor | None = None) -> Tensor:
    """Mean ``1 - GIoU`` over the positives (unit-anchor decoding); ``num_pos``: see the module doc."""
    return _per_positive(giou_errors(pred, target, stds).sum(), pred.shape[0], num_pos, 1)

"""Box helpers and the delta-xywh box coder.

Convention: boxes are absolute ``xyxy`` pixels, float32, with no ``+1`` (mmdet 2.x / torchvision).
Pairwise IoU, GIoU and clipping come from ``torchvision.ops``; this module adds box centres, the declared
:class:`BoxCoder` interface and the normalised delta coder of docs/REPRODUCTION.md §2.2 / §5.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from torchvision.ops import box_iou, generalized_box_iou
from torchvision.ops import clip_boxes_to_image as clip_boxes  # (..., 4) xyxy, size = (h, w)

__all__ = ["box_iou", "generalized_box_iou", "box_centers", "clip_boxes", "rescale_boxes", "BoxCoder",
           "DeltaXYWHCoder", "MAX_LOG_RATIO"]

# |ln(16/1000)|: the largest |dw|, |dh| accepted when decoding (mmdet's wh_ratio_clip = 16/1000).
MAX_LOG_RATIO = abs(math.log(16.0 / 1000.0))


def box_centers(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 2) centre points (cx, cy)."""
    return (boxes[..., :2] + boxes[..., 2:]) * 0.5


def rescale_boxes(boxes: Tensor, sx: float, sy: float) -> Tensor:
    """(n, 4) xyxy boxes divided by the resize factors (sx, sy): back to original-image pixels."""
    return torch.stack([boxes[:, 0] / sx, boxes[:, 1] / sy, boxes[:, 2] / sx, boxes[:, 3] / sy], dim=1)


@runtime_checkable
class BoxCoder(Protocol):
    """Declared interface of a dense detector's box parametrisation (all tensors (n, 4), rows paired).

    - ``encode(priors, boxes)``: xyxy gt boxes -> the regression targets of their priors;
    - ``decode(priors, preds, max_shape=None)``: regression outputs -> xyxy boxes, clipped to (h, w) if given;
    - ``unit_deltas(preds, stds)``: the same boxes as normalised deltas around a unit anchor centred at 0 (stds
      ``stds``, means 0), which is what a criterion with ``measures_giou`` decodes (GIoU is invariant to the
      anchor's translation and per-axis scale, so nothing about the prior is needed); ``unit_anchor_deltas`` says
      whether ``unit_deltas`` is the identity (the detector then skips it).
    """

    unit_anchor_deltas: bool

    def encode(self, priors: Tensor, boxes: Tensor) -> Tensor: ...

    def decode(self, priors: Tensor, preds: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor: ...

    def unit_deltas(self, preds: Tensor, stds: Sequence[float]) -> Tensor: ...


class DeltaXYWHCoder:
    """Encode boxes as normalised (dx, dy, dw, dh) deltas against reference boxes (anchors), and back.

    ``dx = (gx - px) / pw``, ``dw = log(gw / pw)``, then ``(delta - means) / stds``. Decoding clamps
    ``dw, dh`` to ``±max_log_ratio`` so ``exp`` cannot overflow (docs/REPRODUCTION.md §2.2). Its outputs are
    already unit-anchor deltas (``unit_anchor_deltas``) when the criterion uses the same stds (one config key,
    ``model.coder_stds``, sets both).
    """

    unit_anchor_deltas = True

    def __init__(self, stds: tuple[float, ...] | list[float] = (0.1, 0.1, 0.2, 0.2),
                 means: tuple[float, ...] | list[float] = (0.0, 0.0, 0.0, 0.0),
                 max_log_ratio: float = MAX_LOG_RATIO) -> None:
        if len(stds) != 4 or len(means) != 4:
            raise ValueError(f"DeltaXYWHCoder: stds and means need 4 values, got stds={stds}, means={means}")
        if any(s <= 0 for s in stds):
            raise ValueError(f"DeltaXYWHCoder: stds must be positive, got {stds}")
        self.stds = tuple(float(s) for s in stds)
        self.means = tuple(float(m) for m in means)
        self.max_log_ratio = float(max_log_ratio)

    def encode(self, anchors: Tensor, boxes: Tensor) -> Tensor:
        """(n, 4) anchors, (n, 4) target boxes -> (n, 4) normalised deltas."""
        pw = anchors[:, 2] - anchors[:, 0]
        ph = anchors[:, 3] - anchors[:, 1]
        px = anchors[:, 0] + 0.5 * pw
        py = anchors[:, 1] + 0.5 * ph
        gw = boxes[:, 2] - boxes[:, 0]
        gh = boxes[:, 3] - boxes[:, 1]
        gx = boxes[:, 0] + 0.5 * gw
        gy = boxes[:, 1] + 0.5 * gh
        raw = ((gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph))
        # per-column Python floats: a tensor built from the means / stds lists would be a host-to-device copy
        # (a stream sync on CUDA) on every call
        return torch.stack([(r - m) / s for r, m, s in zip(raw, self.means, self.stds)], dim=1)

    def decode(self, anchors: Tensor, deltas: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
        """(n, 4) anchors, (n, 4) normalised deltas -> (n, 4) xyxy boxes, clipped to ``max_shape`` (h, w)."""
        d = [deltas[:, i] * s + m for i, (m, s) in enumerate(zip(self.means, self.stds))]
        dw = d[2].clamp(min=-self.max_log_ratio, max=self.max_log_ratio)
        dh = d[3].clamp(min=-self.max_log_ratio, max=self.max_log_ratio)
        pw = anchors[:, 2] - anchors[:, 0]
        ph = anchors[:, 3] - anchors[:, 1]
        px = anchors[:, 0] + 0.5 * pw
        py = anchors[:, 1] + 0.5 * ph
        gx = px + pw * d[0]
        gy = py + ph * d[1]
        gw = pw * dw.exp()
        gh = ph * dh.exp()
        boxes = torch.stack([gx - 0.5 * gw, gy - 0.5 * gh, gx + 0.5 * gw, gy + 0.5 * gh], dim=1)
        if max_shape is not None:
            boxes = clip_boxes(boxes, max_shape)
        return boxes

    def unit_deltas(self, preds: Tensor, stds: Sequence[float]) -> Tensor:
        """The deltas themselves: decoding them around a unit anchor gives the box up to translation and scale."""
        return preds

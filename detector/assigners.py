"""Prior-to-ground-truth assignment: the declared :class:`Assigner` interface, ATSS and MaxIoU.

An assigner works on one image, without loops over priors. Its answer, :class:`Assignment`, has one entry per
prior: the index of the matched gt box (>= 0) or a named sentinel, :data:`BACKGROUND` (a negative) or
:data:`IGNORE` (neither; excluded from the loss), and optionally a quality per prior (e.g. the IoU with the matched
gt). An assigner that declares ``uses_predictions = True`` also receives the image's current predictions
(:class:`Predictions`: decoded boxes and class scores per prior, detached), so dynamic assigners fit the same slot.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor

from detector.box_ops import box_centers, box_iou

__all__ = ["BACKGROUND", "IGNORE", "Assignment", "Predictions", "Assigner", "StaticAssigner", "atss_assign",
           "max_iou_assign", "atss_assign_with_iou", "max_iou_assign_with_iou", "ATSSAssigner", "MaxIoUAssigner"]

BACKGROUND = -1  # a negative anchor for every class
IGNORE = -2  # an anchor left out of the loss (MaxIoU's band between neg_iou and pos_iou)


class Assignment(NamedTuple):
    """One image's assignment: ``gt_index`` (N,) int64 (gt index, BACKGROUND or IGNORE) and ``quality`` (N,)
    float32 (e.g. IoU with the matched gt, 0 where unmatched), or None if the assigner has no such measure."""

    gt_index: Tensor
    quality: Tensor | None = None


class Predictions(NamedTuple):
    """One image's predictions per prior, detached: ``boxes`` (N, 4) xyxy decoded, ``scores`` (N, K) sigmoid."""

    boxes: Tensor
    scores: Tensor


@runtime_checkable
class Assigner(Protocol):
    """Declared interface of an assigner (``model.assigner.type`` selects one in ``detector.build.ASSIGNERS``).

    ``assign(priors (N, 4) xyxy of all levels concatenated, num_level_priors (per level counts), gt_boxes (G, 4),
    gt_labels (G,), predictions)`` -> :class:`Assignment`. ``predictions`` is given (not None) only to assigners
    with ``uses_predictions = True``; computing it costs a decode of every prior, so static assigners say False.
    """

    uses_predictions: bool

    def assign(self, priors: Tensor, num_level_priors: Sequence[int], gt_boxes: Tensor, gt_labels: Tensor,
               predictions: Predictions | None = None) -> Assignment: ...


class StaticAssigner(ABC):
    """Base of assigners that look at priors and gts only; ``assigner(priors, counts, gt_boxes)`` is the index."""

    uses_predictions = False

    @abstractmethod
    def assign(self, priors: Tensor, num_level_priors: Sequence[int], gt_boxes: Tensor, gt_labels: Tensor,
               predictions: Predictions | None = None) -> Assignment:
        """See :class:`Assigner`."""

    def __call__(self, priors: Tensor, num_level_priors: Sequence[int], gt_boxes: Tensor) -> Tensor:
        labels = torch.zeros(gt_boxes.shape[0], dtype=torch.long, device=gt_boxes.device)
        return self.assign(priors, num_level_priors, gt_boxes, labels).gt_index


def _matched_iou(ious: Tensor, assigned: Tensor) -> Tensor:
    """(G, N) IoUs and (N,) assignment -> (N,) float32 IoU with the matched gt, 0 where unmatched."""
    if ious.numel() == 0:
        return torch.zeros(assigned.shape, dtype=torch.float32, device=assigned.device)
    iou = ious.gather(0, assigned.clamp(min=0)[None]).squeeze(0)
    return torch.where(assigned >= 0, iou, torch.zeros_like(iou)).float()


def atss_assign(anchors: Tensor, num_level_anchors: Sequence[int], gt_boxes: Tensor, topk: int = 9,
                center_margin: float = 0.01) -> Tensor:
    """(N,) gt index or BACKGROUND per anchor; see :func:`atss_assign_with_iou`."""
    return atss_assign_with_iou(anchors, num_level_anchors, gt_boxes, topk, center_margin)[0]


def atss_assign_with_iou(anchors: Tensor, num_level_anchors: Sequence[int], gt_boxes: Tensor, topk: int = 9,
                         center_margin: float = 0.01) -> tuple[Tensor, Tensor]:
    """Adaptive training sample selection (Zhang et al. 2020) as in mmdet 2.1's ``ATSSAssigner``.

    For each gt: the ``topk`` anchors per level closest by centre distance are candidates; those whose
    IoU is >= mean + std (unbiased) of the candidates' IoUs and whose centre lies inside the gt by more
    than ``center_margin`` pixels are positive. An anchor positive for several gts takes the highest IoU.
    Distance ties (several anchors at one location) are broken towards the lower anchor index.

    Args:
        anchors: (N, 4) xyxy, all levels concatenated in ``num_level_anchors`` order.
        gt_boxes: (G, 4) xyxy.
    Returns:
        (N,) int64 gt index or BACKGROUND, and the (N, G) IoUs (empty if there is no gt or no anchor).
    """
    n, g = anchors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((n,), BACKGROUND, dtype=torch.long, device=anchors.device)
    if n == 0 or g == 0:
        return assigned, anchors.new_zeros((n, 0))
    if sum(num_level_anchors) != n:
        raise ValueError(f"atss_assign: num_level_anchors sums to {sum(num_level_anchors)}, not {n} anchors")
    ious = box_iou(anchors, gt_boxes)  # (N, G)
    anchor_ctr = box_centers(anchors)  # (N, 2)
    # squared centre distances, exact (torch.cdist may use a matmul form that reorders near ties)
    dist = (anchor_ctr[:, None, :] - box_centers(gt_boxes)[None]).pow(2).sum(-1)  # (N, G)
    candidates = []
    start = 0
    for count in num_level_anchors:
        k = min(topk, count)
        if k > 0:
            # stable sort: equal distances (anchors sharing a location) go to the lower index, on every device
            idx = dist[start:start + count].argsort(dim=0, stable=True)[:k]  # (k, G)
            candidates.append(idx + start)
        start += count
    cand = torch.cat(candidates, dim=0)  # (C, G) anchor indices
    cand_iou = ious.gather(0, cand)  # (C, G)
    thr = cand_iou.mean(0) + cand_iou.std(0)  # (G,)
    ctr = anchor_ctr[cand]  # (C, G, 2)
    inside = torch.stack([ctr[..., 0] - gt_boxes[:, 0], ctr[..., 1] - gt_boxes[:, 1],
                          gt_boxes[:, 2] - ctr[..., 0], gt_boxes[:, 3] - ctr[..., 1]], dim=-1).amin(-1)
    is_pos = (cand_iou >= thr) & (inside > center_margin)  # (C, G)
    gt_idx = torch.arange(g, device=anchors.device).expand_as(cand)
    masked = torch.full_like(ious, float("-inf"))  # (N, G): IoU where (anchor, gt) is a positive pair
    masked[cand[is_pos], gt_idx[is_pos]] = cand_iou[is_pos]
    best, arg = masked.max(dim=1)
    return torch.where(best > float("-inf"), arg, assigned), ious


def max_iou_assign(anchors: Tensor, gt_boxes: Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4,
                   min_pos_iou: float = 0.0, low_quality: bool = True) -> Tensor:
    """(N,) gt index, BACKGROUND or IGNORE per anchor; see :func:`max_iou_assign_with_iou`."""
    return max_iou_assign_with_iou(anchors, gt_boxes, pos_iou, neg_iou, min_pos_iou, low_quality)[0]


def max_iou_assign_with_iou(anchors: Tensor, gt_boxes: Tensor, pos_iou: float = 0.5, neg_iou: float = 0.4,
                            min_pos_iou: float = 0.0, low_quality: bool = True) -> tuple[Tensor, Tensor]:
    """MaxIoU assignment as in mmdet 2.1's ``MaxIoUAssigner`` (``gt_max_assign_all=True``).

    IoU >= ``pos_iou`` with the best gt: positive; < ``neg_iou``: background; in between: IGNORE. With
    ``low_quality``, every anchor attaining a gt's highest IoU (if >= ``min_pos_iou`` and > 0) becomes
    positive for that gt, the later gt winning a shared anchor (mmdet's loop order). The ``> 0`` guard
    avoids mmdet's corner case where a gt overlapping no anchor would claim every zero-IoU anchor.

    Returns:
        (N,) int64 gt index, BACKGROUND or IGNORE, and the (G, N) IoUs (empty if there is no gt or no anchor).
    """
    n, g = anchors.shape[0], gt_boxes.shape[0]
    if g == 0 or n == 0:
        return torch.full((n,), BACKGROUND, dtype=torch.long, device=anchors.device), anchors.new_zeros((0, n))
    ious = box_iou(gt_boxes, anchors)  # (G, N)
    best, arg = ious.max(dim=0)  # (N,)
    assigned = torch.full((n,), IGNORE, dtype=torch.long, device=anchors.device)
    assigned[best < neg_iou] = BACKGROUND
    assigned = torch.where(best >= pos_iou, arg, assigned)
    if low_quality:
        gt_best = ious.max(dim=1).values  # (G,)
        ok = (gt_best >= min_pos_iou) & (gt_best > 0)
        hits = (ious == gt_best[:, None]) & ok[:, None]  # (G, N)
        order = torch.arange(1, g + 1, device=anchors.device)[:, None]
        last = (hits.long() * order).max(dim=0).values  # (N,) 1-based index of the last gt hitting it, or 0
        assigned = torch.where(last > 0, last - 1, assigned)
    return assigned, ious


class ATSSAssigner(StaticAssigner):
    """:func:`atss_assign` as an :class:`Assigner`; quality = IoU with the matched gt."""

    def __init__(self, topk: int = 9) -> None:
        if topk < 1:
            raise ValueError(f"model.assigner.topk must be >= 1, got {topk}")
        self.topk = topk

    def assign(self, priors: Tensor, num_level_priors: Sequence[int], gt_boxes: Tensor, gt_labels: Tensor,
               predictions: Predictions | None = None) -> Assignment:
        idx, ious = atss_assign_with_iou(priors, num_level_priors, gt_boxes, self.topk)
        return Assignment(idx, _matched_iou(ious.t(), idx))


class MaxIoUAssigner(StaticAssigner):
    """:func:`max_iou_assign` as an :class:`Assigner`; quality = IoU with the matched gt."""

    def __init__(self, pos_iou: float = 0.5, neg_iou: float = 0.4, min_pos_iou: float = 0.0,
                 low_quality: bool = True) -> None:
        if not 0.0 <= neg_iou <= pos_iou <= 1.0:
            raise ValueError(f"model.assigner: need 0 <= neg_iou <= pos_iou <= 1, got {neg_iou}, {pos_iou}")
        self.pos_iou, self.neg_iou, self.min_pos_iou, self.low_quality = pos_iou, neg_iou, min_pos_iou, low_quality

    def assign(self, priors: Tensor, num_level_priors: Sequence[int], gt_boxes: Tensor, gt_labels: Tensor,
               predictions: Predictions | None = None) -> Assignment:
        idx, ious = max_iou_assign_with_iou(priors, gt_boxes, self.pos_iou, self.neg_iou, self.min_pos_iou,
                                            self.low_quality)
        return Assignment(idx, _matched_iou(ious, idx))

"""FoveaBox (Kong et al. 2020): a dense detector with its own priors, assigner and coder (docs/REPRODUCTION.md §4.1,
§5; paper §5.4).

FoveaBox differs from RetinaNet only in its priors, its assignment and its box parametrisation, so it is the
dense glue of :mod:`detector.dense` with these parts (:func:`fovea_parts`; backbone, FPN P3-P7, the two 4-conv
towers with one prior per location, the flat ranking layout, the losses and the inference are shared):

- :class:`FoveaPriors`: one prior per feature cell, the square of half-side ``base_len`` centred at the cell
  centre ``stride * (x + 0.5, y + 0.5)`` (mmdet 2.x ``FoveaHead.get_points``).
- :func:`fovea_assign`: a gt is a candidate on every level whose scale range holds ``sqrt(w * h)`` (both ends
  inclusive); on such a level the cells whose centres lie in the gt shrunk about its centre by ``sigma`` are
  positive. A cell claimed by several gts goes to the smallest one. There is no ignored cell.
- :class:`FoveaCoder`: a box is the log of the distances from the prior's point to its left, top, right and
  bottom sides in units of ``base_len``, each clamped to [1/16, 16] first; decoding is
  ``point ∓ base_len * exp(pred)``.
- A criterion that measures GIoU (aLRP, or ``loss.reg: giou``) gets :meth:`FoveaCoder.unit_deltas` of the log
  distances: the normalised deltas of the same box around a unit anchor, which the shared criteria decode for
  GIoU; Smooth L1 (Focal and AP baselines, beta 0.11) works on the log distances themselves, as in the release.

Deviations from the release, on purpose: zero-positive batches give zero losses (the release's aLRP fovea head
raises a TypeError there); GIoU is computed per positive with its own stride and base length (the release mixes
them up, which only changes the GIoU eps); exponents are clamped to ±|ln(16/1000)| (the DeltaXYWH clamp) so that a
diverging prediction cannot produce an infinite box; boxes are clipped to [0, w] x [0, h] like RetinaNet's.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from detector.anchors import AnchorGenerator
from detector.assigners import BACKGROUND, Assignment, Predictions, StaticAssigner
from detector.box_ops import MAX_LOG_RATIO, box_centers, clip_boxes
from detector.config import ModelCfg
from detector.dense import DenseDetector, DenseParts

__all__ = ["FoveaPriors", "fovea_assign", "FoveaAssigner", "FoveaCoder", "log_distances_to_unit_deltas",
           "FoveaBox", "fovea_parts"]


class FoveaPriors(AnchorGenerator):
    """Per level (H*W, 4) xyxy priors: squares of half-side ``base_edges[l]`` centred at ``stride * (x + 0.5)``."""

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128),
                 base_edges: Sequence[float] = (16.0, 32.0, 64.0, 128.0, 256.0)) -> None:
        if len(base_edges) != len(strides) or len(set(strides)) != len(strides):
            raise ValueError(f"model.fovea.base_edges: need one base edge per distinct stride of "
                             f"model.anchors.strides {list(strides)}, got {list(base_edges)}")
        if any(b <= 0 for b in base_edges) or any(s <= 0 for s in strides):
            raise ValueError(f"model.fovea.base_edges and strides must be positive, got {list(base_edges)}, "
                             f"{list(strides)}")
        super().__init__(strides=strides, octave_base_scale=1.0, scales_per_octave=1, ratios=(1.0,),
                         center_offset=0.5)
        self.base_of = {int(s): float(b) for s, b in zip(strides, base_edges)}

    def base_anchors(self, stride: int) -> Tensor:
        """(1, 4): the prior of cell (0, 0) of the level with this stride."""
        c, b = self.center_offset * stride, self.base_of[int(stride)]
        return torch.tensor([[c - b, c - b, c + b, c + b]], dtype=torch.float32)


def fovea_assign(priors: Tensor, num_level_priors: Sequence[int], gt_boxes: Tensor, strides: Sequence[int],
                 scale_ranges: Sequence[Sequence[float]], sigma: float = 0.4) -> Tensor:
    """FoveaHead's targets (mmdet 2.x ``_get_target_single``) as one gt index per prior, without loops over gts.

    On level l (stride s), gt g in cell units is ``[x1, y1, x2, y2] / s`` with half sizes (hw, hh); its positive
    columns are ``ceil(x1 + (1 - sigma) hw - 0.5) .. floor(x1 + (1 + sigma) hw - 0.5)``, clamped to the map like
    the release (so a tiny gt at the border keeps the border cell), rows alike. The release paints the gts in
    descending area order, so the smallest wins a shared cell; equal areas go to the larger gt index.

    Args:
        priors: (N, 4) :class:`FoveaPriors` of all levels, concatenated in ``num_level_priors`` order.
        gt_boxes: (G, 4) xyxy.
    Returns:
        (N,) int64 gt index or BACKGROUND.
    """
    n, g = priors.shape[0], gt_boxes.shape[0]
    assigned = torch.full((n,), BACKGROUND, dtype=torch.long, device=priors.device)
    if n == 0 or g == 0:
        return assigned
    if sum(num_level_priors) != n or len(num_level_priors) != len(strides) or len(scale_ranges) != len(strides):
        raise ValueError(f"fovea_assign: {len(num_level_priors)} levels of {list(num_level_priors)} priors for "
                         f"{n} priors, {len(strides)} strides and {len(scale_ranges)} scale ranges")
    wh = (gt_boxes[:, 2:] - gt_boxes[:, :2]).clamp(min=0)  # (G, 2)
    area = wh.prod(dim=1)
    scale = area.sqrt()  # (G,)
    order = torch.argsort(-area, stable=True)  # painting order: largest gt first
    priority = torch.empty_like(order)
    priority[order] = torch.arange(g, device=priors.device)  # (G,) position of each gt in that order
    start = 0
    for count, stride, (lo, hi) in zip(num_level_priors, strides, scale_ranges):
        if count == 0:
            continue
        cells = torch.round(box_centers(priors[start:start + count]) / stride - 0.5)  # (n, 2) column, row
        map_end = cells.amax(dim=0)  # (2,) last column and row of the map
        box = gt_boxes / stride  # (G, 4) in cells
        half = 0.5 * (box[:, 2:] - box[:, :2])  # (G, 2)
        first_cell = torch.ceil(box[:, :2] + (1 - sigma) * half - 0.5)  # (G, 2)
        last_cell = torch.floor(box[:, :2] + (1 + sigma) * half - 0.5)  # (G, 2)
        c = cells[:, None, :]  # (n, 1, 2)
        # clamp(first_cell, 0, map_end) <= c <= clamp(last_cell, 0, map_end), for c in 0..map_end
        inside = ((c >= first_cell) | (c == map_end)) & ((c <= last_cell) | (c == 0))  # (n, G, 2)
        hit = (scale >= lo) & (scale <= hi)  # (G,)
        pos = inside.all(dim=2) & hit  # (n, G)
        best = torch.where(pos, priority, -1).amax(dim=1)  # (n,) priority of the winning gt or -1
        assigned[start:start + count] = torch.where(best >= 0, order[best.clamp(min=0)], BACKGROUND)
        start += count
    return assigned


class FoveaAssigner(StaticAssigner):
    """:func:`fovea_assign` as an :class:`~detector.assigners.Assigner` (no quality measure)."""

    def __init__(self, strides: Sequence[int], scale_ranges: Sequence[Sequence[float]], sigma: float = 0.4) -> None:
        if len(scale_ranges) != len(strides) or any(len(r) != 2 or not 0 <= r[0] <= r[1] for r in scale_ranges):
            raise ValueError(f"model.fovea.scale_ranges: need one [low, high] pair (0 <= low <= high) per stride of "
                             f"model.anchors.strides {list(strides)}, got {scale_ranges}")
        if not 0 < sigma <= 1:
            raise ValueError(f"model.fovea.sigma must be in (0, 1], got {sigma}")
        self.strides = [int(s) for s in strides]
        self.scale_ranges = [(float(lo), float(hi)) for lo, hi in scale_ranges]
        self.sigma = float(sigma)

    def assign(self, priors: Tensor, num_level_priors: Sequence[int], gt_boxes: Tensor, gt_labels: Tensor,
               predictions: Predictions | None = None) -> Assignment:
        return Assignment(fovea_assign(priors, num_level_priors, gt_boxes, self.strides, self.scale_ranges,
                                       self.sigma))


class FoveaCoder:
    """Boxes as log distances (left, top, right, bottom) from a prior's point, in units of its base length.

    The point is the prior's centre and the base length its half-side. ``encode`` clamps the ratios to
    ``[min_ratio, max_ratio]`` before the log (the release: [1/16, 16]); ``decode`` clamps the exponents to
    ``±max_log`` so that no box is infinite. Its outputs are not unit-anchor deltas: :meth:`unit_deltas`
    converts them for GIoU criteria.
    """

    unit_anchor_deltas = False

    def __init__(self, min_ratio: float = 1.0 / 16, max_ratio: float = 16.0, max_log: float = MAX_LOG_RATIO) -> None:
        if not 0 < min_ratio <= max_ratio:
            raise ValueError(f"FoveaCoder: need 0 < min_ratio <= max_ratio, got {min_ratio}, {max_ratio}")
        self.min_ratio, self.max_ratio, self.max_log = float(min_ratio), float(max_ratio), float(max_log)

    @staticmethod
    def _point_and_base(priors: Tensor) -> tuple[Tensor, Tensor]:
        return box_centers(priors), 0.5 * (priors[:, 2:3] - priors[:, 0:1])  # (n, 2), (n, 1)

    def encode(self, priors: Tensor, boxes: Tensor) -> Tensor:
        """(n, 4) priors, (n, 4) xyxy boxes -> (n, 4) log distances."""
        point, base = self._point_and_base(priors)
        dist = torch.cat([point - boxes[:, :2], boxes[:, 2:] - point], dim=1) / base  # (n, 4)
        return dist.clamp(self.min_ratio, self.max_ratio).log()

    def decode(self, priors: Tensor, preds: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
        """(n, 4) priors, (n, 4) log distances -> (n, 4) xyxy boxes, clipped to ``max_shape`` (h, w) if given."""
        point, base = self._point_and_base(priors)
        dist = preds.clamp(-self.max_log, self.max_log).exp() * base  # (n, 4)
        boxes = torch.cat([point - dist[:, :2], point + dist[:, 2:]], dim=1)
        return clip_boxes(boxes, max_shape) if max_shape is not None else boxes

    def unit_deltas(self, preds: Tensor, stds: Sequence[float]) -> Tensor:
        """(P, 4) log distances -> normalised unit-anchor deltas (:func:`log_distances_to_unit_deltas`)."""
        return log_distances_to_unit_deltas(preds, stds, self.max_log)


def log_distances_to_unit_deltas(log_dist: Tensor, stds: Sequence[float], max_log: float = MAX_LOG_RATIO) -> Tensor:
    """(P, 4) fovea log distances -> (P, 4) normalised deltas of the same box around a unit anchor at the origin.

    The box of log distances (l, t, r, b) around the point 0 with base 1 is ``(-e^l, -e^t, e^r, e^b)``: centre
    ``(e^r - e^l) / 2``, width ``e^l + e^r``. Decoding these deltas with ``decode_unit_anchor`` gives it back, so
    GIoU (invariant to translation and scale) equals the GIoU of the image-space boxes up to the eps. Float32.
    """
    p = log_dist.float().clamp(-max_log, max_log)
    e = p.exp()
    centre = 0.5 * (e[:, 2:] - e[:, :2])  # (P, 2) cx, cy
    log_size = torch.logaddexp(p[:, :2], p[:, 2:])  # (P, 2) log w, log h
    cols = (centre[:, 0], centre[:, 1], log_size[:, 0], log_size[:, 1])
    return torch.stack([c / s for c, s in zip(cols, stds)], dim=1)  # float stds: no host-to-device copy


class FoveaBox(DenseDetector):
    """The dense glue with FoveaBox's priors, assigner and coder (see the module docstring); one prior per cell.

    Training returns the criterion's ``loss_*`` terms plus ``num_pos`` (and ``sb_weight`` for aLRP); eval
    returns per-image ``{"boxes", "scores", "labels"}``, rescaled by the targets' ``scale_factor``.
    """


def fovea_parts(cfg: ModelCfg) -> DenseParts:
    """FoveaBox's parts from ``cfg`` (strides from ``model.anchors.strides``, the rest from ``model.fovea``)."""
    f, strides = cfg.fovea, cfg.anchors.strides
    return DenseParts(priors=FoveaPriors(strides, f.base_edges), coder=FoveaCoder(),
                      assigner=FoveaAssigner(strides, f.scale_ranges, f.sigma), model_cls=FoveaBox)

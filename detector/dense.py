"""Dense (one-stage) detector glue shared by RetinaNet and FoveaBox: priors + assigner + coder + head + criterion
+ post-processing.

A dense detector is backbone -> FPN -> head (per level ``A*K`` class logits and ``A*4`` box outputs per location)
on a grid of priors. What tells two dense detectors apart is declared by three parts, :class:`DenseParts`:

- ``priors``, a :class:`PriorGenerator`: ``num_anchors`` priors per location and their (H*W*A, 4) xyxy boxes per
  level (``grid_anchors``), in the head's (H, W, A) channel order;
- ``assigner``, a :class:`detector.assigners.Assigner` (None: the configured ``model.assigner``);
- ``coder``, a :class:`detector.box_ops.BoxCoder`.

Training (docs/REPRODUCTION.md §2.1): logits of all levels and images are flattened into one ranking pool of
(image, level, y, x, prior, class) entries, ``prior * K + class`` within an image; targets are 1 at (positive
prior, its class), 0 elsewhere and -1 on every class of an ignored prior. Rows of the positive box encodings follow
``logits[targets == 1]``. (The release concatenates levels outside images; the ranking losses depend on the order
only through tie-breaking.) The pool goes to a :class:`detector.losses.RankingCriterion`; if that criterion
measures GIoU and the coder's outputs are not unit-anchor deltas, :class:`UnitDeltaAdapter` converts them.

Inference: ``detector.postprocess.postprocess_detections`` (top-k per level, score threshold, decode, clip,
class-wise NMS, top 100; §2.6, §8.11).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from detector.assigners import IGNORE, Assigner, Predictions
from detector.backbone import ResNetBackbone
from detector.box_ops import BoxCoder
from detector.config import ModelCfg
from detector.fpn import FPN
from detector.head import RetinaHead
from detector.losses import RankingCriterion
from detector.postprocess import postprocess_detections

__all__ = ["PriorGenerator", "DenseParts", "DenseDetector", "UnitDeltaAdapter", "check_target",
           "build_dense_detector"]


@runtime_checkable
class PriorGenerator(Protocol):
    """Priors of a dense detector: ``num_anchors`` per feature-map location; ``grid_anchors(sizes, device)`` gives
    per level an (H*W*A, 4) xyxy tensor in (y, x, prior) order for the level's (H, W) in ``sizes``."""

    num_anchors: int

    def grid_anchors(self, feature_sizes: Sequence[tuple[int, int]],
                     device: torch.device | str = "cpu") -> list[Tensor]: ...


@dataclass
class DenseParts:
    """What makes a dense detector what it is; ``model_cls`` is the class to instantiate (a DenseDetector)."""

    priors: PriorGenerator
    coder: BoxCoder
    assigner: Assigner | None = None  # None: the assigner of ``model.assigner``
    model_cls: type[DenseDetector] | None = None  # None: DenseDetector


def check_target(boxes: Tensor, labels: Tensor, num_classes: int, image_id: object) -> None:
    """Clear errors for malformed targets (label range checked only for CPU tensors: no device sync)."""
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
        raise ValueError(f"image {image_id}: boxes must be (n, 4) with n labels, got {tuple(boxes.shape)} boxes "
                         f"and {tuple(labels.shape)} labels")
    if labels.numel() and labels.device.type == "cpu" and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ValueError(f"image {image_id}: labels must be in 0..{num_classes - 1}, got {labels.tolist()}")


class UnitDeltaAdapter(nn.Module):
    """Feeds a GIoU-measuring criterion the unit-anchor deltas of a coder's outputs; otherwise it *is* that
    criterion: the trainer hooks reach it, and its state (the SB buffers) stays under ``criterion.inner.``."""

    measures_giou = False  # its inputs are converted here already

    def __init__(self, criterion: RankingCriterion, coder: BoxCoder, stds: Sequence[float]) -> None:
        super().__init__()
        self.inner = criterion
        self.coder = coder
        self.stds = [float(s) for s in stds]

    @property
    def track_balance(self) -> bool:
        return self.inner.track_balance

    @track_balance.setter
    def track_balance(self, value: bool) -> None:
        self.inner.track_balance = value

    @property
    def last_balance(self) -> tuple[Tensor, Tensor] | None:
        return self.inner.last_balance

    @property
    def has_self_balance(self) -> bool:
        return self.inner.has_self_balance

    def set_period(self, period: int) -> None:
        self.inner.set_period(period)

    def consolidate(self) -> None:
        self.inner.consolidate()

    def forward(self, logits: Tensor, targets: Tensor, pos_pred: Tensor, pos_target: Tensor) -> dict[str, Tensor]:
        return self.inner(logits, targets, self.coder.unit_deltas(pos_pred, self.stds),
                          self.coder.unit_deltas(pos_target, self.stds))


class DenseDetector(nn.Module):
    """A one-stage detector from a backbone, an FPN, a dense head and its :class:`DenseParts`.

    ``forward(images, targets)`` returns the criterion's dict plus ``num_pos`` in training mode, and a list of
    ``{"boxes", "scores", "labels"}`` per image in eval mode, rescaled by the targets' ``scale_factor`` if given
    (see ``docs/ARCHITECTURE.md``). ``criterion_stds``: the stds the criterion decodes unit-anchor deltas with.
    """

    def __init__(self, backbone: nn.Module, fpn: nn.Module, head: nn.Module, anchor_generator: PriorGenerator,
                 assigner: Assigner, coder: BoxCoder, num_classes: int, criterion: RankingCriterion | None = None,
                 nms_pre: int = 1000, score_thr: float = 0.05, nms_iou: float = 0.5, max_per_img: int = 100,
                 criterion_stds: Sequence[float] = (0.1, 0.1, 0.2, 0.2), candidates: str = "anchors") -> None:
        super().__init__()
        self.backbone, self.fpn, self.head = backbone, fpn, head
        if criterion is not None and criterion.measures_giou and not coder.unit_anchor_deltas:
            criterion = UnitDeltaAdapter(criterion, coder, criterion_stds)
        self.criterion = criterion
        self.anchor_generator, self.assigner, self.coder = anchor_generator, assigner, coder
        self.num_classes = num_classes
        self.nms_pre, self.score_thr, self.nms_iou, self.max_per_img = nms_pre, score_thr, nms_iou, max_per_img
        self.candidates = candidates  # per-level candidates before NMS: "anchors" (mmdet) | "pairs" (torchvision)

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict[str, Tensor] | list[dict]:
        if images.dim() != 4:
            raise ValueError(f"{type(self).__name__} expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        cls_logits, box_deltas = self.head(self.fpn(self.backbone(images)))
        anchors = self.anchor_generator.grid_anchors([c.shape[-2:] for c in cls_logits], images.device)
        if self.training:
            if targets is None or len(targets) != images.shape[0]:
                raise ValueError(f"{type(self).__name__} in training mode needs one target dict per image")
            return self.compute_loss(cls_logits, box_deltas, anchors, targets)
        if targets is not None:
            sizes = [tuple(int(v) for v in t["img_size"]) for t in targets]
            factors = [tuple(float(v) for v in t["scale_factor"]) for t in targets]
        else:
            sizes, factors = [tuple(images.shape[-2:])] * images.shape[0], None
        return postprocess_detections(cls_logits, box_deltas, anchors, self.coder, sizes, factors, self.nms_pre,
                                      self.score_thr, self.nms_iou, self.max_per_img, self.candidates)

    def build_targets(self, all_anchors: Tensor, counts: list[int], targets: list[dict],
                      predictions: list[Predictions] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Assign every image to the (N, 4) priors of all levels (``counts`` per level): (B, N) matched gt index
        or sentinel, (B, N) class, (B, N, 4) matched gt box. ``predictions``: per image, for dynamic assigners."""
        matched, classes, boxes = [], [], []
        for i, t in enumerate(targets):
            gt_boxes, gt_labels = t["boxes"], t["labels"]
            check_target(gt_boxes, gt_labels, self.num_classes, t.get("image_id", i))
            gt_boxes = gt_boxes.to(all_anchors.device, torch.float32, non_blocking=True)
            gt_labels = gt_labels.to(all_anchors.device, torch.long, non_blocking=True)
            pred = None if predictions is None else predictions[i]
            idx = self.assigner.assign(all_anchors, counts, gt_boxes, gt_labels, pred).gt_index  # (N,)
            matched.append(idx)
            if gt_boxes.shape[0]:
                safe = idx.clamp(min=0)
                classes.append(gt_labels[safe])
                boxes.append(gt_boxes[safe])
            else:
                classes.append(torch.zeros_like(idx))
                boxes.append(all_anchors)  # placeholder rows, never read: no positives
        return torch.stack(matched), torch.stack(classes), torch.stack(boxes)

    def _predictions(self, logits: Tensor, deltas: Tensor, all_anchors: Tensor) -> list[Predictions]:
        """Detached decoded boxes (N, 4) and sigmoid scores (N, K) of every image, for dynamic assigners."""
        batch = logits.shape[0]
        boxes = self.coder.decode(all_anchors.repeat(batch, 1), deltas.detach().float().reshape(-1, 4))
        boxes = boxes.view(batch, -1, 4)
        scores = logits.detach().float().sigmoid()
        return [Predictions(boxes[b], scores[b]) for b in range(batch)]

    def compute_loss(self, cls_logits: list[Tensor], box_deltas: list[Tensor], anchors: list[Tensor],
                     targets: list[dict]) -> dict[str, Tensor]:
        if self.criterion is None:
            raise RuntimeError(f"{type(self).__name__} has no criterion; build it with "
                               "detector.build.build_model for training")
        batch, k = cls_logits[0].shape[0], self.num_classes
        logits = torch.cat([c.permute(0, 2, 3, 1).reshape(batch, -1, k) for c in cls_logits], dim=1)  # (B, N, K)
        deltas = torch.cat([d.permute(0, 2, 3, 1).reshape(batch, -1, 4) for d in box_deltas], dim=1)  # (B, N, 4)
        all_anchors = torch.cat(anchors)  # (N, 4)
        with torch.no_grad():
            predictions = self._predictions(logits, deltas, all_anchors) if self.assigner.uses_predictions else None
            matched, classes, gt_boxes = self.build_targets(all_anchors, [a.shape[0] for a in anchors], targets,
                                                            predictions)
            pos = matched >= 0  # (B, N)
            flat_targets = logits.new_zeros(logits.shape, dtype=torch.float32)  # (B, N, K)
            flat_targets.scatter_(2, classes[..., None], pos[..., None].to(torch.float32))
            flat_targets.masked_fill_((matched == IGNORE)[..., None], -1.0)
            # one nonzero (one host sync) for every positive gather; row-major = boolean-mask order
            pos_b, pos_n = pos.nonzero(as_tuple=True)
            pos_target_deltas = self.coder.encode(all_anchors[pos_n], gt_boxes[pos_b, pos_n])  # (P, 4)
        pos_pred_deltas = deltas[pos_b, pos_n]  # (P, 4), same order as logits[targets == 1]
        losses = dict(self.criterion(logits.reshape(-1), flat_targets.reshape(-1), pos_pred_deltas,
                                     pos_target_deltas))
        losses.setdefault("num_pos", logits.new_full((), float(pos_n.numel())))
        return losses


def build_dense_detector(cfg: ModelCfg, parts: DenseParts, assigner: Assigner,
                         criterion: RankingCriterion | None = None) -> DenseDetector:
    """Backbone, FPN (P3 up, one level per prior stride) and a RetinaNet-style head of ``parts.priors.num_anchors``
    priors per location, from ``cfg``, around ``parts``; without ``criterion`` it can only run inference.

    Modules are created in the order backbone, FPN, head (the order of their random initialisation)."""
    b = cfg.backbone
    backbone = ResNetBackbone(name=b.name, weights=b.weights, frozen_stages=b.frozen_stages, norm_eval=b.norm_eval,
                              dcn_stages=b.dcn_stages)
    num_extra = len(cfg.anchors.strides) - len(backbone.out_channels)
    if num_extra < 0:
        raise ValueError(f"model.anchors.strides: need at least {len(backbone.out_channels)} levels (P3-P5), "
                         f"got {cfg.anchors.strides}")
    fpn = FPN(backbone.out_channels, cfg.fpn.out_channels, num_extra=num_extra, extra_from=cfg.fpn.extra_from,
              relu_before_extra=cfg.fpn.relu_before_extra)
    head = RetinaHead(cfg.fpn.out_channels, parts.priors.num_anchors, cfg.num_classes, num_convs=cfg.head.num_convs,
                      channels=cfg.head.channels, prior_prob=cfg.head.prior_prob)
    t = cfg.test
    model_cls = parts.model_cls or DenseDetector
    return model_cls(backbone, fpn, head, parts.priors, assigner, parts.coder, cfg.num_classes, criterion,
                     nms_pre=t.nms_pre, score_thr=t.score_thr, nms_iou=t.nms_iou, max_per_img=t.max_per_img,
                     criterion_stds=cfg.coder_stds, candidates=t.candidates)

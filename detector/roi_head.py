"""Faster R-CNN RoI head (docs/REPRODUCTION.md §4.2, §5): proposal targets, multi-level RoIAlign, the shared 2-fc
box head and the final detections.

Targets: MaxIoU at 0.5 / 0.5 without low-quality matches (no ignore band). The baseline adds the gt boxes to
the proposals and samples 512 per image (a quarter positive at most); the aLRP variant uses every proposal.
Features: ``torchvision.ops.roi_align`` (aligned, adaptive sampling) on the level mmdet's ``SingleRoIExtractor``
picks, ``floor(log2(sqrt(area) / 56 + 1e-6))`` over P2-P5. Classification is softmax over K + 1 (background
last) for the baseline and sigmoid over K for aLRP; regression is class-specific (K*4 deltas per RoI).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from detector.assigners import BACKGROUND, max_iou_assign
from detector.box_ops import DeltaXYWHCoder, clip_boxes
from detector.postprocess import select_detections
from detector.rpn import random_sample

__all__ = ["FINEST_SCALE", "map_roi_levels", "multilevel_roi_align", "roi_batch", "roi_targets", "Shared2FCHead",
           "RoIHead"]

FINEST_SCALE = 56.0  # mmdet SingleRoIExtractor: RoIs below 2 * 56 px (sqrt of the area) go to the finest level


def map_roi_levels(boxes: Tensor, num_levels: int, finest_scale: float = FINEST_SCALE) -> Tensor:
    """(R, 4) xyxy -> (R,) pyramid level in 0..num_levels-1: ``floor(log2(sqrt(area) / finest_scale + 1e-6))``."""
    scale = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
    return torch.floor(torch.log2(scale / finest_scale + 1e-6)).clamp(0, num_levels - 1).long()


def multilevel_roi_align(feats: Sequence[Tensor], rois: Tensor, strides: Sequence[int], output_size: int = 7,
                         finest_scale: float = FINEST_SCALE) -> Tensor:
    """(R, 5) RoIs (image index, x1, y1, x2, y2) -> (R, C, S, S) features, each RoI pooled from its own level."""
    levels = map_roi_levels(rois[:, 1:], len(feats), finest_scale)
    out = feats[0].new_zeros((rois.shape[0], feats[0].shape[1], output_size, output_size))
    for level, (feat, stride) in enumerate(zip(feats, strides)):
        idx = (levels == level).nonzero().squeeze(1)
        if idx.numel():
            # float32 like torchvision's autocast wrapper: fp16 RoI coordinates would be off by up to 0.5 px
            pooled = roi_align(feat.float(), rois[idx].float(), output_size, spatial_scale=1.0 / stride,
                               sampling_ratio=-1, aligned=True)
            out[idx] = pooled.to(out.dtype)
    return out


def roi_batch(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image (k_i, 4) boxes -> (sum k_i, 5) RoIs with the image index in column 0."""
    return torch.cat([torch.cat([b.new_full((b.shape[0], 1), float(i)), b], dim=1) for i, b in enumerate(boxes)])


def roi_targets(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_classes: int, pos_iou: float = 0.5,
                neg_iou: float = 0.5, add_gt: bool = False, num_samples: int | None = None,
                pos_fraction: float = 0.25) -> tuple[Tensor, Tensor, Tensor]:
    """Training RoIs of one image: ``(rois (S, 4), labels (S,), gt (S, 4))``.

    ``labels`` holds the gt class of a positive RoI and ``num_classes`` (background) otherwise; ``gt`` is the
    matched gt box of a positive and the RoI itself otherwise. With ``add_gt`` the gt boxes are prepended to
    the proposals and matched to themselves (mmdet ``add_gt_as_proposals``); with ``num_samples`` a random
    sample is kept, positives first. RoIs in an ignore band (only if ``neg_iou < pos_iou``) are never kept.
    """
    if add_gt:
        proposals = torch.cat([gt_boxes.to(proposals.dtype), proposals])
    assigned = max_iou_assign(proposals, gt_boxes, pos_iou, neg_iou, low_quality=False)
    if add_gt:
        assigned[: gt_boxes.shape[0]] = torch.arange(gt_boxes.shape[0], device=assigned.device)
    pos, neg = assigned >= 0, assigned == BACKGROUND
    if num_samples is not None:
        keep = torch.cat(random_sample(pos, neg, num_samples, pos_fraction))
    else:
        keep = (pos | neg).nonzero().squeeze(1)
    rois, matched = proposals[keep], assigned[keep]
    is_pos = matched >= 0
    safe = matched.clamp(min=0)
    labels = torch.where(is_pos, gt_labels[safe] if gt_boxes.shape[0] else safe, torch.full_like(safe, num_classes))
    gt = torch.where(is_pos[:, None], gt_boxes[safe] if gt_boxes.shape[0] else rois, rois)
    return rois, labels, gt


class Shared2FCHead(nn.Module):
    """Flatten the (C, S, S) RoI feature, two fc + ReLU layers, then class logits and class-specific deltas.

    ``use_sigmoid``: K logits (aLRP) instead of K + 1 (softmax, background last). Init as mmdet's
    ``Shared2FCBBoxHead``: xavier-uniform shared fcs, classifier normal(0, 0.01), regressor normal(0, 0.001),
    zero biases.
    """

    def __init__(self, in_channels: int, num_classes: int, roi_size: int = 7, fc_channels: int = 1024,
                 use_sigmoid: bool = False) -> None:
        super().__init__()
        self.num_classes, self.use_sigmoid = num_classes, use_sigmoid
        self.fc1 = nn.Linear(in_channels * roi_size * roi_size, fc_channels)
        self.fc2 = nn.Linear(fc_channels, fc_channels)
        self.cls_out = nn.Linear(fc_channels, num_classes if use_sigmoid else num_classes + 1)
        self.reg_out = nn.Linear(fc_channels, num_classes * 4)
        for fc in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(fc.weight)
        nn.init.normal_(self.cls_out.weight, std=0.01)
        nn.init.normal_(self.reg_out.weight, std=0.001)
        for fc in (self.fc1, self.fc2, self.cls_out, self.reg_out):
            nn.init.zeros_(fc.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, C, S, S) -> class logits (R, K or K+1) and deltas (R, K*4)."""
        x = torch.relu(self.fc2(torch.relu(self.fc1(x.flatten(1)))))  # (R, C*S*S) -> (R, fc)
        return self.cls_out(x), self.reg_out(x)


class RoIHead(nn.Module):
    """Training targets, RoI features and box head, and inference of the second stage.

    ``strides`` are those of the pyramid levels RoIs are pooled from (P2-P5: 4, 8, 16, 32).
    """

    def __init__(self, box_head: Shared2FCHead, coder: DeltaXYWHCoder, strides: Sequence[int], *, roi_size: int = 7,
                 pos_iou: float = 0.5, neg_iou: float = 0.5, add_gt: bool = False, num_samples: int | None = None,
                 pos_fraction: float = 0.25, score_thr: float = 0.05, nms_iou: float = 0.5,
                 max_per_img: int = 100) -> None:
        super().__init__()
        if not 0.0 <= neg_iou <= pos_iou <= 1.0:
            raise ValueError(f"model.roi: need 0 <= neg_iou <= pos_iou <= 1, got {neg_iou}, {pos_iou}")
        if num_samples is not None and (num_samples < 1 or not 0.0 < pos_fraction <= 1.0):
            raise ValueError(f"model.roi: need num_samples >= 1 and pos_fraction in (0, 1], got {num_samples}, "
                             f"{pos_fraction}")
        self.box_head, self.coder, self.strides, self.roi_size = box_head, coder, list(strides), roi_size
        self.pos_iou, self.neg_iou, self.add_gt = pos_iou, neg_iou, add_gt
        self.num_samples, self.pos_fraction = num_samples, pos_fraction
        self.score_thr, self.nms_iou, self.max_per_img = score_thr, nms_iou, max_per_img

    @property
    def num_classes(self) -> int:
        return self.box_head.num_classes

    def forward(self, feats: Sequence[Tensor], boxes: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Class logits and deltas of the RoIs ``boxes`` (per image (k_i, 4)), in image-major order."""
        pooled = multilevel_roi_align(feats[: len(self.strides)], roi_batch(boxes), self.strides, self.roi_size)
        return self.box_head(pooled)

    @torch.no_grad()
    def sample(self, proposals: Sequence[Tensor], gt_boxes: Sequence[Tensor], gt_labels: Sequence[Tensor]
               ) -> tuple[list[Tensor], Tensor, Tensor]:
        """Per-image training RoIs, and the labels (R,) and target boxes (R, 4) of all of them concatenated."""
        rois, labels, gts = [], [], []
        for props, boxes, classes in zip(proposals, gt_boxes, gt_labels):
            r, lab, gt = roi_targets(props, boxes, classes, self.num_classes, self.pos_iou, self.neg_iou,
                                     self.add_gt, self.num_samples, self.pos_fraction)
            rois.append(r)
            labels.append(lab)
            gts.append(gt)
        return rois, torch.cat(labels), torch.cat(gts)

    def select_deltas(self, deltas: Tensor, labels: Tensor, pos_idx: Tensor | None = None) -> Tensor:
        """The class-specific deltas (P, 4) of the positive RoIs (``labels < K``, or the RoI indices ``pos_idx``
        when the caller has them already), in RoI order."""
        if pos_idx is None:
            pos_idx = (labels < self.num_classes).nonzero().squeeze(1)
        return deltas.view(deltas.shape[0], self.num_classes, 4)[pos_idx, labels[pos_idx]]  # (R, K, 4) -> (P, 4)

    @torch.no_grad()
    def detect(self, feats: Sequence[Tensor], proposals: Sequence[Tensor], image_sizes: Sequence[tuple[int, int]],
               scale_factors: Sequence[tuple[float, float]] | None = None) -> list[dict[str, Tensor]]:
        """Per image ``{"boxes", "scores", "labels"}``: class-specific boxes clipped to the image, scores above
        ``score_thr``, class-wise NMS, the best ``max_per_img``, divided by the scale factor if given."""
        logits, deltas = self(feats, proposals)
        logits, deltas = logits.float(), deltas.float()
        k = self.num_classes
        scores = logits.sigmoid() if self.box_head.use_sigmoid else logits.softmax(dim=1)[:, :k]  # (R, K)
        rois = torch.cat(list(proposals)).float()
        boxes = self.coder.decode(rois[:, None].expand(-1, k, -1).reshape(-1, 4), deltas.reshape(-1, 4))
        boxes = boxes.view(-1, k, 4)  # (R, K, 4)
        results, start = [], 0
        for i, props in enumerate(proposals):
            end = start + props.shape[0]
            img_boxes, img_scores = clip_boxes(boxes[start:end], image_sizes[i]), scores[start:end]
            row, label = (img_scores > self.score_thr).nonzero(as_tuple=True)
            results.append(select_detections(img_boxes[row, label], img_scores[row, label], label, self.nms_iou,
                                             self.max_per_img, None if scale_factors is None else scale_factors[i]))
            start = end
        return results

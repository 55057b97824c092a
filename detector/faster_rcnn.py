"""Faster R-CNN with FPN (docs/REPRODUCTION.md §4.2, §5): glue, the two stages' losses, and the builder.

Backbone C2-C5 -> FPN P2-P5 (``detector.fpn.FPN`` without extra convs) + P6 = stride-2 max-pool of P5 ->
RPN on P2-P6 -> proposals -> RoIAlign on P2-P5 -> shared 2-fc head. Two losses (``loss.type``):

- ``ce`` (the baseline): RPN sigmoid CE + L1 over the 256 sampled anchors per image; RoI softmax CE + L1 on
  deltas or ``reg_weight`` x GIoU on decoded boxes over the 512 sampled RoIs per image; both normalised by
  the number of samples of the batch, as mmdet's ``avg_factor``.
- ``alrp``: aLRP over all anchors of the batch for the RPN (the Function's ``weight`` = ``rpn.loss_weight``,
  E = (1 - GIoU) / (2 (1 - rpn.pos_iou)), localisation x weight x its own SB) and over all RoIs x K classes
  for the RoI head (sigmoid, E = 1 - GIoU of the class-specific decoded box and its gt, its own SB); both through
  :func:`detector.losses.self_balanced_alrp`, the wiring every detector shares. Each stage hands it a ranking
  pool as in :mod:`detector.losses.criterion`: flat logits, targets in {1, 0, -1}, the positives' E values.

The SB modules live in ``model.criterion`` (checkpointed buffers, ``criterion.rpn_sb`` / ``criterion.roi_sb``);
it implements :class:`detector.losses.CriterionHooks` (``set_period``, ``track_balance`` / ``last_balance`` of the
RoI head's aLRP logits, ``consolidate``), which is what the trainer uses.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from detector.anchors import AnchorGenerator
from detector.backbone import ResNetBackbone
from detector.box_ops import DeltaXYWHCoder
from detector.config import LossCfg, ModelCfg
from detector.dense import check_target
from detector.errors import ConfigError
from detector.fpn import FPN
from detector.losses import GIOU_EPS, Criterion, SelfBalance, giou_errors, self_balanced_alrp
from detector.roi_head import RoIHead, Shared2FCHead
from detector.rpn import RPN, RPNHead

__all__ = ["FasterRCNN", "FasterRCNNCriterion", "build_faster_rcnn", "STAGE_LOSSES", "ROI_REG_TYPES"]

# the loss.type values Faster R-CNN implements on its two stages: aLRP, or the cross-entropy baseline ("ce")
STAGE_LOSSES = ("alrp", "ce")
ROI_REG_TYPES = ("l1", "giou")  # loss.reg of the baseline's RoI regression


def _decoded_giou_errors(coder: DeltaXYWHCoder, rois: Tensor, deltas: Tensor, gt: Tensor) -> Tensor:
    """``1 - GIoU`` (P,) of the boxes decoded from ``deltas`` on ``rois`` against ``gt``, in image coordinates."""
    with torch.autocast(deltas.device.type, enabled=False):
        boxes = coder.decode(rois.float(), deltas.float())
        return generalized_box_iou_loss(boxes, gt.float(), reduction="none", eps=GIOU_EPS)


class FasterRCNNCriterion(Criterion):
    """Losses of both stages; owns the two self-balance modules of the aLRP variant.

    ``rpn(...)`` returns ``loss_rpn_cls``, ``loss_rpn_box``; ``roi(...)`` returns ``loss_cls``, ``loss_box``;
    both add detached statistics. With zero positives every loss is 0 and still connected to the graph.
    ``rank_scope`` ``global`` (aLRP only) ranks each stage's pool over every rank's batch.
    """

    def __init__(self, loss_type: str, rpn_coder: DeltaXYWHCoder, roi_coder: DeltaXYWHCoder, *, delta: float = 1.0,
                 eps: float = 1e-5, sb_init: float = 50.0, sb_period: int = 0, rpn_weight: float = 0.2,
                 rpn_pos_iou: float = 0.7, reg: str = "l1", reg_weight: float = 1.0,
                 rank_scope: str = "device") -> None:
        super().__init__(rank_scope)
        if loss_type not in STAGE_LOSSES:
            raise ConfigError(f"config key 'loss.type': faster_rcnn supports {STAGE_LOSSES}, got '{loss_type}'")
        if loss_type == "ce" and reg not in ROI_REG_TYPES:
            raise ConfigError(f"config key 'loss.reg': faster_rcnn with loss.type=ce supports {ROI_REG_TYPES}, "
                              f"got '{reg}'")
        if loss_type == "ce" and rank_scope != "device":
            raise ConfigError("config key 'loss.rank_scope': the cross-entropy baseline is not a ranking loss; only "
                              f"'device' applies (got {rank_scope!r})")
        if not rpn_pos_iou < 1.0:
            raise ConfigError(f"config key 'model.rpn.pos_iou' must be < 1 (it scales the RPN's E), got {rpn_pos_iou}")
        self.loss_type, self.rpn_coder, self.roi_coder = loss_type, rpn_coder, roi_coder
        self.delta, self.eps, self.rpn_weight, self.reg, self.reg_weight = delta, eps, rpn_weight, reg, reg_weight
        self.rpn_e_scale = 1.0 / (2.0 * (1.0 - rpn_pos_iou))
        if loss_type == "alrp":
            self.rpn_sb = SelfBalance(sb_init, sb_period)
            self.roi_sb = SelfBalance(sb_init, sb_period)

    def rpn(self, logits: Tensor, labels: Tensor, pos_pred: Tensor, pos_target: Tensor) -> dict[str, Tensor]:
        """logits, labels (M,) with labels in {1, 0, -1}; deltas of the positives (P, 4) in ``labels == 1`` order."""
        num_pos = pos_pred.shape[0]
        stats = {"num_rpn_pos": logits.new_full((), float(num_pos))}
        if self.loss_type == "ce":
            num = (labels >= 0).sum().clamp_min(1)
            with torch.autocast(logits.device.type, enabled=False):
                per = F.binary_cross_entropy_with_logits(logits.float(), labels.clamp(min=0), reduction="none")
                cls = torch.where(labels >= 0, per, torch.zeros_like(per)).sum() / num
                box = F.l1_loss(pos_pred.float(), pos_target.float(), reduction="sum") / num
            return {"loss_rpn_cls": cls, "loss_rpn_box": box, **stats}
        errors = giou_errors(pos_pred, pos_target, self.rpn_coder.stds) * self.rpn_e_scale  # (P,) in [0, 3.33]
        t = self_balanced_alrp(self.rpn_sb, logits, labels, errors, delta=self.delta, eps=self.eps,
                               weight=self.rpn_weight, group=self.group())
        return {"loss_rpn_cls": t.cls, "loss_rpn_box": t.loc, "rpn_sb_weight": t.sb_weight, **stats}

    def roi(self, logits: Tensor, labels: Tensor, pos_deltas: Tensor, pos_rois: Tensor,
            pos_gt: Tensor) -> dict[str, Tensor]:
        """logits (R, K) sigmoid / (R, K+1) softmax; labels (R,) in 0..K (K = background); positives' (P, 4)
        class-specific deltas, RoIs and gt boxes in RoI order."""
        num_pos, num_rois = pos_deltas.shape[0], logits.shape[0]
        stats = {"num_pos": logits.new_full((), float(num_pos)),
                 "num_rois": logits.new_full((), float(num_rois))}
        if self.loss_type == "ce":
            with torch.autocast(logits.device.type, enabled=False):
                cls = F.cross_entropy(logits.float(), labels, reduction="sum") / max(num_rois, 1)
                if self.reg == "giou":
                    box = _decoded_giou_errors(self.roi_coder, pos_rois, pos_deltas, pos_gt).sum()
                else:
                    target = self.roi_coder.encode(pos_rois.float(), pos_gt.float())
                    box = F.l1_loss(pos_deltas.float(), target, reduction="sum")
            return {"loss_cls": cls, "loss_box": self.reg_weight * box / max(num_rois, 1), **stats}
        k = logits.shape[1]
        targets = torch.zeros((num_rois, k + 1), dtype=torch.float32, device=logits.device)  # (R, K+1)
        targets[torch.arange(num_rois, device=logits.device), labels] = 1.0
        flat_logits, flat_targets = logits.reshape(-1), targets[:, :k].reshape(-1)  # RoI-major, RoI * K + class
        self.watch(flat_logits, flat_targets)
        errors = _decoded_giou_errors(self.roi_coder, pos_rois, pos_deltas, pos_gt)  # (P,) E = 1 - GIoU
        t = self_balanced_alrp(self.roi_sb, flat_logits, flat_targets, errors, delta=self.delta, eps=self.eps,
                               group=self.group())
        return {"loss_cls": t.cls, "loss_box": t.loc, "sb_weight": t.sb_weight, **stats}


class FasterRCNN(nn.Module):
    """A two-stage detector; ``forward`` follows ``docs/ARCHITECTURE.md`` like ``RetinaNet``.

    ``num_pool_levels`` extra levels are max-pools (kernel 1, stride 2) of the last FPN output (P6 from P5).
    """

    def __init__(self, backbone: nn.Module, fpn: nn.Module, rpn: RPN, roi_head: RoIHead,
                 criterion: FasterRCNNCriterion | None = None, num_pool_levels: int = 1) -> None:
        super().__init__()
        self.backbone, self.fpn, self.rpn, self.roi_head = backbone, fpn, rpn, roi_head
        self.criterion = criterion
        self.num_pool_levels = num_pool_levels

    @property
    def num_classes(self) -> int:
        return self.roi_head.num_classes

    def features(self, images: Tensor) -> list[Tensor]:
        """P2-P5 from the FPN, then the max-pooled levels (P6)."""
        feats = self.fpn(self.backbone(images))
        for _ in range(self.num_pool_levels):
            feats.append(F.max_pool2d(feats[-1], kernel_size=1, stride=2))
        return feats

    def forward(self, images: Tensor, targets: list[dict] | None = None) -> dict[str, Tensor] | list[dict]:
        if images.dim() != 4:
            raise ValueError(f"FasterRCNN expects images of shape (B, 3, H, W), got {tuple(images.shape)}")
        if self.training and (targets is None or len(targets) != images.shape[0]):
            raise ValueError("FasterRCNN in training mode needs one target dict per image")
        padded = (int(images.shape[-2]), int(images.shape[-1]))
        sizes = [padded] * images.shape[0] if targets is None else \
            [tuple(int(v) for v in t["img_size"]) if "img_size" in t else padded for t in targets]
        feats = self.features(images)
        rpn_logits, rpn_deltas, anchors, proposals = self.rpn(feats, sizes)
        proposal_boxes = [boxes for boxes, _ in proposals]
        if not self.training:
            factors = None if targets is None else [tuple(float(v) for v in t["scale_factor"]) for t in targets]
            return self.roi_head.detect(feats, proposal_boxes, sizes, factors)
        if self.criterion is None:
            raise RuntimeError("FasterRCNN has no criterion; build it with detector.build.build_model for training")
        gt_boxes, gt_labels = self._gt(targets, images.device)
        losses = self.criterion.rpn(*self.rpn.loss_inputs(rpn_logits, rpn_deltas, anchors, gt_boxes))
        rois, labels, roi_gt = self.roi_head.sample(proposal_boxes, gt_boxes, gt_labels)
        logits, deltas = self.roi_head(feats, rois)
        pos_idx = (labels < self.num_classes).nonzero().squeeze(1)  # one sync for every positive gather
        all_rois = torch.cat(rois)  # (R, 4)
        losses.update(self.criterion.roi(logits, labels, self.roi_head.select_deltas(deltas, labels, pos_idx),
                                         all_rois[pos_idx], roi_gt[pos_idx]))
        return losses

    def _gt(self, targets: Sequence[dict], device: torch.device) -> tuple[list[Tensor], list[Tensor]]:
        boxes, labels = [], []
        for i, t in enumerate(targets):
            check_target(t["boxes"], t["labels"], self.num_classes, t.get("image_id", i))
            boxes.append(t["boxes"].to(device, torch.float32, non_blocking=True))
            labels.append(t["labels"].to(device, torch.long, non_blocking=True))
        return boxes, labels


def build_faster_rcnn(cfg: ModelCfg, loss: LossCfg) -> FasterRCNN:
    """Faster R-CNN from ``cfg.model`` (``rpn``, ``roi``, ``backbone``, ``fpn``, ``test``) with the losses of
    ``cfg.loss`` (``type`` alrp | ce; ``reg`` l1 | giou and ``reg_weight`` for ce)."""
    r, o, b, t = cfg.rpn, cfg.roi, cfg.backbone, cfg.test
    if len(r.anchor_scales) != 1:
        raise ConfigError(f"model.rpn.anchor_scales: one scale per level is supported (the paper's [8]), "
                         f"got {r.anchor_scales}")
    num_fpn = 4  # P2-P5 from C2-C5; levels above are max-pools
    expected = [4 * 2 ** i for i in range(max(len(r.anchor_strides), num_fpn))]
    if list(r.anchor_strides) != expected:
        raise ConfigError(f"model.rpn.anchor_strides must be {expected} (P2-P5, then max-pooled levels), "
                         f"got {r.anchor_strides}")
    rpn_coder, roi_coder = DeltaXYWHCoder(r.coder_stds), DeltaXYWHCoder(o.coder_stds)
    criterion = FasterRCNNCriterion(loss.type, rpn_coder, roi_coder, delta=loss.delta, eps=loss.eps,
                                    sb_init=loss.sb_init, sb_period=loss.sb_period, rpn_weight=r.loss_weight,
                                    rpn_pos_iou=r.pos_iou, reg=loss.reg, reg_weight=loss.reg_weight,
                                    rank_scope=loss.rank_scope)
    backbone = ResNetBackbone(name=b.name, weights=b.weights, frozen_stages=b.frozen_stages, norm_eval=b.norm_eval,
                              dcn_stages=b.dcn_stages, out_stages=(1, 2, 3, 4))
    fpn = FPN(backbone.out_channels, cfg.fpn.out_channels, num_extra=0)
    anchors = AnchorGenerator(strides=r.anchor_strides, octave_base_scale=r.anchor_scales[0], scales_per_octave=1,
                              ratios=r.anchor_ratios)
    rpn = RPN(RPNHead(cfg.fpn.out_channels, anchors.num_anchors, cfg.fpn.out_channels), anchors, rpn_coder,
              pos_iou=r.pos_iou, neg_iou=r.neg_iou, min_pos_iou=r.min_pos_iou,
              num_samples=r.num_samples if r.sampling else None, pos_fraction=r.pos_fraction,
              train_nms=(r.train_nms_pre, r.train_nms_post), test_nms=(r.test_nms_pre, r.test_nms_post),
              nms_iou=r.nms_iou)
    box_head = Shared2FCHead(cfg.fpn.out_channels, cfg.num_classes, o.roi_size, o.fc_channels,
                             use_sigmoid=loss.type == "alrp")
    roi_head = RoIHead(box_head, roi_coder, r.anchor_strides[:num_fpn], roi_size=o.roi_size, pos_iou=o.pos_iou,
                       neg_iou=o.neg_iou, add_gt=o.sampling, num_samples=o.num_samples if o.sampling else None,
                       pos_fraction=o.pos_fraction, score_thr=t.score_thr, nms_iou=t.nms_iou,
                       max_per_img=t.max_per_img)
    return FasterRCNN(backbone, fpn, rpn, roi_head, criterion, num_pool_levels=len(r.anchor_strides) - num_fpn)

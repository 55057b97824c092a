"""Config -> detector. The only place in the model code that reads ``cfg.model`` (see docs/ARCHITECTURE.md)."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from detector.anchors import AnchorGenerator
from detector.assigners import ATSSAssigner, MaxIoUAssigner
from detector.backbone import ResNetBackbone
from detector.box_ops import DeltaXYWHCoder
from detector.config import AssignerCfg, Config, ModelCfg
from detector.faster_rcnn import build_faster_rcnn
from detector.fovea import build_fovea
from detector.fpn import FPN
from detector.head import RetinaHead
from detector.losses import build_criterion
from detector.retinanet import RetinaNet

__all__ = ["ASSIGNERS", "MODELS", "build_assigner", "build_retinanet", "build_model"]

ASSIGNERS: dict[str, Callable[[AssignerCfg], object]] = {
    "atss": lambda c: ATSSAssigner(topk=c.topk),
    "max_iou": lambda c: MaxIoUAssigner(pos_iou=c.pos_iou, neg_iou=c.neg_iou, min_pos_iou=c.min_pos_iou,
                                        low_quality=c.low_quality),
}


def build_assigner(cfg: AssignerCfg) -> object:
    if cfg.type not in ASSIGNERS:
        raise KeyError(f"model.assigner.type: unknown assigner '{cfg.type}'; valid: {', '.join(ASSIGNERS)}")
    return ASSIGNERS[cfg.type](cfg)


def build_retinanet(cfg: ModelCfg, criterion: nn.Module | None = None) -> RetinaNet:
    """RetinaNet from ``cfg.model``; without ``criterion`` it can only run inference."""
    b = cfg.backbone
    backbone = ResNetBackbone(name=b.name, weights=b.weights, frozen_stages=b.frozen_stages, norm_eval=b.norm_eval,
                              dcn_stages=b.dcn_stages)
    anchors = AnchorGenerator(strides=cfg.anchors.strides, octave_base_scale=cfg.anchors.octave_base_scale,
                              scales_per_octave=cfg.anchors.scales_per_octave, ratios=cfg.anchors.ratios)
    num_extra = len(cfg.anchors.strides) - len(backbone.out_channels)
    if num_extra < 0:
        raise ValueError(f"model.anchors.strides: need at least {len(backbone.out_channels)} levels (P3-P5), "
                         f"got {cfg.anchors.strides}")
    fpn = FPN(backbone.out_channels, cfg.fpn.out_channels, num_extra=num_extra, extra_from=cfg.fpn.extra_from,
              relu_before_extra=cfg.fpn.relu_before_extra)
    head = RetinaHead(cfg.fpn.out_channels, anchors.num_anchors, cfg.num_classes, num_convs=cfg.head.num_convs,
                      channels=cfg.head.channels, prior_prob=cfg.head.prior_prob)
    t = cfg.test
    return RetinaNet(backbone, fpn, head, anchors, build_assigner(cfg.assigner), DeltaXYWHCoder(cfg.coder_stds),
                     cfg.num_classes, criterion, nms_pre=t.nms_pre, score_thr=t.score_thr, nms_iou=t.nms_iou,
                     max_per_img=t.max_per_img)


MODELS: dict[str, Callable[[ModelCfg, nn.Module | None], nn.Module]] = {"retinanet": build_retinanet,
                                                                         "fovea": build_fovea}
# detectors that build their own losses from cfg.loss: builder(cfg.model, cfg.loss)
OWN_LOSS_MODELS: dict[str, Callable[..., nn.Module]] = {"faster_rcnn": build_faster_rcnn}


def build_model(cfg: Config) -> nn.Module:
    """The detector of ``cfg.model`` with the criterion of ``cfg.loss``."""
    if cfg.model.type not in MODELS and cfg.model.type not in OWN_LOSS_MODELS:
        raise KeyError(f"model.type: unknown model '{cfg.model.type}'; valid: {', '.join([*MODELS, *OWN_LOSS_MODELS])}")
    if cfg.model.num_classes < 1:
        raise ValueError(f"model.num_classes must be >= 1, got {cfg.model.num_classes}")
    if cfg.model.type in OWN_LOSS_MODELS:
        return OWN_LOSS_MODELS[cfg.model.type](cfg.model, cfg.loss)
    criterion = build_criterion(cfg.loss, cfg.model.num_classes, cfg.model.coder_stds)
    return MODELS[cfg.model.type](cfg.model, criterion)

"""Config -> detector: the registries keyed by the config's ``type`` keys, and ``build_model``.

- :data:`MODELS` (``model.type``): a builder ``Config -> nn.Module``. Dense detectors are registered as
  ``dense(parts)``, where ``parts(cfg.model) -> DenseParts`` names their priors, coder and (optionally) assigner;
  the backbone, FPN, head, criterion and inference are shared (:mod:`detector.dense`).
- :data:`ASSIGNERS` (``model.assigner.type``): ``AssignerCfg -> Assigner``.
- The losses' registry, ``detector.losses.CRITERIA`` (``loss.type``), lives with the losses and is used here.

Adding a loss or a dense head is one module plus one line in one of these dicts (docs/EXTENDING.md).
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

from detector.assigners import Assigner, ATSSAssigner, MaxIoUAssigner
from detector.config import AssignerCfg, Config, ModelCfg
from detector.dense import DenseDetector, DenseParts, build_dense_detector
from detector.errors import ConfigError
from detector.faster_rcnn import build_faster_rcnn
from detector.fovea import FoveaBox, fovea_parts
from detector.losses import RankingCriterion, build_criterion
from detector.retinanet import RetinaNet, retinanet_parts

__all__ = ["ASSIGNERS", "MODELS", "ModelBuilder", "dense", "build_assigner", "build_dense", "build_retinanet",
           "build_fovea", "build_model"]

ASSIGNERS: dict[str, Callable[[AssignerCfg], Assigner]] = {
    "atss": lambda c: ATSSAssigner(topk=c.topk),
    "max_iou": lambda c: MaxIoUAssigner(pos_iou=c.pos_iou, neg_iou=c.neg_iou, min_pos_iou=c.min_pos_iou,
                                        low_quality=c.low_quality),
}


def build_assigner(cfg: AssignerCfg) -> Assigner:
    """The assigner named by ``model.assigner.type``."""
    if cfg.type not in ASSIGNERS:
        raise ConfigError(f"config key 'model.assigner.type': unknown assigner '{cfg.type}'; "
                          f"valid: {', '.join(ASSIGNERS)}")
    return ASSIGNERS[cfg.type](cfg)


def build_dense(cfg: ModelCfg, parts: DenseParts, criterion: RankingCriterion | None = None) -> DenseDetector:
    """A dense detector from ``cfg`` around ``parts`` (the configured assigner unless ``parts`` brings one)."""
    assigner = parts.assigner if parts.assigner is not None else build_assigner(cfg.assigner)
    return build_dense_detector(cfg, parts, assigner, criterion)


def build_retinanet(cfg: ModelCfg, criterion: RankingCriterion | None = None) -> RetinaNet:
    """RetinaNet from ``cfg.model``; without ``criterion`` it can only run inference."""
    return build_dense(cfg, retinanet_parts(cfg), criterion)


def build_fovea(cfg: ModelCfg, criterion: RankingCriterion | None = None) -> FoveaBox:
    """FoveaBox from ``cfg.model``; without ``criterion`` it can only run inference."""
    return build_dense(cfg, fovea_parts(cfg), criterion)


ModelBuilder = Callable[[Config], nn.Module]


def dense(parts: Callable[[ModelCfg], DenseParts]) -> ModelBuilder:
    """The :data:`MODELS` entry of a dense detector: its parts, with the criterion of ``cfg.loss``."""

    def builder(cfg: Config) -> DenseDetector:
        criterion = build_criterion(cfg.loss, cfg.model.num_classes, cfg.model.coder_stds)
        return build_dense(cfg.model, parts(cfg.model), criterion)

    builder.__doc__ = f"Dense detector with the parts of {parts.__module__}.{parts.__qualname__}."
    return builder


MODELS: dict[str, ModelBuilder] = {
    "retinanet": dense(retinanet_parts),
    "fovea": dense(fovea_parts),
    "faster_rcnn": lambda cfg: build_faster_rcnn(cfg.model, cfg.loss),
}


def build_model(cfg: Config) -> nn.Module:
    """The detector of ``cfg.model`` with the criterion of ``cfg.loss``."""
    if cfg.model.type not in MODELS:
        raise ConfigError(f"config key 'model.type': unknown model '{cfg.model.type}'; valid: {', '.join(MODELS)}")
    if cfg.model.num_classes < 1:
        raise ConfigError(f"config key 'model.num_classes' must be >= 1, got {cfg.model.num_classes}")
    return MODELS[cfg.model.type](cfg)

"""RetinaNet: the dense detector of anchors (docs/REPRODUCTION.md §2.1, §2.6, §5).

Its parts (:func:`retinanet_parts`): ``A = scales_per_octave x len(ratios)`` anchors per location
(:class:`detector.anchors.AnchorGenerator`), the configured assigner (ATSS or MaxIoU, ``model.assigner``) and the
normalised delta coder. Everything else, the flattened ranking pool, the criterion call and inference, is the
glue of :mod:`detector.dense`.
"""
from __future__ import annotations

from detector.anchors import AnchorGenerator
from detector.box_ops import DeltaXYWHCoder
from detector.config import ModelCfg
from detector.dense import DenseDetector, DenseParts

__all__ = ["RetinaNet", "retinanet_parts"]


class RetinaNet(DenseDetector):
    """A :class:`~detector.dense.DenseDetector` on anchors with the delta-xywh coder."""


def retinanet_parts(cfg: ModelCfg) -> DenseParts:
    """Anchors of ``model.anchors``, the delta coder of ``model.coder_stds``; the assigner of ``model.assigner``."""
    a = cfg.anchors
    anchors = AnchorGenerator(strides=a.strides, octave_base_scale=a.octave_base_scale,
                              scales_per_octave=a.scales_per_octave, ratios=a.ratios, sizes=a.sizes,
                              round_base=a.round_base, strides_from_image=a.strides_from_image)
    return DenseParts(priors=anchors, coder=DeltaXYWHCoder(cfg.coder_stds), model_cls=RetinaNet)

"""RetinaNet head: shared classification and box towers over all pyramid levels (docs/REPRODUCTION.md §2.6)."""
from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["RetinaHead"]


def _tower(in_channels: int, channels: int, num_convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class RetinaHead(nn.Module):
    """``num_convs`` conv3x3+ReLU per branch, then A*K sigmoid class logits and A*4 box deltas per location.

    Every conv is initialised normal(0, 0.01) with zero bias; the class bias is -log((1-p)/p) so fresh
    scores are ``prior_prob``. Output channel ``a*K + k`` is (anchor a, class k), matching the anchors'
    (H, W, A) flattening after ``permute(0, 2, 3, 1)``.
    """

    def __init__(self, in_channels: int, num_anchors: int, num_classes: int, num_convs: int = 4,
                 channels: int = 256, prior_prob: float = 0.01) -> None:
        super().__init__()
        if not 0.0 < prior_prob < 1.0:
            raise ValueError(f"model.head.prior_prob must be in (0, 1), got {prior_prob}")
        self.num_anchors, self.num_classes = num_anchors, num_classes
        self.cls_convs = _tower(in_channels, channels, num_convs)
        self.reg_convs = _tower(in_channels, channels, num_convs)
        last = channels if num_convs > 0 else in_channels
        self.cls_out = nn.Conv2d(last, num_anchors * num_classes, 3, padding=1)
        self.reg_out = nn.Conv2d(last, num_anchors * 4, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: class logits (N, A*K, H, W) and box deltas (N, A*4, H, W)."""
        cls = [self.cls_out(self.cls_convs(f)) for f in feats]
        reg = [self.reg_out(self.reg_convs(f)) for f in feats]
        return cls, reg

"""Feature pyramid P3-P7 as in mmdet 2.1's RetinaNet FPN (docs/REPRODUCTION.md §5, §8.12).

Lateral 1x1 convs on C3-C5, nearest top-down upsampling to the finer level's size, 3x3 output convs;
P6 is a stride-2 3x3 conv on C5 (``extra_from="input"``) or on P5 (``"output"``), and P7 a stride-2
3x3 conv on P6 with no ReLU in between unless ``relu_before_extra``. torchvision's ``LastLevelP6P7``
always applies a ReLU before P7, so it does not reproduce this and is not used.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FPN"]


class FPN(nn.Module):
    """Feature pyramid over backbone outputs, plus ``num_extra`` stride-2 levels (P6, P7)."""

    def __init__(self, in_channels: Sequence[int], out_channels: int = 256, num_extra: int = 2,
                 extra_from: str = "input", relu_before_extra: bool = False) -> None:
        super().__init__()
        if extra_from not in ("input", "output"):
            raise ValueError(f"model.fpn.extra_from must be 'input' or 'output', got '{extra_from}'")
        self.extra_from, self.relu_before_extra = extra_from, relu_before_extra
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output_convs = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels)
        extra_in = [in_channels[-1] if extra_from == "input" else out_channels] + [out_channels] * (num_extra - 1)
        self.extra_convs = nn.ModuleList(nn.Conv2d(c, out_channels, 3, stride=2, padding=1)
                                         for c in extra_in[:num_extra])
        self.out_channels = out_channels
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # mmdet 2.1 FPN: xavier uniform, zero bias
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output_convs, laterals)]
        x = feats[-1] if self.extra_from == "input" else outs[-1]
        for i, conv in enumerate(self.extra_convs):
            if i > 0 and self.relu_before_extra:
                x = F.relu(x)
            x = conv(x)
            outs.append(x)
        return outs

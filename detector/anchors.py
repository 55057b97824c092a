"""RetinaNet anchors (SPEC §5): sizes stride * octave_base_scale * 2^(i/scales_per_octave), centres on
stride multiples.

With ratio r = h/w, an anchor of size s has w = s/sqrt(r), h = s*sqrt(r). Order within a location is
ratio-major then scale (mmdet 2.1 ``AnchorGenerator`` with ``scale_major=True``: for each ratio, all
scales); a level's anchors are flattened as (H, W, A), row-major over y then x, the order of the head's
``permute(0, 2, 3, 1)``. Anchor (y, x, a) is centred at (x*stride, y*stride) for ``center_offset=0``.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AnchorGenerator"]


class AnchorGenerator:
    """Generates (and caches) xyxy float32 anchors for every pyramid level."""

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128), octave_base_scale: float = 4.0,
                 scales_per_octave: int = 2, ratios: Sequence[float] = (1.0,), center_offset: float = 0.0) -> None:
        if scales_per_octave < 1 or not ratios or any(r <= 0 for r in ratios):
            raise ValueError(f"model.anchors: need scales_per_octave >= 1 and positive ratios, got "
                             f"{scales_per_octave}, {list(ratios)}")
        self.strides = [int(s) for s in strides]
        self.scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        self.ratios = [float(r) for r in ratios]
        self.center_offset = center_offset
        self.num_anchors = len(self.ratios) * len(self.scales)
        self._cache: OrderedDict[tuple, list[Tensor]] = OrderedDict()

    def base_anchors(self, stride: int) -> Tensor:
        """(A, 4) anchors of one level centred at the origin shifted by ``center_offset * stride``."""
        c = self.center_offset * stride
        rows = []
        for r in self.ratios:  # ratio-major, then scale
            for s in self.scales:
                w, h = stride * s / math.sqrt(r), stride * s * math.sqrt(r)
                rows.append([c - 0.5 * w, c - 0.5 * h, c + 0.5 * w, c + 0.5 * h])
        return torch.tensor(rows, dtype=torch.float32)

    def grid_anchors(self, feature_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu"
                     ) -> list[Tensor]:
        """Per level (H*W*A, 4) anchors for feature maps of the given (H, W) sizes, ordered (H, W, A)."""
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"got {len(feature_sizes)} feature maps for {len(self.strides)} anchor strides")
        key = (tuple(tuple(int(v) for v in s) for s in feature_sizes), str(device))
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            if len(self._cache) >= 16:  # test-time sizes vary: keep the 16 most recently used
                self._cache.popitem(last=False)
            out = []
            for (h, w), stride in zip(key[0], self.strides):
                ys = torch.arange(h, dtype=torch.float32, device=device) * stride
                xs = torch.arange(w, dtype=torch.float32, device=device) * stride
                yy, xx = torch.meshgrid(ys, xs, indexing="ij")
                shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
                anchors = shifts + self.base_anchors(stride).to(device)[None]  # (H*W, A, 4)
                out.append(anchors.reshape(-1, 4))
            self._cache[key] = out
        return self._cache[key]

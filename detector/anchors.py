"""RetinaNet anchors (docs/REPRODUCTION.md §5): sizes stride * octave_base_scale * 2^(i/scales_per_octave),
centres on stride multiples.

With ratio r = h/w, an anchor of size s has w = s/sqrt(r), h = s*sqrt(r). Order within a location is
ratio-major then scale (mmdet 2.1 ``AnchorGenerator`` with ``scale_major=True``: for each ratio, all
scales); a level's anchors are flattened as (H, W, A), row-major over y then x, the order of the head's
``permute(0, 2, 3, 1)``. Anchor (y, x, a) is centred at (x*stride, y*stride) for ``center_offset=0``.

Bit-exact with the release: the base anchors are computed in float32 in the release's order of operations,
``h_ratio = sqrt(r)``, ``w_ratio = 1 / h_ratio``, ``w = stride * w_ratio * scale``, then ``c -/+ 0.5 * w``, with
``scale = float32(2^(i/n) * octave_base_scale)`` (the product taken in float64). Computing ``stride*s/sqrt(r)`` in
float64 and rounding once differs by up to 3e-5 px for ratios 0.5 and 2, enough to flip a MaxIoU assignment whose
IoU is exactly 0.5 in one and 0.49999997 in the other. Ratio-1 anchors with power-of-two strides and base scales
are the same either way.

torchvision's ``retinanet_resnet50_fpn`` anchors are reproduced with three options: explicit per-level ``sizes``
(its ``int(32 * 2^(i/3))`` truncated sizes; then ``w = w_ratio * size``), ``round_base`` (its base anchors are
rounded to integers, half to even) and ``strides_from_image`` (its per-axis stride of a level is
``image_size // feature_size``, so P6/P7 of an 800-px-high input get y-strides 61 and 114 instead of 64 and 128).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["AnchorGenerator"]


class AnchorGenerator:
    """Generates (and caches) xyxy float32 anchors for every pyramid level.

    Args:
        strides: one per level; also the base size of a level's anchors unless ``sizes`` is given.
        octave_base_scale, scales_per_octave: anchor sizes ``stride * octave_base_scale * 2^(i/scales_per_octave)``.
        ratios: h/w ratios.
        center_offset: anchor centres at ``(x + center_offset) * stride``.
        sizes: explicit anchor sizes per level (the same count on every level), instead of the octave scales.
        round_base: round the base anchors' coordinates to integers (torchvision).
        strides_from_image: per-axis stride of a level = image size // feature size (torchvision). The image
            size is ``feature_sizes[0] * strides[0]`` unless given to :meth:`grid_anchors`: exact for inputs
            padded to a multiple of the first stride, as the loaders pad them.
    """

    def __init__(self, strides: Sequence[int] = (8, 16, 32, 64, 128), octave_base_scale: float = 4.0,
                 scales_per_octave: int = 2, ratios: Sequence[float] = (1.0,), center_offset: float = 0.0,
                 sizes: Sequence[Sequence[float]] | None = None, round_base: bool = False,
                 strides_from_image: bool = False) -> None:
        if scales_per_octave < 1 or not ratios or any(r <= 0 for r in ratios):
            raise ValueError(f"model.anchors: need scales_per_octave >= 1 and positive ratios, got "
                             f"{scales_per_octave}, {list(ratios)}")
        self.strides = [int(s) for s in strides]
        if sizes is not None:
            sizes = [[float(v) for v in level] for level in sizes]
            if (len(sizes) != len(self.strides) or not sizes[0] or any(len(s) != len(sizes[0]) for s in sizes)
                    or any(v <= 0 for s in sizes for v in s)):
                raise ValueError(f"model.anchors.sizes: need one list of positive sizes per stride "
                                 f"{self.strides}, all of the same length, got {sizes}")
        self.sizes = sizes
        # the release: np.array([2 ** (i / n)]) * octave_base_scale in float64, stored as a float32 tensor
        self.scales = [float(np.float32(2 ** (i / scales_per_octave) * octave_base_scale))
                       for i in range(scales_per_octave)]
        self.ratios = [float(r) for r in ratios]
        self.center_offset = center_offset
        self.round_base = round_base
        self.strides_from_image = strides_from_image
        self.num_anchors = len(self.ratios) * (len(sizes[0]) if sizes is not None else len(self.scales))
        self._cache: OrderedDict[tuple, list[Tensor]] = OrderedDict()

    def base_anchors(self, stride: int) -> Tensor:
        """(A, 4) anchors of the level with this stride, centred at ``center_offset * stride`` (float32)."""
        ratios = torch.tensor(self.ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        if self.sizes is not None:  # torchvision: w = w_ratio * size
            sizes = torch.tensor(self.sizes[self.strides.index(int(stride))], dtype=torch.float32)
            ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)
            hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)
        else:  # the release: w = stride * w_ratio * scale, left to right in float32
            scales = torch.tensor(self.scales, dtype=torch.float32)
            ws = (stride * w_ratios[:, None] * scales[None, :]).reshape(-1)
            hs = (stride * h_ratios[:, None] * scales[None, :]).reshape(-1)
        c = self.center_offset * stride
        base = torch.stack([c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs], dim=-1)
        return base.round() if self.round_base else base

    def level_strides(self, feature_sizes: Sequence[tuple[int, int]],
                      image_size: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """Per level (stride_y, stride_x): the configured strides, or image size // feature size per axis."""
        if not self.strides_from_image:
            return [(s, s) for s in self.strides]
        if image_size is None:
            image_size = (int(feature_sizes[0][0]) * self.strides[0], int(feature_sizes[0][1]) * self.strides[0])
        return [(int(image_size[0]) // int(h), int(image_size[1]) // int(w)) for h, w in feature_sizes]

    def grid_anchors(self, feature_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu",
                     image_size: tuple[int, int] | None = None) -> list[Tensor]:
        """Per level (H*W*A, 4) anchors for feature maps of the given (H, W) sizes, ordered (H, W, A).

        ``image_size`` (h, w) of the padded input only matters with ``strides_from_image``.
        """
        if len(feature_sizes) != len(self.strides):
            raise ValueError(f"got {len(feature_sizes)} feature maps for {len(self.strides)} anchor strides")
        sizes = tuple(tuple(int(v) for v in s) for s in feature_sizes)
        image = tuple(int(v) for v in image_size) if image_size is not None and self.strides_from_image else None
        key = (sizes, image, str(device))
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            if len(self._cache) >= 16:  # test-time sizes vary: keep the 16 most recently used
                self._cache.popitem(last=False)
            out = []
            for (h, w), stride, (sy, sx) in zip(sizes, self.strides, self.level_strides(sizes, image)):
                ys = torch.arange(h, dtype=torch.float32, device=device) * sy
                xs = torch.arange(w, dtype=torch.float32, device=device) * sx
                yy, xx = torch.meshgrid(ys, xs, indexing="ij")
                shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)  # (H*W, 1, 4)
                anchors = shifts + self.base_anchors(stride).to(device)[None]  # (H*W, A, 4)
                out.append(anchors.reshape(-1, 4))
            self._cache[key] = out
        return self._cache[key]

"""Anchor sizes, order and centres per level against hand-computed values (SPEC §5)."""
from __future__ import annotations

import math

import pytest
import torch

from detector.anchors import AnchorGenerator


def _wh(anchors: torch.Tensor) -> torch.Tensor:
    return anchors[:, 2:] - anchors[:, :2]


@pytest.mark.parametrize("stride", [8, 16, 32, 64, 128])
def test_sizes_two_scales_one_ratio(stride):
    gen = AnchorGenerator(octave_base_scale=4, scales_per_octave=2, ratios=[1.0])
    base = gen.base_anchors(stride)
    s0, s1 = 4 * stride, 4 * stride * math.sqrt(2)
    expected = torch.tensor([[-s0 / 2, -s0 / 2, s0 / 2, s0 / 2], [-s1 / 2, -s1 / 2, s1 / 2, s1 / 2]])
    torch.testing.assert_close(base, expected)


def test_ratio_major_order_and_shapes():
    gen = AnchorGenerator(octave_base_scale=4, scales_per_octave=3, ratios=[0.5, 1.0, 2.0])
    assert gen.num_anchors == 9
    wh = _wh(gen.base_anchors(8))
    sizes = [32.0, 32 * 2 ** (1 / 3), 32 * 2 ** (2 / 3)]
    expected = []
    for r in (0.5, 1.0, 2.0):  # for each ratio (h/w), all scales
        for s in sizes:
            expected.append([s / math.sqrt(r), s * math.sqrt(r)])
    torch.testing.assert_close(wh, torch.tensor(expected))
    assert wh[0, 0] > wh[0, 1] and wh[8, 1] > wh[8, 0]  # ratio 0.5 is wide, ratio 2 is tall


def test_grid_centres_on_stride_multiples_hwa_order():
    gen = AnchorGenerator(strides=[8, 16], scales_per_octave=2, ratios=[1.0])
    lvl0, lvl1 = gen.grid_anchors([(2, 3), (1, 2)])
    assert lvl0.shape == (2 * 3 * 2, 4) and lvl1.shape == (1 * 2 * 2, 4)
    centres = (lvl0[:, :2] + lvl0[:, 2:]) / 2
    # index (y * W + x) * A + a -> centre (x * stride, y * stride)
    for y in range(2):
        for x in range(3):
            for a in range(2):
                torch.testing.assert_close(centres[(y * 3 + x) * 2 + a], torch.tensor([8.0 * x, 8.0 * y]))
    torch.testing.assert_close(lvl1[3], torch.tensor([16 - 32 * math.sqrt(2), -32 * math.sqrt(2),
                                                       16 + 32 * math.sqrt(2), 32 * math.sqrt(2)]))


def test_counts_at_512_and_cache():
    gen = AnchorGenerator()
    sizes = [(64, 64), (32, 32), (16, 16), (8, 8), (4, 4)]
    levels = gen.grid_anchors(sizes)
    assert sum(a.shape[0] for a in levels) == 2 * (64 * 64 + 32 * 32 + 16 * 16 + 8 * 8 + 4 * 4)
    assert gen.grid_anchors(sizes)[0] is levels[0]


def test_bad_anchor_config():
    with pytest.raises(ValueError, match="model.anchors"):
        AnchorGenerator(ratios=[])
    with pytest.raises(ValueError, match="feature maps"):
        AnchorGenerator().grid_anchors([(4, 4)])

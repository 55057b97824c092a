"""Anchor sizes, order and centres per level against hand-computed values (docs/REPRODUCTION.md §5)."""
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


# ----------------------------------------------------------------------------------------------------------------
# Bit-exact base anchors (the release's float32 order of operations)
# ----------------------------------------------------------------------------------------------------------------
# Hand derivation in float32 (f = round to float32), stride 128, octave base scale 4, 2 scales per octave:
#   f(sqrt(f(0.5))) = 0x1.6a09e6p-1 (sqrt(0.5) = 0x1.6a09e667f3bcdp-1 rounded down), so
#   w_ratio(0.5) = f(1 / 0x1.6a09e6p-1) = 0x1.6a09e6p+0 = h_ratio(2), h_ratio(0.5) = w_ratio(2) = 0x1.6a09e6p-1;
#   scales = f(2^(0/2) * 4) = 4 and f(2^(1/2) * 4) = 0x1.6a09e6p+2.
#   ratio 0.5, scale 4*sqrt(2): w = f(f(128 * 0x1.6a09e6p+0) * 0x1.6a09e6p+2) = 2^9 * f(0x1.6a09e6^2)
#     = 2^9 * 0x1.fffffep+0 (0x1.6a09e6^2 = 1.99999990...), half-width 0x1.fffffep+8 = 511.99997 (not 512);
#     h = f(f(128 * 0x1.6a09e6p-1) * 0x1.6a09e6p+2) = 2^8 * 0x1.fffffep+0, half-height 0x1.fffffep+7.
#   ratio 0.5, scale 4: half-width 128 * 0x1.6a09e6p+0 * 4 / 2 = 0x1.6a09e6p+8, half-height 0x1.6a09e6p+7.
#   ratio 1: half-sides 256 (scale 4) and 128 * 0x1.6a09e6p+2 / 2 = 0x1.6a09e6p+8 (scale 4*sqrt(2)).
#   ratio 2 mirrors ratio 0.5 (w and h swapped).
# Rounding stride*scale/sqrt(r) once from float64 gives 512 and 256 for the 4*sqrt(2) anchors instead.
_H = float.fromhex
_EXPECTED_HALF_WH_128 = {  # (ratio, scale index) -> (half-width, half-height)
    (0.5, 0): (_H("0x1.6a09e6p+8"), _H("0x1.6a09e6p+7")),
    (0.5, 1): (_H("0x1.fffffep+8"), _H("0x1.fffffep+7")),
    (1.0, 0): (256.0, 256.0),
    (1.0, 1): (_H("0x1.6a09e6p+8"), _H("0x1.6a09e6p+8")),
    (2.0, 0): (_H("0x1.6a09e6p+7"), _H("0x1.6a09e6p+8")),
    (2.0, 1): (_H("0x1.fffffep+7"), _H("0x1.fffffep+8")),
}


def test_base_anchors_bit_exact_float32_release_order():
    base = AnchorGenerator(octave_base_scale=4, scales_per_octave=2, ratios=[0.5, 1.0, 2.0]).base_anchors(128)
    assert base.dtype == torch.float32
    for i, r in enumerate((0.5, 1.0, 2.0)):
        for j in range(2):
            hw, hh = _EXPECTED_HALF_WH_128[(r, j)]
            assert base[i * 2 + j].tolist() == [-hw, -hh, hw, hh], (r, j)  # float32 -> float64 is exact: bit for bit
    assert base[1, 2].item() != 512.0  # the float64-once value


def test_base_anchors_bit_exact_at_stride_8():
    """Strides are powers of two: the stride-8 values are the stride-128 ones scaled by 1/16, exactly."""
    base = AnchorGenerator(octave_base_scale=4, scales_per_octave=2, ratios=[0.5, 1.0, 2.0]).base_anchors(8)
    for i, r in enumerate((0.5, 1.0, 2.0)):
        for j in range(2):
            hw, hh = _EXPECTED_HALF_WH_128[(r, j)]
            assert base[i * 2 + j].tolist() == [-hw / 16, -hh / 16, hw / 16, hh / 16], (r, j)


def test_ratio_one_anchors_unchanged_by_float32_order():
    """The default / BCCD / ATSS configs (ratio 1 only, power-of-two scales) get the float64-once values exactly."""
    for obs, spo in ((2.0, 2), (4.0, 2), (4.0, 3)):
        gen = AnchorGenerator(octave_base_scale=obs, scales_per_octave=spo, ratios=[1.0])
        for stride in (8, 16, 32, 64, 128):
            half = [0.5 * stride * obs * 2 ** (i / spo) for i in range(spo)]
            want = torch.tensor([[-h, -h, h, h] for h in half], dtype=torch.float32)  # float64, rounded once
            assert torch.equal(gen.base_anchors(stride), want)


# ----------------------------------------------------------------------------------------------------------------
# torchvision's anchors (explicit sizes, rounding, strides from the image size) against torchvision itself
# ----------------------------------------------------------------------------------------------------------------
TV_SIZES = [[32, 40, 50], [64, 80, 101], [128, 161, 203], [256, 322, 406], [512, 645, 812]]


@pytest.mark.parametrize("image_hw", [(800, 1216), (512, 640), (384, 384)])
def test_torchvision_anchor_options_match_torchvision(image_hw):
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    sizes = tuple((x, int(x * 2 ** (1.0 / 3)), int(x * 2 ** (2.0 / 3))) for x in [32, 64, 128, 256, 512])
    assert [list(s) for s in sizes] == TV_SIZES  # the truncated sizes of retinanet_resnet50_fpn
    tv = TVAnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    h, w = image_hw
    feats = []
    for s in (8, 16, 32, 64, 128):  # ResNet/FPN map sizes: ceil-halving from an input padded to 32
        feats.append(torch.zeros(1, 1, -(-h // s), -(-w // s)))
    want = tv(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), feats)[0]
    ours = AnchorGenerator(sizes=TV_SIZES, ratios=[0.5, 1.0, 2.0], round_base=True, strides_from_image=True)
    assert ours.num_anchors == 9
    got = torch.cat(ours.grid_anchors([f.shape[-2:] for f in feats]))
    assert torch.equal(got, want)
    # the same with the image size given explicitly
    ours._cache.clear()
    assert torch.equal(torch.cat(ours.grid_anchors([f.shape[-2:] for f in feats], image_size=(h, w))), want)


def test_strides_from_image_quirk_at_800():
    gen = AnchorGenerator(sizes=TV_SIZES, ratios=[1.0], strides_from_image=True)
    # 800 x 1216 input: P6 is 13 x 19 and P7 7 x 10 -> y-strides 800 // 13 = 61 and 800 // 7 = 114
    assert gen.level_strides([(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)]) == [
        (8, 8), (16, 16), (32, 32), (61, 64), (114, 121)]
    assert AnchorGenerator().level_strides([(1, 1)] * 5) == [(s, s) for s in (8, 16, 32, 64, 128)]


def test_round_base_half_to_even():
    """Size 101, ratio 1: half-side 50.5 rounds to 50 (torch.round: half to even), so the anchor is 100 wide."""
    gen = AnchorGenerator(sizes=TV_SIZES, ratios=[1.0], round_base=True)
    assert gen.base_anchors(16)[2].tolist() == [-50.0, -50.0, 50.0, 50.0]
    assert gen.base_anchors(64)[1].tolist() == [-161.0, -161.0, 161.0, 161.0]  # 322 / 2 exactly


def test_bad_sizes():
    with pytest.raises(ValueError, match="model.anchors.sizes"):
        AnchorGenerator(sizes=[[32, 40]] * 4)
    with pytest.raises(ValueError, match="model.anchors.sizes"):
        AnchorGenerator(sizes=[[32, 40]] * 4 + [[1]])

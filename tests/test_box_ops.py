"""Box helpers and the delta-xywh coder against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from detector.box_ops import MAX_LOG_RATIO, DeltaXYWHCoder, box_centers, clip_boxes


def test_max_log_ratio_is_ln_1000_over_16():
    assert MAX_LOG_RATIO == pytest.approx(4.1351665567, abs=1e-9)


def test_encode_hand_computed():
    coder = DeltaXYWHCoder((0.1, 0.1, 0.2, 0.2))
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 25.0, 15.0]])  # centre (15, 10), size 20 x 10
    d = coder.encode(anchor, gt)
    # dx = (15 - 5) / 10 = 1, dy = (10 - 5) / 10 = 0.5, dw = ln 2, dh = 0; divided by the stds
    expected = torch.tensor([[10.0, 5.0, math.log(2.0) / 0.2, 0.0]])
    torch.testing.assert_close(d, expected)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(200, 2, generator=g) * 500
    anchors = torch.cat([xy, xy + 8 + torch.rand(200, 2, generator=g) * 200], dim=1)
    xy2 = anchors[:, :2] + torch.randn(200, 2, generator=g) * 10
    boxes = torch.cat([xy2, xy2 + (anchors[:, 2:] - anchors[:, :2]) * (0.3 + 2 * torch.rand(200, 2, generator=g))], 1)
    coder = DeltaXYWHCoder((0.1, 0.1, 0.2, 0.2))
    torch.testing.assert_close(coder.decode(anchors, coder.encode(anchors, boxes)), boxes, rtol=1e-5, atol=1e-3)


def test_decode_clamps_log_ratio_and_clips():
    coder = DeltaXYWHCoder((0.1, 0.1, 0.2, 0.2))
    anchor = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    big = coder.decode(anchor, torch.tensor([[0.0, 0.0, 100.0, -100.0]]))
    w, h = big[0, 2] - big[0, 0], big[0, 3] - big[0, 1]
    assert w.item() == pytest.approx(10 * 1000 / 16, rel=1e-5)  # dw clamped to +ln(1000/16)
    assert h.item() == pytest.approx(10 * 16 / 1000, rel=1e-5)  # dh clamped to -ln(1000/16)
    clipped = coder.decode(anchor, torch.tensor([[0.0, 0.0, 100.0, 0.0]]), max_shape=(8, 30))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 30.0, 8.0]]))


def test_clip_and_centres():
    boxes = torch.tensor([[-5.0, 2.0, 50.0, 70.0], [1.0, -1.0, 3.0, 5.0]])
    expected = torch.tensor([[0.0, 2.0, 40.0, 60.0], [1.0, 0.0, 3.0, 5.0]])
    torch.testing.assert_close(clip_boxes(boxes, (60, 40)), expected)
    torch.testing.assert_close(box_centers(boxes), torch.tensor([[22.5, 36.0], [2.0, 2.0]]))


def test_bad_stds_rejected():
    with pytest.raises(ValueError, match="stds"):
        DeltaXYWHCoder((0.1, 0.1, 0.2))
    with pytest.raises(ValueError, match="positive"):
        DeltaXYWHCoder((0.1, 0.0, 0.2, 0.2))

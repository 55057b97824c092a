"""ATSS and MaxIoU assignment on constructed cases with hand-derived expectations."""
from __future__ import annotations

import statistics

import pytest
import torch

from detector.anchors import AnchorGenerator
from detector.assigners import (BACKGROUND, IGNORE, Assigner, ATSSAssigner, MaxIoUAssigner, atss_assign,
                                max_iou_assign)


def _pyramid(size: int = 128, scales_per_octave: int = 1) -> tuple[torch.Tensor, list[int]]:
    """Anchors of one square image: strides 8..128, square anchors of 4 * stride (1 scale)."""
    gen = AnchorGenerator(scales_per_octave=scales_per_octave, ratios=[1.0])
    sizes = [(max(1, size // s), max(1, size // s)) for s in gen.strides]
    levels = gen.grid_anchors(sizes)
    return torch.cat(levels), [a.shape[0] for a in levels]


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _atss_oracle(anchors: torch.Tensor, counts: list[int], gts: torch.Tensor, topk: int = 9) -> list[int]:
    """A plain-Python ATSS written from the rule's description, one gt and one anchor at a time."""
    A, G = anchors.tolist(), gts.tolist()
    best = [(-1.0, BACKGROUND)] * len(A)
    for g, gt in enumerate(G):
        gcx, gcy = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2
        cands, start = [], 0
        for n in counts:
            d = sorted(range(start, start + n), key=lambda i: ((A[i][0] + A[i][2]) / 2 - gcx) ** 2
                       + ((A[i][1] + A[i][3]) / 2 - gcy) ** 2)
            cands += d[:topk]
            start += n
        ious = [_iou(A[i], gt) for i in cands]
        thr = statistics.mean(ious) + statistics.stdev(ious)
        for i, iou in zip(cands, ious):
            cx, cy = (A[i][0] + A[i][2]) / 2, (A[i][1] + A[i][3]) / 2
            inside = min(cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy) > 0.01
            if iou >= thr and inside and iou > best[i][0]:
                best[i] = (iou, g)
    return [b[1] for b in best]


def test_atss_gt_between_levels_takes_both_levels():
    anchors, counts = _pyramid()
    gt = torch.tensor([[9.5, 9.5, 54.5, 54.5]])  # 45 x 45 at (32, 32): between the 32 (P3) and 64 (P4) anchors
    out = atss_assign(anchors, counts, gt)
    pos = (out == 0).nonzero().flatten().tolist()
    p3_centre = (4 * 16 + 4)  # P3 grid 16 x 16, location (y=4, x=4)
    p4_centre = counts[0] + (2 * 8 + 2)  # P4 grid 8 x 8, location (y=2, x=2)
    assert p3_centre in pos and p4_centre in pos  # IoU 1024/2025 = 0.506 and 2025/4096 = 0.494
    assert out.tolist() == _atss_oracle(anchors, counts, gt)


def test_atss_small_gt_only_anchors_with_centre_inside():
    anchors, counts = _pyramid()
    gt = torch.tensor([[95.0, 95.0, 105.0, 105.0]])  # 10 x 10: P3 anchor centres 96 and 104 lie inside
    out = atss_assign(anchors, counts, gt)
    expected = sorted((y * 16 + x) for y in (12, 13) for x in (12, 13))
    assert (out == 0).nonzero().flatten().tolist() == expected
    tiny = torch.tensor([[97.0, 97.0, 102.0, 102.0]])  # contains no anchor centre: no positive at all
    assert (atss_assign(anchors, counts, tiny) == BACKGROUND).all()


@pytest.mark.parametrize("swap", [False, True])
def test_atss_competing_gts_higher_iou_wins(swap):
    anchors, counts = _pyramid()
    close = [1.0, 1.0, 31.0, 33.0]  # IoU 930/1054 = 0.88 with the P3 anchor [0, 0, 32, 32] centred at (16, 16)
    far = [4.0, 4.0, 36.0, 36.0]  # IoU 784/1264 = 0.62 with that anchor
    gts = torch.tensor([far, close] if swap else [close, far])
    out = atss_assign(anchors, counts, gts)
    anchor = 2 * 16 + 2
    torch.testing.assert_close(anchors[anchor], torch.tensor([0.0, 0.0, 32.0, 32.0]))
    assert out[anchor].item() == (1 if swap else 0)
    assert out.tolist() == _atss_oracle(anchors, counts, gts)


def test_atss_random_matches_oracle():
    # one anchor per location: with several, equal centre distances are tied up to float rounding of the centres
    anchors, counts = _pyramid()
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(12, 2, generator=g) * 90
    gts = torch.cat([xy, xy + 8 + torch.rand(12, 2, generator=g) * 60], dim=1)
    assert ATSSAssigner(topk=9)(anchors, counts, gts).tolist() == _atss_oracle(anchors, counts, gts)


def test_empty_gt_all_background():
    anchors, counts = _pyramid()
    empty = torch.zeros(0, 4)
    for out in (atss_assign(anchors, counts, empty), max_iou_assign(anchors, empty)):
        assert out.dtype == torch.int64 and out.shape == (anchors.shape[0],)
        assert (out == BACKGROUND).all()


def test_max_iou_bands():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],  # IoU 1 -> positive
                            [0.0, 0.0, 10.0, 4.5],  # IoU 0.45 -> ignored
                            [0.0, 0.0, 10.0, 3.0],  # IoU 0.30 -> background
                            [0.0, 0.0, 10.0, 5.5],  # IoU 0.55 -> positive
                            [0.0, 0.0, 10.0, 4.0]])  # IoU 0.40 -> ignored (neg needs < 0.4)
    out = MaxIoUAssigner(0.5, 0.4)(anchors, [5], gt)
    assert out.tolist() == [0, IGNORE, BACKGROUND, 0, IGNORE]


def test_max_iou_assignment_quality_is_the_matched_iou():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 4.5], [0.0, 0.0, 10.0, 3.0],
                            [0.0, 0.0, 10.0, 5.5]])
    assigner = MaxIoUAssigner(0.5, 0.4)
    assert isinstance(assigner, Assigner) and not assigner.uses_predictions
    out = assigner.assign(anchors, [4], gt, torch.tensor([2]))
    assert out.gt_index.tolist() == [0, IGNORE, BACKGROUND, 0]
    torch.testing.assert_close(out.quality, torch.tensor([1.0, 0.0, 0.0, 0.55]))  # 0 where not matched


def test_atss_assignment_quality_is_the_matched_iou():
    anchors, counts = _pyramid()
    gts = torch.tensor([[20.0, 24.0, 70.0, 90.0], [60.0, 10.0, 120.0, 50.0]])
    out = ATSSAssigner(topk=9).assign(anchors, counts, gts, torch.tensor([0, 1]))
    assert out.gt_index.tolist() == _atss_oracle(anchors, counts, gts)
    want = [_iou(a, gts[g].tolist()) if g >= 0 else 0.0 for a, g in zip(anchors.tolist(), out.gt_index.tolist())]
    torch.testing.assert_close(out.quality, torch.tensor(want), rtol=1e-5, atol=1e-6)
    assert (out.gt_index >= 0).any()
    empty = ATSSAssigner().assign(anchors, counts, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert (empty.gt_index == BACKGROUND).all() and not empty.quality.any()


def test_max_iou_low_quality_matches():
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0], [500.0, 500.0, 510.0, 510.0]])
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0],
                            [100.0, 100.0, 110.0, 103.0],  # best anchor of gt 1, IoU 0.3
                            [100.0, 100.0, 110.0, 102.0],  # IoU 0.2
                            [300.0, 300.0, 310.0, 310.0]])  # overlaps nothing; gt 2 overlaps no anchor
    assert max_iou_assign(anchors, gts).tolist() == [0, 1, BACKGROUND, BACKGROUND]
    assert max_iou_assign(anchors, gts, low_quality=False).tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND]
    assert max_iou_assign(anchors, gts, min_pos_iou=0.35).tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND]


def test_max_iou_low_quality_later_gt_wins_shared_anchor():
    gts = torch.tensor([[0.0, 0.0, 10.0, 3.0], [0.0, 7.0, 10.0, 10.0]])  # both best matched by the same anchor
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    assert max_iou_assign(anchors, gts).tolist() == [1, BACKGROUND]


def test_bad_assigner_args():
    with pytest.raises(ValueError, match="model.assigner"):
        MaxIoUAssigner(pos_iou=0.3, neg_iou=0.4)
    with pytest.raises(ValueError, match="topk"):
        ATSSAssigner(topk=0)

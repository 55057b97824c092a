"""Faster R-CNN: RPN and RoI targets on hand-made boxes, sampling counts, proposals, RoI level mapping, the two
stages' losses against hand-computed values, inference, and a short run through train.py (CPU, random init)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torchvision.ops import roi_align

from detector.box_ops import DeltaXYWHCoder
from detector.build import build_model
from detector.config import load_config
from detector.faster_rcnn import FasterRCNN, FasterRCNNCriterion
from detector.roi_head import RoIHead, Shared2FCHead, map_roi_levels, multilevel_roi_align, roi_targets
from detector.rpn import generate_proposals, random_sample, rpn_labels

REPO = Path(__file__).resolve().parents[1]
SHAPES = REPO / "configs" / "shapes_faster_rcnn_alrp.yaml"
SMALL = ["model.backbone.weights=null", "model.fpn.out_channels=16", "model.roi.fc_channels=32",
         "model.rpn.train_nms_pre=1000", "model.rpn.train_nms_post=1000"]  # every anchor competes for a proposal
STDS = [0.1, 0.1, 0.2, 0.2]


def _box(x1, y1, x2, y2) -> list[float]:
    return [float(x1), float(y1), float(x2), float(y2)]


# ------------------------------------------------------------------ RPN targets
def test_rpn_labels_thresholds_and_low_quality_match():
    gt = torch.tensor([_box(0, 0, 10, 10), _box(40, 40, 50, 50), _box(60, 60, 70, 70)])
    anchors = torch.tensor([
        _box(0, 0, 10, 10),  # IoU 1.0 with gt 0: positive
        _box(0, 0, 10, 8),  # 0.8 >= 0.7: positive
        _box(0, 0, 10, 5),  # 0.5 in [0.3, 0.7): ignored
        _box(0, 0, 10, 2),  # 0.2 < 0.3: negative
        _box(20, 20, 30, 30),  # 0: negative
        _box(40, 40, 50, 45),  # 0.5 with gt 1, its best anchor (>= min_pos 0.3): positive by the low-quality match
        _box(60, 60, 70, 62),  # 0.2 with gt 2, its best anchor but below min_pos 0.3: negative
    ])
    labels, matched = rpn_labels(anchors, gt, pos_iou=0.7, neg_iou=0.3, min_pos_iou=0.3)
    assert labels.tolist() == [1, 1, -1, 0, 0, 1, 0]
    assert matched[labels == 1].tolist() == [0, 0, 1]


def test_rpn_labels_with_an_image_without_objects():
    labels, _ = rpn_labels(torch.tensor([_box(0, 0, 10, 10), _box(5, 5, 9, 9)]), torch.zeros((0, 4)))
    assert labels.tolist() == [0, 0]


@pytest.mark.parametrize("num_pos,exp_pos,exp_neg", [(200, 128, 128), (10, 10, 246)])
def test_rpn_random_sampling_counts(num_pos, exp_pos, exp_neg):
    torch.manual_seed(0)
    gt = torch.tensor([_box(0, 0, 10, 10)])
    anchors = torch.cat([gt.expand(num_pos, 4), torch.tensor(_box(50, 50, 60, 60)).expand(1000, 4)])
    labels, _ = rpn_labels(anchors, gt, num_samples=256, pos_fraction=0.5)
    assert int((labels == 1).sum()) == exp_pos and int((labels == 0).sum()) == exp_neg
    assert bool((labels[:num_pos] != 0).all()) and bool((labels[num_pos:] != 1).all())  # only true positives
    assert int((labels == -1).sum()) == anchors.shape[0] - exp_pos - exp_neg


def test_random_sample_draws_distinct_members():
    torch.manual_seed(1)
    pos = torch.zeros(100, dtype=torch.bool)
    pos[:40] = True
    neg = ~pos
    neg[90:] = False  # 50 negatives
    p, n = random_sample(pos, neg, 64, 0.25)
    assert p.numel() == 16 and n.numel() == 48
    assert len(set(p.tolist())) == 16 and len(set(n.tolist())) == 48
    assert bool(pos[p].all()) and bool(neg[n].all())
    p, n = random_sample(pos, neg, 200, 0.25)  # fewer than asked: everything
    assert p.numel() == 40 and n.numel() == 50


# ------------------------------------------------------------------ proposals
def test_generate_proposals_nms_per_level_clipping_and_top_k():
    coder = DeltaXYWHCoder(STDS)
    # one anchor per location (A = 1) on a 1x3 map per level; deltas 0 -> proposals = anchors, clipped
    level_anchors = torch.tensor([_box(0, 0, 20, 20), _box(1, 1, 21, 21), _box(100, 100, 120, 120)])
    logits = torch.tensor([3.0, 2.0, 1.0]).view(1, 1, 1, 3)
    deltas = torch.zeros(1, 4, 1, 3)
    out = generate_proposals([logits, logits.clone()], [deltas, deltas.clone()], [level_anchors, level_anchors],
                             coder, [(30, 40)], nms_pre=1000, nms_post=1000, nms_iou=0.7)
    boxes, scores = out[0]
    # per level: anchor 1 overlaps anchor 0 (IoU 0.82) and is suppressed; anchor 2 lies outside the 40x30
    # image, is clipped to zero size and dropped; the same box on the other level survives (NMS per level)
    assert boxes.tolist() == [_box(0, 0, 20, 20)] * 2
    torch.testing.assert_close(scores, torch.sigmoid(torch.tensor([3.0, 3.0])))
    boxes, _ = generate_proposals([logits], [deltas], [level_anchors], coder, [(30, 40)], nms_pre=2, nms_post=1,
                                  nms_iou=0.9)[0]
    assert boxes.tolist() == [_box(0, 0, 20, 20)]  # nms_post keeps the best one
    boxes, _ = generate_proposals([logits], [deltas], [level_anchors], coder, [(30, 40)], nms_pre=1, nms_post=5,
                                  nms_iou=0.9)[0]
    assert boxes.shape[0] == 1  # nms_pre keeps one anchor of the level


# ------------------------------------------------------------------ RoI targets and features
def test_roi_targets_alrp_all_proposals_no_low_quality():
    gt = torch.tensor([_box(0, 0, 10, 10), _box(50, 50, 60, 60)])
    labels = torch.tensor([2, 1])
    props = torch.tensor([
        _box(0, 0, 10, 10),  # IoU 1 with gt 0
        _box(0, 0, 10, 5),  # exactly 0.5: positive
        _box(0, 0, 10, 4.9),  # 0.49: negative
        _box(50, 50, 60, 53),  # 0.3 with gt 1, its best proposal: still negative (no low-quality match)
        _box(80, 80, 90, 90),
    ])
    rois, lab, tgt = roi_targets(props, gt, labels, num_classes=3, pos_iou=0.5, neg_iou=0.5)
    assert torch.equal(rois, props)  # every proposal, in order, no gt added
    assert lab.tolist() == [2, 2, 3, 3, 3]
    assert tgt[:2].tolist() == [_box(0, 0, 10, 10)] * 2


def test_roi_targets_baseline_adds_gt_and_samples():
    torch.manual_seed(0)
    gt = torch.tensor([_box(0, 0, 10, 10), _box(50, 50, 60, 60)])
    labels = torch.tensor([0, 1])
    near = torch.tensor(_box(0, 0, 10, 8)).expand(300, 4)  # IoU 0.8 with gt 0
    far = torch.tensor(_box(100, 100, 110, 110)).expand(1000, 4)
    rois, lab, tgt = roi_targets(torch.cat([near, far]), gt, labels, 4, add_gt=True, num_samples=512,
                                 pos_fraction=0.25)
    assert rois.shape[0] == 512 and int((lab < 4).sum()) == 128 and int((lab == 4).sum()) == 384
    # few positives: both gt boxes (matched to themselves) and 5 proposals, the rest negatives
    rois, lab, tgt = roi_targets(torch.cat([near[:5], far]), gt, labels, 4, add_gt=True, num_samples=512,
                                 pos_fraction=0.25)
    pos = lab < 4
    assert int(pos.sum()) == 7 and rois.shape[0] == 512
    assert sorted(lab[pos].tolist()) == [0] * 6 + [1]
    assert bool((rois[lab == 1] == gt[1]).all()) and bool((tgt[lab == 1] == gt[1]).all())


@pytest.mark.parametrize("side,level", [(20, 0), (111.9, 0), (112, 1), (223, 1), (224, 2), (448, 3), (2000, 3)])
def test_map_roi_levels_follows_mmdet(side, level):
    # floor(log2(side / 56 + 1e-6)), clamped to P2..P5
    assert map_roi_levels(torch.tensor([[0.0, 0.0, side, side]]), 4).item() == level


def test_multilevel_roi_align_pools_each_roi_from_its_level():
    torch.manual_seed(0)
    feats = [torch.randn(2, 3, 64 // s, 64 // s) for s in (1, 2, 4, 8)]  # strides 4..32 of a 256-px image
    rois = torch.tensor([[0, 0.0, 0.0, 50.0, 50.0], [1, 10.0, 10.0, 150.0, 130.0], [1, 0.0, 0.0, 250.0, 250.0]])
    out = multilevel_roi_align(feats, rois, [4, 8, 16, 32], output_size=7)
    for i, level in enumerate([0, 1, 2]):
        expect = roi_align(feats[level], rois[i:i + 1], 7, spatial_scale=1 / [4, 8, 16, 32][level], sampling_ratio=-1,
                           aligned=True)
        torch.testing.assert_close(out[i:i + 1], expect)


# ------------------------------------------------------------------ losses (hand-computed values)
def _criterion(loss_type: str, reg: str = "l1", reg_weight: float = 1.0) -> FasterRCNNCriterion:
    return FasterRCNNCriterion(loss_type, DeltaXYWHCoder(STDS), DeltaXYWHCoder(STDS), reg=reg, reg_weight=reg_weight,
                               rpn_weight=0.2, rpn_pos_iou=0.7).train()


def test_rpn_alrp_loss_weight_and_error_scale():
    crit = _criterion("alrp")
    crit.set_period(100)
    logits = torch.tensor([5.0, -10.0, 3.0], requires_grad=True)
    labels = torch.tensor([1.0, 0.0, -1.0])  # the ignored entry ranks above nothing
    pred = torch.zeros(1, 4, requires_grad=True)  # unit box at the origin
    target = torch.tensor([[5.0, 0.0, 0.0, 0.0]])  # shifted by half its width: IoU = GIoU = 1/3
    out = crit.rpn(logits, labels, pred, target)
    e = (1 - 1 / 3) / (2 * (1 - 0.7))  # E scaled by 1 / (2 (1 - 0.7))
    assert out["loss_rpn_cls"].item() == 0.0  # no negative within delta of the positive
    assert out["loss_rpn_box"].item() == pytest.approx(50.0 * 0.2 * e, rel=1e-5)  # SB 50 x weight 0.2 x E / rank 1
    (out["loss_rpn_cls"] + out["loss_rpn_box"]).backward()
    assert pred.grad.abs().sum() > 0


def test_roi_alrp_loss_on_decoded_boxes():
    crit = _criterion("alrp")
    crit.set_period(100)
    logits = torch.full((2, 3), -10.0)
    logits[0, 1] = 5.0  # the positive RoI's own class scores high; nothing else is within delta
    logits.requires_grad_(True)
    labels = torch.tensor([1, 3])  # RoI 0 positive for class 1, RoI 1 background
    rois, gt = torch.tensor([_box(0, 0, 10, 10)]), torch.tensor([_box(5, 0, 15, 10)])  # GIoU 1/3 at zero deltas
    out = crit.roi(logits, labels, torch.zeros(1, 4, requires_grad=True), rois, gt)
    assert out["loss_cls"].item() == 0.0
    assert out["loss_box"].item() == pytest.approx(50.0 * (2 / 3), rel=1e-5)
    assert out["num_pos"].item() == 1 and out["num_rois"].item() == 2


def test_roi_alrp_zero_positives_gives_zero_connected_losses():
    crit = _criterion("alrp")
    crit.set_period(100)
    logits = torch.randn(5, 3, requires_grad=True)
    pred = torch.zeros(0, 4, requires_grad=True)
    out = crit.roi(logits, torch.full((5,), 3), pred, torch.zeros(0, 4), torch.zeros(0, 4))
    rpn = crit.rpn(torch.randn(7, requires_grad=True), torch.zeros(7), torch.zeros(0, 4, requires_grad=True),
                   torch.zeros(0, 4))
    total = out["loss_cls"] + out["loss_box"] + rpn["loss_rpn_cls"] + rpn["loss_rpn_box"]
    assert total.item() == 0.0 and total.requires_grad
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() == 0


def test_ce_losses_match_hand_computation():
    crit = _criterion("ce", reg="l1")
    logits = torch.tensor([2.0, -1.0, 0.5, 4.0])
    labels = torch.tensor([1.0, 0.0, -1.0, 0.0])  # the ignored anchor is left out of the mean
    pred, target = torch.tensor([[0.1, 0.2, -0.3, 0.0]]), torch.tensor([[0.0, 0.0, 0.0, 0.5]])
    out = crit.rpn(logits, labels, pred, target)
    bce = [math.log1p(math.exp(-2.0)), math.log1p(math.exp(-1.0)), math.log1p(math.exp(4.0))]
    assert out["loss_rpn_cls"].item() == pytest.approx(sum(bce) / 3, rel=1e-6)
    assert out["loss_rpn_box"].item() == pytest.approx((0.1 + 0.2 + 0.3 + 0.5) / 3, rel=1e-6)

    cls = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])  # softmax over K + 1 = 3 (background last)
    labels = torch.tensor([0, 2])
    rois, gt = torch.tensor([_box(0, 0, 10, 10)]), torch.tensor([_box(5, 0, 15, 10)])
    ce = (-math.log(math.e / (math.e + 2)) - math.log(math.e ** 2 / (math.e ** 2 + 2))) / 2
    out = crit.roi(cls, labels, torch.zeros(1, 4), rois, gt)
    assert out["loss_cls"].item() == pytest.approx(ce, rel=1e-6)
    assert out["loss_box"].item() == pytest.approx(5.0 / 2, rel=1e-6)  # |dx| = 0.5 / 0.1, over 2 sampled RoIs
    out = _criterion("ce", reg="giou", reg_weight=10.0).roi(cls, labels, torch.zeros(1, 4), rois, gt)
    assert out["loss_box"].item() == pytest.approx(10.0 * (2 / 3) / 2, rel=1e-5)


# ------------------------------------------------------------------ inference
@pytest.mark.parametrize("use_sigmoid", [True, False])
def test_detect_scores_boxes_and_rescaling(use_sigmoid):
    head = Shared2FCHead(2, num_classes=3, roi_size=2, fc_channels=4, use_sigmoid=use_sigmoid)
    with torch.no_grad():
        for p in head.parameters():
            p.zero_()
        head.cls_out.bias[1] = 4.0  # class 1 wins everywhere; zero deltas: boxes are the proposals
    roi_head = RoIHead(head, DeltaXYWHCoder(STDS), [4], roi_size=2, score_thr=0.05, nms_iou=0.5, max_per_img=100)
    feats = [torch.randn(1, 2, 16, 16)]
    props = [torch.tensor([_box(0, 0, 20, 20), _box(1, 1, 21, 21), _box(30, 30, 70, 60)])]
    (det,) = roi_head.detect(feats, props, [(64, 60)], [(2.0, 0.5)])
    logits = torch.zeros(3 if use_sigmoid else 4)
    logits[1] = 4.0
    probs = logits.sigmoid() if use_sigmoid else logits.softmax(0)
    # the box overlapping the first is suppressed; the last is clipped to x <= 60; divided by (2, 0.5, 2, 0.5)
    expect = torch.tensor([_box(0, 0, 10, 40), _box(15, 60, 30, 120)])
    keep = (det["labels"] == 1)
    boxes = det["boxes"][keep]
    torch.testing.assert_close(boxes[boxes[:, 0].argsort()], expect)
    torch.testing.assert_close(det["scores"][keep], probs[1].expand(2))
    others = probs[[0, 2]] > 0.05  # the other classes are detected only if above the score threshold
    assert int((~keep).sum()) == 2 * int(others.sum())


# ------------------------------------------------------------------ whole model
def _batch(size: int = 96, with_objects: bool = True) -> tuple[torch.Tensor, list[dict]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=g)
    boxes = [torch.tensor([_box(4, 6, 40, 44), _box(30, 20, 80, 62)]), torch.tensor([_box(10, 10, 30, 50)])]
    if not with_objects:
        boxes = [torch.zeros((0, 4)), torch.zeros((0, 4))]
    return images, [{"boxes": b, "labels": torch.arange(len(b)) % 4, "image_id": i,
                     "img_size": torch.tensor([size, size - 6]), "scale_factor": torch.tensor([0.5, 0.5])}
                    for i, b in enumerate(boxes)]


@pytest.mark.parametrize("loss", ["alrp", "ce"])
def test_model_trains_and_detects(loss):
    overrides = SMALL + [f"loss.type={loss}"] + (["model.rpn.sampling=true", "model.roi.sampling=true",
                                                  "model.rpn.coder_stds=[1.0, 1.0, 1.0, 1.0]", "loss.reg=giou",
                                                  "loss.reg_weight=10.0"] if loss == "ce" else [])
    torch.manual_seed(0)
    model = build_model(load_config(SHAPES, overrides))
    assert isinstance(model, FasterRCNN) and model.roi_head.box_head.use_sigmoid == (loss == "alrp")
    model.criterion.set_period(10)
    images, targets = _batch()
    losses = model.train()(images, targets)
    assert {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box"} <= set(losses)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(total) and losses["num_rpn_pos"] > 0
    total.backward()
    assert model.rpn.head.conv.weight.grad.abs().sum() > 0 and model.roi_head.box_head.fc1.weight.grad.abs().sum() > 0
    model.eval()
    dets = model(images, targets)
    assert len(dets) == 2
    for det in dets:
        assert det["boxes"].shape[0] == det["scores"].shape[0] == det["labels"].shape[0] <= 100
        assert bool((det["scores"] > 0.05).all()) and bool((det["labels"] < 4).all())
        # clipped to img_size (h 96, w 90), then divided by the scale factor 0.5
        assert bool((det["boxes"][:, 0::2] <= 180 + 1e-3).all()) and bool((det["boxes"][:, 1::2] <= 192 + 1e-3).all())


def test_model_without_objects_has_zero_alrp_losses_in_the_graph():
    torch.manual_seed(0)
    model = build_model(load_config(SHAPES, SMALL)).train()
    model.criterion.set_period(10)
    images, targets = _batch(64, with_objects=False)
    losses = model(images, targets)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert total.item() == 0.0 and total.requires_grad
    total.backward()


def test_criterion_owns_both_self_balances_and_their_period():
    model = build_model(load_config(SHAPES, SMALL))
    keys = set(model.state_dict())
    assert {"criterion.rpn_sb.weight", "criterion.roi_sb.weight", "criterion.roi_sb.iteration"} <= keys
    model.criterion.set_period(17)
    assert model.criterion.rpn_sb.period == model.criterion.roi_sb.period == 17
    fixed = build_model(load_config(SHAPES, SMALL + ["loss.sb_period=5"]))
    fixed.criterion.set_period(17)
    assert fixed.criterion.rpn_sb.period == 5
    ce = build_model(load_config(SHAPES, SMALL + ["loss.type=ce", "loss.reg=l1"]))
    assert not any(k.startswith("criterion.") for k in ce.state_dict())
    ce.criterion.set_period(17)  # nothing to balance: a no-op


@pytest.mark.parametrize("override,key", [(["loss.type=focal"], "loss.type"),
                                          (["loss.type=ce", "loss.reg=smooth_l1"], "loss.reg"),
                                          (["model.rpn.anchor_strides=[8, 16, 32, 64, 128]"], "anchor_strides"),
                                          (["model.rpn.anchor_scales=[4.0, 8.0]"], "anchor_scales"),
                                          (["loss.type=ce", "loss.rank_scope=global"], "rank_scope")])
def test_bad_config_values_name_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        build_model(load_config(SHAPES, SMALL + override))


def test_short_training_run_through_train_py(tmp_path):
    import train

    out = tmp_path / "run"
    args = ["--config", str(SHAPES), "--output-dir", str(out), *SMALL, f"data.root={tmp_path / 'shapes'}",
            "data.shapes={num_train: 8, num_val: 4, image_size: 64, seed: 1}", "data.train_size=64",
            "data.test_short=64", "data.test_max=64", "data.batch_size=4", "data.test_batch_size=4",
            "solver.max_iters=2", "solver.reference_batch=4", "runtime.eval_interval=1", "runtime.log_interval=1",
            "runtime.device=cpu"]
    code, model, state = train.run(args)
    assert code == 0 and state.global_iter == 2
    ckpt = torch.load(out / "last.pth", map_location="cpu", weights_only=False)
    state_dict = ckpt["model"]
    assert int(state_dict["criterion.roi_sb.iteration"]) == 2 and int(state_dict["criterion.rpn_sb.iteration"]) == 2
    assert model.criterion.roi_sb.period == 2  # set by train.py to the iterations per epoch

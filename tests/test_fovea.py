"""FoveaBox: priors, fovea target assignment (hand cases and a brute-force oracle), the log-distance coder, GIoU
via unit-anchor deltas, the training/eval forward with every loss (zero positives included) and the configs."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import generalized_box_iou_loss

from detector.assigners import BACKGROUND
from detector.build import build_fovea, build_model
from detector.config import Config, load_config
from detector.dense import UnitDeltaAdapter
from detector.fovea import FoveaBox, FoveaCoder, FoveaPriors, fovea_assign, log_distances_to_unit_deltas
from detector.losses import Criterion, decode_unit_anchor, giou_errors

REPO = Path(__file__).resolve().parents[1]
STRIDES = [8, 16, 32, 64, 128]
RANGES = [(1, 64), (32, 128), (64, 256), (128, 512), (256, 2048)]
BASES = [16.0, 32.0, 64.0, 128.0, 256.0]


def _priors(size: int, strides=STRIDES, bases=BASES) -> tuple[torch.Tensor, list[int], list[tuple[int, int]]]:
    shapes = [(math.ceil(size / s), math.ceil(size / s)) for s in strides]
    levels = FoveaPriors(strides, bases).grid_anchors(shapes)
    return torch.cat(levels), [x.shape[0] for x in levels], shapes


def _positives(assigned: torch.Tensor, counts: list[int], shapes: list[tuple[int, int]]) -> set[tuple]:
    """{(level, row, col, gt)} of the positive priors."""
    out, start = set(), 0
    for lvl, (count, (h, w)) in enumerate(zip(counts, shapes)):
        for n in (assigned[start:start + count] >= 0).nonzero().flatten().tolist():
            out.add((lvl, n // w, n % w, int(assigned[start + n])))
        start += count
    return out


def _oracle(gts: torch.Tensor, shapes, sigma: float, strides=STRIDES, ranges=RANGES) -> set[tuple]:
    """Brute force from the definition: a cell centre inside the gt shrunk by sigma about its centre, on a level
    whose range holds sqrt(area); the smallest gt (then the larger index) wins."""
    out = set()
    boxes = gts.tolist()
    for lvl, ((h, w), s, (lo, hi)) in enumerate(zip(shapes, strides, ranges)):
        for row in range(h):
            for col in range(w):
                px, py = (col + 0.5) * s, (row + 0.5) * s
                best = None
                for g, (x1, y1, x2, y2) in enumerate(boxes):
                    area = (x2 - x1) * (y2 - y1)
                    cx, cy, hw, hh = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
                    inside = abs(px - cx) <= sigma * hw and abs(py - cy) <= sigma * hh
                    if inside and lo <= math.sqrt(area) <= hi and (best is None or area <= best[0]):
                        best = (area, g)
                if best is not None:
                    out.add((lvl, row, col, best[1]))
    return out


def test_priors_are_base_squares_at_cell_centres():
    levels = FoveaPriors([8, 16], [16.0, 40.0]).grid_anchors([(2, 3), (1, 2)])
    assert [x.shape for x in levels] == [(6, 4), (2, 4)]
    torch.testing.assert_close(levels[0][0], torch.tensor([4.0 - 16, 4 - 16, 4 + 16, 4 + 16]))
    torch.testing.assert_close(levels[0][5], torch.tensor([20.0 - 16, 12 - 16, 20 + 16, 12 + 16]))  # row 1, col 2
    torch.testing.assert_close(levels[1][1], torch.tensor([24.0 - 40, 8 - 40, 24 + 40, 8 + 40]))
    with pytest.raises(ValueError, match="model.fovea.base_edges"):
        FoveaPriors([8, 16], [16.0])


def test_hand_case_one_gt():
    # 32x32 box centred at 32: the central 40% is [25.6, 38.4] on both axes -> P3 cells 3 and 4 (centres 28, 36).
    # sqrt(area) = 32 also hits P4 (range from 32), but no P4 centre (8, 24, 40, 56) lies in [25.6, 38.4].
    priors, counts, shapes = _priors(64)
    gt = torch.tensor([[16.0, 16.0, 48.0, 48.0]])
    assigned = fovea_assign(priors, counts, gt, STRIDES, RANGES, 0.4)
    assert _positives(assigned, counts, shapes) == {(0, 3, 3, 0), (0, 3, 4, 0), (0, 4, 3, 0), (0, 4, 4, 0)}
    assert set(assigned.unique().tolist()) == {BACKGROUND, 0}
    # log-space targets of cell (3, 3) (point 28, 28; base 16): distances 12, 12, 20, 20 pixels
    target = FoveaCoder().encode(priors[3 * 8 + 3][None], gt)
    torch.testing.assert_close(target[0], torch.tensor([12.0, 12.0, 20.0, 20.0]).div(16).log())


@pytest.mark.parametrize("sigma,expected", [(1.0, 16 + 4), (0.4, 4), (0.2, 0)])
def test_sigma_shrinks_the_positive_area(sigma, expected):
    # whole box [16, 48]: P3 centres 20, 28, 36, 44 and P4 centres 24, 40 (sqrt(area) 32 hits P4 too);
    # 0.4 keeps [25.6, 38.4] (P3: 28, 36); 0.2 keeps [28.8, 35.2], which holds no centre
    priors, counts, shapes = _priors(64)
    assigned = fovea_assign(priors, counts, torch.tensor([[16.0, 16.0, 48.0, 48.0]]), STRIDES, RANGES, sigma)
    assert int((assigned >= 0).sum()) == expected


def test_scale_ranges_pick_levels():
    # sqrt(area) = 100: P4 [32, 128] and P5 [64, 256], not P3. Central 40%: [90, 130].
    # P4 centres 104, 120 (cols/rows 6, 7); P5 centre 112 (col/row 3).
    priors, counts, shapes = _priors(256)
    gt = torch.tensor([[60.0, 60.0, 160.0, 160.0]])
    got = _positives(fovea_assign(priors, counts, gt, STRIDES, RANGES, 0.4), counts, shapes)
    assert got == {(1, 6, 6, 0), (1, 6, 7, 0), (1, 7, 6, 0), (1, 7, 7, 0), (2, 3, 3, 0)}


@pytest.mark.parametrize("flip", [False, True])
def test_smallest_gt_wins_a_shared_cell(flip):
    big, small = [0.0, 0.0, 64.0, 64.0], [20.0, 20.0, 44.0, 44.0]  # central parts [19.2, 44.8] and [27.2, 36.8]
    gts = torch.tensor([small, big] if flip else [big, small])
    priors, counts, shapes = _priors(64)
    got = _positives(fovea_assign(priors, counts, gts, STRIDES, RANGES, 0.4), counts, shapes)
    small_idx, big_idx = (0, 1) if flip else (1, 0)
    p3 = {(r, c): g for lvl, r, c, g in got if lvl == 0}
    assert len(p3) == 16 and sorted(k for k, g in p3.items() if g == small_idx) == [(3, 3), (3, 4), (4, 3), (4, 4)]
    assert all(g == big_idx for k, g in p3.items() if k not in {(3, 3), (3, 4), (4, 3), (4, 4)})
    # equal areas: the later gt wins (it is painted last)
    twins = fovea_assign(priors, counts, torch.tensor([small, small]), STRIDES, RANGES, 0.4)
    assert set(twins[twins >= 0].tolist()) == {1}


def test_random_gts_match_the_brute_force_oracle():
    g = torch.Generator().manual_seed(3)
    priors, counts, shapes = _priors(96, STRIDES[:3], BASES[:3])
    for _ in range(4):
        ctr = 16 + 64 * torch.rand(6, 2, generator=g)
        half = 2 + 30 * torch.rand(6, 2, generator=g)
        gts = torch.cat([ctr - half, ctr + half], dim=1)  # inside the image: no border clamping
        for sigma in (0.4, 0.7):
            got = fovea_assign(priors, counts, gts, STRIDES[:3], RANGES[:3], sigma)
            assert _positives(got, counts, shapes) == _oracle(gts, shapes, sigma, STRIDES[:3], RANGES[:3])


def test_tiny_border_gt_keeps_the_border_cell():
    # The release clamps the cell range to the map: a 2x2 gt at a corner gets the corner cell even though
    # its central 40% holds no cell centre (the oracle finds nothing).
    priors, counts, shapes = _priors(32)
    for box, cell in (([0.0, 0.0, 2.0, 2.0], (0, 0)), ([30.0, 30.0, 32.0, 32.0], (3, 3))):
        gts = torch.tensor([box])
        got = _positives(fovea_assign(priors, counts, gts, STRIDES, RANGES, 0.4), counts, shapes)
        assert got == {(0, *cell, 0)} and _oracle(gts, shapes, 0.4) == set()


def test_no_gt_all_background():
    priors, counts, _ = _priors(64)
    assert (fovea_assign(priors, counts, torch.zeros(0, 4), STRIDES, RANGES, 0.4) == BACKGROUND).all()


def test_coder_clamps_and_round_trips():
    coder = FoveaCoder()
    prior = torch.tensor([[12.0, 12.0, 44.0, 44.0]])  # point (28, 28), base 16
    # distances 0.8 px (< 16/16) and 300 px (> 16 * 16) are clamped to 1/16 and 16
    enc = coder.encode(prior, torch.tensor([[27.2, 20.0, 328.0, 36.0]]))
    torch.testing.assert_close(enc[0], torch.tensor([1 / 16, 0.5, 16.0, 0.5]).log())
    box = torch.tensor([[16.0, 20.0, 50.0, 33.0]])
    torch.testing.assert_close(coder.decode(prior, coder.encode(prior, box)), box)
    torch.testing.assert_close(coder.decode(prior, torch.zeros(1, 4)), prior)  # zero prediction: the prior itself
    assert torch.isfinite(coder.decode(prior, torch.full((1, 4), 500.0))).all()
    torch.testing.assert_close(coder.decode(prior, torch.zeros(1, 4), max_shape=(40, 30)),
                               torch.tensor([[12.0, 12.0, 30.0, 40.0]]))


def test_unit_deltas_give_the_image_space_giou():
    g = torch.Generator().manual_seed(0)
    stds = [0.1, 0.1, 0.2, 0.2]
    pred, target = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g).clamp(-2.7, 2.7)
    # the unit box of log distances (l, t, r, b) is (-e^l, -e^t, e^r, e^b)
    unit = decode_unit_anchor(log_distances_to_unit_deltas(pred, stds), stds)
    torch.testing.assert_close(unit, torch.cat([-pred[:, :2].exp(), pred[:, 2:].exp()], 1), rtol=1e-5, atol=1e-5)
    ctr = 300 * torch.rand(50, 2, generator=g)
    base = 2 ** torch.randint(4, 9, (50, 1), generator=g).float()
    priors = torch.cat([ctr - base, ctr + base], 1)
    coder = FoveaCoder()
    image = generalized_box_iou_loss(coder.decode(priors, pred), coder.decode(priors, target), reduction="none")
    errors = giou_errors(log_distances_to_unit_deltas(pred, stds), log_distances_to_unit_deltas(target, stds), stds)
    torch.testing.assert_close(errors, image, rtol=1e-4, atol=1e-5)


class _Record(Criterion):
    """Keeps the criterion inputs; a plain differentiable loss on the raw log distances (measures_giou False)."""

    def forward(self, logits, targets, pos_pred, pos_target):
        self.inputs = (logits, targets, pos_pred, pos_target)
        return {"loss_cls": logits.sigmoid().mean(), "loss_box": (pos_pred - pos_target).pow(2).sum()}


def _small_cfg(loss: str = "alrp", num_classes: int = 3) -> Config:
    cfg = Config()
    m = cfg.model
    m.type, m.num_classes = "fovea", num_classes
    m.backbone.name, m.backbone.frozen_stages, m.backbone.norm_eval = "resnet18", 0, False
    m.fpn.out_channels, m.head.num_convs, m.head.channels = 16, 1, 16
    cfg.loss.type = loss
    if loss != "alrp":
        cfg.loss.reg, cfg.loss.smooth_l1_beta = "smooth_l1", 0.11
    return cfg


def _batch():
    boxes = [torch.tensor([[8.0, 10.0, 40.0, 50.0], [30.0, 28.0, 60.0, 62.0]]), torch.zeros(0, 4),
             torch.tensor([[4.0, 36.0, 28.0, 60.0]])]
    labels = [torch.tensor([2, 0]), torch.zeros(0, dtype=torch.long), torch.tensor([1])]
    return torch.randn(3, 3, 64, 64), [{"boxes": b, "labels": lab, "image_id": i} for i, (b, lab) in
                                       enumerate(zip(boxes, labels))]


def test_training_layout_follows_the_fovea_targets():
    torch.manual_seed(0)
    cfg = _small_cfg()
    model = build_fovea(cfg.model, _Record()).train()
    assert isinstance(model, FoveaBox) and model.anchor_generator.num_anchors == 1
    images, targets = _batch()
    out = model(images, targets)
    logits, flat_t, pos_pred, pos_target = model.criterion.inputs
    cls, reg = model.head(model.fpn(model.backbone(images)))
    levels = model.anchor_generator.grid_anchors([c.shape[-2:] for c in cls])
    priors, counts = torch.cat(levels), [x.shape[0] for x in levels]
    k, n = 3, priors.shape[0]
    assert logits.shape == flat_t.shape == (3 * n * k,) and set(flat_t.unique().tolist()) == {0.0, 1.0}
    flat_reg = torch.cat([r.permute(0, 2, 3, 1).reshape(3, -1, 4) for r in reg], 1)  # (B, N, 4)
    rows = []
    for b, t in enumerate(targets):
        assigned = fovea_assign(priors, counts, t["boxes"], STRIDES, RANGES, 0.4)
        for p in (assigned >= 0).nonzero().flatten().tolist():
            gt = int(assigned[p])
            rows.append((b, p, gt))
            assert flat_t[(b * n + p) * k + int(t["labels"][gt])] == 1
    assert int(out["num_pos"]) == len(rows) == int(flat_t.sum()) == pos_pred.shape[0] > 0
    coder = FoveaCoder()
    for row, (b, p, gt) in enumerate(rows):  # rows follow logits[targets == 1]: image, then prior order
        torch.testing.assert_close(pos_pred[row], flat_reg[b, p])
        torch.testing.assert_close(pos_target[row], coder.encode(priors[p:p + 1], targets[b]["boxes"][gt:gt + 1])[0])


@pytest.mark.parametrize("loss", ["alrp", "ap", "focal"])
def test_losses_train_and_zero_positive_batches(loss):
    torch.manual_seed(0)
    model = build_model(_small_cfg(loss)).train()
    assert isinstance(model.criterion, UnitDeltaAdapter) == (loss == "alrp")  # GIoU: unit-anchor deltas
    model.criterion.set_period(5)
    model.criterion.track_balance = True
    images, targets = _batch()
    out = model(images, targets)
    assert {"loss_cls", "loss_box", "num_pos"} <= set(out) and ("sb_weight" in out) == (loss == "alrp")
    total = out["loss_cls"] + out["loss_box"]
    assert torch.isfinite(total) and int(out["num_pos"]) > 0 and not out["num_pos"].requires_grad
    total.backward()
    pos_grad, neg_grad = model.criterion.last_balance
    assert float(pos_grad) < 0 < float(neg_grad)  # positives pushed up, negatives down
    if loss == "alrp":  # exact balance (Theorem 2) and SB state checkpointed with the model
        assert float(pos_grad) == pytest.approx(-float(neg_grad), rel=1e-5)
        assert {"criterion.inner.sb.weight", "criterion.inner.sb.iteration"} <= set(model.state_dict())
    model.zero_grad()
    # a batch without positives: the only gt is too small for every level (the release's fovea head crashes)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
             {"boxes": torch.tensor([[10.0, 10.0, 10.5, 10.5]]), "labels": torch.tensor([1])}]
    out = model(images[:2], empty)
    total = out["loss_cls"] + out["loss_box"]
    assert int(out["num_pos"]) == 0 and torch.isfinite(total) and total.requires_grad
    total.backward()
    if loss in ("alrp", "ap"):  # ranking losses: 0 with zero gradient
            assert float(total.detach()) == 0.0 and float(model.head.cls_out.weight.grad.abs().sum()) == 0.0


def test_inference_decodes_and_rescales():
    torch.manual_seed(0)
    model = build_fovea(_small_cfg(num_classes=4).model).eval()
    head = model.head
    nn.init.zeros_(head.cls_out.weight), nn.init.zeros_(head.cls_out.bias)  # every score 0.5
    nn.init.zeros_(head.reg_out.weight), nn.init.constant_(head.reg_out.bias, math.log(0.5))  # point ± base / 2
    images = torch.randn(2, 3, 64, 96)
    with torch.inference_mode():
        plain = model(images)
        scaled = model(images, [{"img_size": (64, 96), "scale_factor": (2.0, 0.5)},
                                {"img_size": (64, 96), "scale_factor": (1.0, 1.0)}])
    for det in plain + scaled:
        assert set(det) == {"boxes", "scores", "labels"} and det["boxes"].shape == (100, 4)
        torch.testing.assert_close(det["scores"], torch.full((100,), 0.5))
    boxes = plain[0]["boxes"]
    inner = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < 96) & (boxes[:, 3] < 64)
    wh = boxes[inner, 2:] - boxes[inner, :2]
    assert inner.any() and (wh[:, 0] == wh[:, 1]).all() and set(wh[:, 0].tolist()) <= set(BASES)
    centres = (boxes[inner, :2] + boxes[inner, 2:]) / 2
    strides = torch.tensor([STRIDES[BASES.index(w)] for w in wh[:, 0].tolist()])[:, None]
    torch.testing.assert_close(centres / strides - 0.5, (centres / strides - 0.5).round())  # on cell centres
    torch.testing.assert_close(scaled[0]["boxes"], plain[0]["boxes"] / torch.tensor([2.0, 0.5, 2.0, 0.5]))
    torch.testing.assert_close(scaled[1]["boxes"], plain[1]["boxes"])


@pytest.mark.parametrize("name,loss,lr,ap,olrp", [("alrp_fovea_r50_500", "alrp", 0.008, 39.7, 67.2),
                                                   ("ap_fovea_r50_500", "ap", 0.002, 36.5, 69.8),
                                                   ("focal_fovea_r50_500", "focal", 0.02, 38.3, 68.8)])
def test_paper_configs(name, loss, lr, ap, olrp):
    cfg = load_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.model.type == "fovea" and cfg.loss.type == loss and cfg.solver.base_lr == lr
    assert cfg.solver.lr_steps == [75, 95] and cfg.data.train_size == 512 and cfg.model.backbone.name == "resnet50"
    assert (cfg.expected.minival_AP, cfg.expected.minival_oLRP) == (ap, olrp)
    f = cfg.model.fovea
    assert (f.sigma, f.base_edges, cfg.model.anchors.strides) == (0.4, BASES, STRIDES)
    assert [tuple(r) for r in f.scale_ranges] == RANGES
    if loss != "alrp":
        assert (cfg.loss.reg, cfg.loss.smooth_l1_beta) == ("smooth_l1", 0.11)
    if loss == "focal":
        assert (cfg.loss.focal_gamma, cfg.loss.focal_alpha) == (1.5, 0.4)
    assert load_config(REPO / "configs" / "shapes_fovea_alrp.yaml").model.type == "fovea"

"""RetinaNet assembly: parameter counts, FPN/head details, training targets and inference (CPU, random init)."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from detector.assigners import IGNORE
from detector.box_ops import DeltaXYWHCoder
from detector.build import build_assigner, build_model, build_retinanet
from detector.config import Config, ConfigError, ModelCfg
from detector.fpn import FPN
from detector.head import RetinaHead
from detector.losses import Criterion
from detector.postprocess import postprocess_detections


class RecordingCriterion(Criterion):
    """A stand-in loss with the declared criterion interface (raw deltas); keeps its inputs."""

    def forward(self, logits, targets, pos_pred, pos_target):
        self.inputs = (logits, targets, pos_pred, pos_target)
        valid = targets >= 0
        cls = nn.functional.binary_cross_entropy_with_logits(logits[valid], targets[valid])
        return {"loss_cls": cls, "loss_box": (pos_pred - pos_target).abs().sum() / max(1, pos_pred.shape[0])}


def _small_cfg(assigner: str = "atss", ratios=(1.0,), num_classes: int = 3) -> ModelCfg:
    cfg = ModelCfg(num_classes=num_classes)
    cfg.backbone.name = "resnet18"
    cfg.anchors.ratios = list(ratios)
    cfg.assigner.type = assigner
    return cfg


def _assigner_cfg(kind: str):
    cfg = ModelCfg()
    cfg.assigner.type = kind
    return cfg.assigner


def _conv_params(cin: int, cout: int, k: int) -> int:
    return cin * cout * k * k + cout


@pytest.mark.parametrize("spo,ratios,expected", [(3, [0.5, 1.0, 2.0], 37_968_692), (2, [1.0], 36_613_352)])
def test_r50_parameter_counts(spo, ratios, expected):
    cfg = ModelCfg()
    cfg.anchors.scales_per_octave, cfg.anchors.ratios = spo, ratios
    model = build_retinanet(cfg)
    total = sum(p.numel() for p in model.parameters())
    # independent formula: torchvision body without fc + FPN (3 laterals, 3 outputs, P6 on C5, P7) + head
    tv = torchvision.models.resnet50()
    body = sum(p.numel() for p in tv.parameters()) - (2048 * 1000 + 1000)
    fpn = sum(_conv_params(c, 256, 1) for c in (512, 1024, 2048)) + 3 * _conv_params(256, 256, 3) \
        + _conv_params(2048, 256, 3) + _conv_params(256, 256, 3)
    a = spo * len(ratios)
    head = 8 * _conv_params(256, 256, 3) + _conv_params(256, a * 80, 3) + _conv_params(256, a * 4, 3)
    assert total == body + fpn + head == expected
    assert sum(p.numel() for p in model.backbone.parameters()) == body


def test_fpn_extra_levels():
    torch.manual_seed(0)
    feats = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    fpn = FPN([8, 16, 32], out_channels=4)
    outs = fpn(feats)
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2, 1] and all(o.shape[1] == 4 for o in outs)
    p6 = fpn.extra_convs[0](feats[-1])  # P6 from C5 ('on input')
    torch.testing.assert_close(outs[3], p6)
    torch.testing.assert_close(outs[4], fpn.extra_convs[1](p6))  # no ReLU before P7
    fpn.relu_before_extra = True
    torch.testing.assert_close(fpn(feats)[4], fpn.extra_convs[1](p6.relu()))
    out_fpn = FPN([8, 16, 32], out_channels=4, extra_from="output")
    assert out_fpn.extra_convs[0].in_channels == 4
    top = out_fpn.lateral_convs[2](feats[2])
    torch.testing.assert_close(out_fpn(feats)[2], out_fpn.output_convs[2](top))


def test_head_init_and_shapes():
    torch.manual_seed(0)
    head = RetinaHead(256, num_anchors=9, num_classes=80)
    torch.testing.assert_close(head.cls_out.bias, torch.full((720,), -math.log(99.0)))
    assert head.cls_out.bias[0].item() == pytest.approx(-4.59512, abs=1e-5)
    assert abs(head.cls_convs[0].weight.std().item() - 0.01) < 5e-4 and head.reg_out.bias.abs().sum() == 0
    cls, reg = head([torch.randn(2, 256, 8, 8), torch.randn(2, 256, 4, 4)])
    assert [c.shape for c in cls] == [(2, 720, 8, 8), (2, 720, 4, 4)]
    assert [r.shape for r in reg] == [(2, 36, 8, 8), (2, 36, 4, 4)]


def _targets():
    return [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 50.0], [70.0, 64.0, 120.0, 126.0], [5.0, 80.0, 30.0, 100.0]]),
             "labels": torch.tensor([2, 0, 2]), "image_id": 1},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "image_id": 2},
            {"boxes": torch.tensor([[30.0, 30.0, 100.0, 90.0]]), "labels": torch.tensor([1]), "image_id": 3}]


@pytest.mark.parametrize("assigner,ratios", [("atss", (1.0,)), ("max_iou", (0.5, 1.0, 2.0))])
def test_training_targets_layout(assigner, ratios):
    torch.manual_seed(0)
    k = 3
    model = build_retinanet(_small_cfg(assigner, ratios, k), RecordingCriterion()).train()
    images = torch.randn(3, 3, 128, 128)
    targets = _targets()
    out = model(images, targets)
    logits, flat_t, pos_pred, pos_target = model.criterion.inputs
    # independent reconstruction of the layout from the per-level head outputs and anchors
    cls, reg = model.head(model.fpn(model.backbone(images)))
    anchors = model.anchor_generator.grid_anchors([c.shape[-2:] for c in cls])
    a = model.anchor_generator.num_anchors
    per_image = sum(x.shape[0] for x in anchors)
    assert logits.shape == flat_t.shape == (3 * per_image * k,)
    assert set(flat_t.unique().tolist()) <= {-1.0, 0.0, 1.0}
    all_anchors = torch.cat(anchors)
    assigned = [build_assigner(_assigner_cfg(assigner))(all_anchors, [x.shape[0] for x in anchors], t["boxes"])
                for t in targets]
    num_pos = sum(int((m >= 0).sum()) for m in assigned)
    num_ign = sum(int((m == IGNORE).sum()) for m in assigned)
    assert int(out["num_pos"]) == num_pos == int((flat_t == 1).sum()) == pos_pred.shape[0] > 0
    assert int((flat_t == -1).sum()) == k * num_ign and (num_ign > 0) == (assigner == "max_iou")
    assert (flat_t.view(3, per_image, k)[1] == 0).all()  # the empty image: background everywhere
    coder = DeltaXYWHCoder()
    starts = [0] + torch.tensor([x.shape[0] for x in anchors]).cumsum(0).tolist()
    for row, flat in enumerate((flat_t == 1).nonzero().flatten().tolist()):
        b, rest = divmod(flat, per_image * k)
        n, c = divmod(rest, k)
        lvl = max(i for i in range(len(anchors)) if starts[i] <= n)
        y, x, anc = (lambda q: (q // (cls[lvl].shape[3] * a), (q // a) % cls[lvl].shape[3], q % a))(n - starts[lvl])
        gt = assigned[b][n].item()
        assert targets[b]["labels"][gt].item() == c
        torch.testing.assert_close(logits[flat], cls[lvl][b, anc * k + c, y, x])
        torch.testing.assert_close(pos_pred[row], reg[lvl][b, anc * 4:anc * 4 + 4, y, x])
        decoded = coder.decode(all_anchors[n:n + 1], pos_target[row:row + 1])
        torch.testing.assert_close(decoded[0], targets[b]["boxes"][gt], atol=1e-3, rtol=1e-5)
    (out["loss_cls"] + out["loss_box"]).backward()
    assert model.head.cls_out.weight.grad.abs().sum() > 0 and model.backbone.layer1[0].conv1.weight.grad is None


def test_all_empty_batch_has_no_positives():
    model = build_retinanet(_small_cfg(), RecordingCriterion()).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    out = model(torch.randn(2, 3, 64, 64), [empty, empty])
    _, flat_t, pos_pred, pos_target = model.criterion.inputs
    assert int(out["num_pos"]) == 0 and pos_pred.shape == pos_target.shape == (0, 4) and (flat_t == 0).all()


def test_bad_targets_named():
    model = build_retinanet(_small_cfg(), RecordingCriterion()).train()
    bad = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([7]), "image_id": 42}
    with pytest.raises(ValueError, match="image 42: labels"):
        model(torch.randn(1, 3, 64, 64), [bad])


def test_channels_last_same_losses():
    torch.manual_seed(0)
    model = build_retinanet(_small_cfg(), RecordingCriterion()).train()
    images, targets = torch.randn(3, 3, 128, 128), _targets()
    ref = model(images, targets)
    model = model.to(memory_format=torch.channels_last)
    out = model(images.to(memory_format=torch.channels_last), targets)
    for key in ("loss_cls", "loss_box"):
        torch.testing.assert_close(out[key], ref[key], rtol=1e-4, atol=1e-5)


def test_autocast_bf16_training_forward():
    model = build_retinanet(_small_cfg(), RecordingCriterion()).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(3, 3, 128, 128), _targets())
    logits, flat_t, pos_pred, pos_target = model.criterion.inputs
    assert logits.dtype == torch.bfloat16 and flat_t.dtype == pos_target.dtype == torch.float32
    assert torch.isfinite(out["loss_cls"]) and torch.isfinite(out["loss_box"]) and int(out["num_pos"]) > 0


def test_inference_format_and_rescaling():
    torch.manual_seed(0)
    cfg = _small_cfg(num_classes=4)
    model = build_retinanet(cfg).eval()
    nn.init.zeros_(model.head.cls_out.bias)  # scores about 0.5: plenty of detections
    images = torch.randn(2, 3, 128, 96)
    with torch.inference_mode():
        plain = model(images)
        meta = [{"img_size": (128, 96), "scale_factor": (1.0, 1.0)},
                {"img_size": (100, 80), "scale_factor": (2.0, 0.5)}]
        scaled = model(images, meta)
    for det in plain + scaled:
        assert set(det) == {"boxes", "scores", "labels"}
        assert det["boxes"].shape == (100, 4) and det["labels"].dtype == torch.int64
        assert (det["scores"] > 0.05).all() and (det["scores"][:-1] >= det["scores"][1:]).all()
        assert ((det["labels"] >= 0) & (det["labels"] < 4)).all()
    torch.testing.assert_close(scaled[0]["boxes"], plain[0]["boxes"])
    boxes = scaled[1]["boxes"]
    assert boxes[:, 0::2].max() <= 80 / 2.0 and boxes[:, 1::2].max() <= 100 / 0.5 and boxes.min() >= 0
    assert boxes[:, 2].max() == pytest.approx(40.0) and boxes[:, 3].max() == pytest.approx(200.0)


def test_postprocess_hand_case():
    # one level, 1x3 locations, 1 anchor of 10x10 per location, 2 classes, identity deltas
    anchors = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 0.0, 60.0, 10.0]])]
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    cls = torch.full((1, 2, 1, 3), -10.0)
    cls[0, 0, 0, 0], cls[0, 0, 0, 1], cls[0, 1, 0, 1], cls[0, 1, 0, 2] = logit(0.9), logit(0.8), logit(0.7), logit(0.04)
    reg = torch.zeros(1, 4, 1, 3)
    out = postprocess_detections([cls], [reg], anchors, DeltaXYWHCoder(), [(20, 100)])[0]
    # class 0: boxes 0 and 1 overlap (IoU 0.82) -> only box 0; class 1: box 1 kept; 0.04 is under the threshold
    torch.testing.assert_close(out["scores"], torch.tensor([0.9, 0.7]))
    assert out["labels"].tolist() == [0, 1]
    torch.testing.assert_close(out["boxes"], anchors[0][:2])
    top1 = postprocess_detections([cls], [reg], anchors, DeltaXYWHCoder(), [(20, 100)], nms_pre=1)[0]
    assert top1["labels"].tolist() == [0] and top1["scores"].tolist() == pytest.approx([0.9])
    one = postprocess_detections([cls], [reg], anchors, DeltaXYWHCoder(), [(20, 100)], max_per_img=1)[0]
    assert one["scores"].tolist() == pytest.approx([0.9])


def test_postprocess_equals_full_nms_on_dense_scores():
    # reference: mmdet's order of operations, NMS over every candidate pair, then the best max_per_img
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(400, 2, generator=g) * 50
    xy[:300] *= 0.05  # 300 nearly identical boxes scored highest: NMS must look beyond the first top-m prefix
    anchors = [torch.cat([xy, xy + 10], dim=1)]
    cls = torch.randn(1, 5, 20, 20, generator=g)  # 1 anchor per location, 5 classes
    cls.view(1, 5, 400)[..., :300] += 3
    reg = torch.randn(1, 4, 20, 20, generator=g) * 0.1
    coder = DeltaXYWHCoder()
    for max_per_img in (20, 100):
        out = postprocess_detections([cls], [reg], anchors, coder, [(64, 64)], max_per_img=max_per_img)[0]
        scores = cls[0].permute(1, 2, 0).reshape(-1, 5).sigmoid()
        boxes = coder.decode(anchors[0], reg[0].permute(1, 2, 0).reshape(-1, 4), max_shape=(64, 64))
        row, label = (scores > 0.05).nonzero(as_tuple=True)
        keep = torchvision.ops.batched_nms(boxes[row], scores[row, label], label, 0.5)[:max_per_img]
        assert len(out["scores"]) == max_per_img
        torch.testing.assert_close(out["scores"], scores[row, label][keep])
        torch.testing.assert_close(out["boxes"], boxes[row][keep])
        assert torch.equal(out["labels"], label[keep])


@pytest.mark.parametrize("loss", ["alrp", "ap", "focal"])
def test_build_model_trains_with_each_criterion(loss):
    cfg = Config()
    cfg.model.backbone.name, cfg.model.num_classes, cfg.loss.type, cfg.loss.sb_period = "resnet18", 3, loss, 10
    model = build_model(cfg).train()
    out = model(torch.randn(3, 3, 128, 128), _targets())
    total = sum(v for key, v in out.items() if key.startswith("loss_"))
    total.backward()
    assert torch.isfinite(total) and int(out["num_pos"]) > 0
    assert model.head.reg_out.weight.grad.abs().sum() > 0 and model.head.cls_out.weight.grad.abs().sum() > 0


def test_build_errors():
    cfg = Config()
    cfg.model.type = "yolo"
    with pytest.raises(ConfigError, match="model.type.*retinanet"):
        build_model(cfg)
    cfg = ModelCfg()
    cfg.assigner.type = "hungarian"
    with pytest.raises(ConfigError, match="model.assigner.type.*atss"):
        build_assigner(cfg.assigner)

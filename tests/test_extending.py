"""docs/EXTENDING.md is true: a loss and a dense head registered from this file alone train, through the same
registries and interfaces the shipped ones use (no edit anywhere else)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from detector.anchors import AnchorGenerator
from detector.assigners import BACKGROUND, Assigner, Assignment, Predictions
from detector.box_ops import DeltaXYWHCoder, box_iou
from detector.build import MODELS, build_model, dense
from detector.config import ConfigError, LossCfg, ModelCfg, load_config
from detector.dense import DenseDetector, DenseParts
from detector.losses import CRITERIA, LOSS_TYPES, Criterion, CriterionHooks, RankingCriterion

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "default.yaml"
TINY = ["model.backbone.weights=null", "model.fpn.out_channels=16", "model.head.num_convs=1",
        "model.head.channels=16", "model.num_classes=3"]


# ------------------------------------------------------------------------------------- walk-through 1: a new loss
class ToyCriterion(Criterion):
    """Sigmoid cross-entropy over the non-ignored entries / P + ``weight`` x mean L1 of the raw box encodings."""

    measures_giou = False  # compares the encodings as given

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, logits: Tensor, targets: Tensor, pos_pred: Tensor, pos_target: Tensor) -> dict[str, Tensor]:
        self.watch(logits, targets)
        num_pos = pos_pred.shape[0]
        valid = targets >= 0
        cls = F.binary_cross_entropy_with_logits(logits[valid], targets[valid], reduction="sum") / max(num_pos, 1)
        box = (pos_pred - pos_target).abs().sum() / max(4 * num_pos, 1)
        return {"loss_cls": cls, "loss_box": self.weight * box, "num_pos": logits.new_full((), float(num_pos))}


def build_toy(cfg: LossCfg, num_classes: int, coder_stds) -> ToyCriterion:
    return ToyCriterion(cfg.reg_weight)


def _batch(num_classes: int = 3, size: int = 64) -> tuple[Tensor, list[dict]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=g)
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 44.0], [30.0, 20.0, 60.0, 62.0]]), torch.tensor([[10.0, 10.0, 30.0, 50.0]])]
    return images, [{"boxes": b, "labels": torch.arange(len(b)) % num_classes, "image_id": i}
                    for i, b in enumerate(boxes)]


def _total(losses: dict[str, Tensor]) -> Tensor:
    return sum(v for k, v in losses.items() if k.startswith("loss_"))


def test_unregistered_loss_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="loss.type"):
        build_model(load_config(DEFAULT, TINY + ["loss.type=toy"]))


def test_registered_loss_builds_and_one_sgd_step_lowers_it(monkeypatch):
    monkeypatch.setitem(CRITERIA, "toy", build_toy)
    assert "toy" in LOSS_TYPES  # the registry is the list of valid loss.type values
    cfg = load_config(DEFAULT, TINY + ["loss.type=toy", "loss.reg_weight=2.0"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    crit = model.criterion
    assert isinstance(crit, ToyCriterion) and crit.weight == 2.0 and isinstance(crit, RankingCriterion)
    crit.set_period(10)  # the trainer's hooks exist on every Criterion (no self-balance here: a no-op)
    crit.track_balance = True
    images, targets = _batch()
    losses = model(images, targets)
    assert {"loss_cls", "loss_box", "num_pos"} <= set(losses) and int(losses["num_pos"]) > 0
    before = _total(losses)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)
    opt.zero_grad()
    before.backward()
    pos, neg = crit.last_balance  # cross-entropy pushes positives up and negatives down
    assert float(pos) < 0 < float(neg)
    opt.step()
    with torch.no_grad():
        after = _total(model(images, targets))
    assert float(after) < float(before.detach())  # a small gradient step descends


def test_registered_loss_trains_through_train_py(monkeypatch, tmp_path):
    import train

    monkeypatch.setitem(CRITERIA, "toy", build_toy)
    out = tmp_path / "run"
    args = ["--config", str(DEFAULT), "--output-dir", str(out), *TINY, "model.num_classes=4", "loss.type=toy",
            f"data.root={tmp_path / 'shapes'}", "data.shapes={num_train: 8, num_val: 4, image_size: 64, seed: 1}",
            "data.train_size=64", "data.test_short=64", "data.test_max=64", "data.batch_size=4",
            "data.test_batch_size=4", "solver.max_iters=1", "solver.reference_batch=4", "runtime.eval_interval=0",
            "runtime.log_interval=1", "runtime.device=cpu"]
    code, model, state = train.run(args)
    assert code == 0 and state.global_iter == 1 and isinstance(model.criterion, ToyCriterion)
    assert (out / "last.pth").is_file()


# ------------------------------------------------------------------------------- walk-through 2: a new dense head
class PredictedIoUAssigner:
    """A dynamic assigner: each gt takes the prior whose *predicted* box overlaps it most; the rest are negative."""

    uses_predictions = True

    def __init__(self) -> None:
        self.seen: list[Predictions] = []

    def assign(self, priors: Tensor, num_level_priors, gt_boxes: Tensor, gt_labels: Tensor,
               predictions: Predictions | None = None) -> Assignment:
        assert predictions is not None
        self.seen.append(predictions)
        assigned = torch.full((priors.shape[0],), BACKGROUND, dtype=torch.long, device=priors.device)
        quality = torch.zeros(priors.shape[0], device=priors.device)
        if gt_boxes.shape[0]:
            ious = box_iou(gt_boxes, predictions.boxes)  # (G, N)
            best = ious.argmax(dim=1)
            assigned[best] = torch.arange(gt_boxes.shape[0], device=priors.device)
            quality[best] = ious.max(dim=1).values
        return Assignment(assigned, quality)


class SquareDetector(DenseDetector):
    """One square prior per location, centred in its cell; boxes predicted by the delta coder."""


def square_parts(cfg: ModelCfg) -> DenseParts:
    priors = AnchorGenerator(strides=cfg.anchors.strides, octave_base_scale=4.0, scales_per_octave=1, ratios=(1.0,),
                             center_offset=0.5)
    return DenseParts(priors=priors, coder=DeltaXYWHCoder(cfg.coder_stds), assigner=PredictedIoUAssigner(),
                      model_cls=SquareDetector)


def test_registered_dense_head_with_a_dynamic_assigner_trains(monkeypatch):
    monkeypatch.setitem(MODELS, "square", dense(square_parts))
    cfg = load_config(DEFAULT, TINY + ["model.type=square"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert isinstance(model, SquareDetector) and isinstance(model.assigner, Assigner)
    assert model.head.cls_out.out_channels == 3  # one prior per location, 3 classes
    images, targets = _batch()
    losses = model(images, targets)
    # the assigner saw each image's decoded predictions: rebuild them from the head's outputs independently
    cls, reg = model.head(model.fpn(model.backbone(images)))
    priors = torch.cat(model.anchor_generator.grid_anchors([c.shape[-2:] for c in cls]))
    flat_reg = torch.cat([r.permute(0, 2, 3, 1).reshape(2, -1, 4) for r in reg], 1)
    flat_cls = torch.cat([c.permute(0, 2, 3, 1).reshape(2, -1, 3) for c in cls], 1)
    seen = model.assigner.seen
    assert len(seen) == 2
    for b in range(2):
        torch.testing.assert_close(seen[b].boxes, DeltaXYWHCoder(cfg.model.coder_stds).decode(priors, flat_reg[b]))
        torch.testing.assert_close(seen[b].scores, flat_cls[b].sigmoid())
        assert not seen[b].boxes.requires_grad
    assert int(losses["num_pos"]) == 3  # one prior per gt
    _total(losses).backward()
    assert model.head.reg_out.weight.grad.abs().sum() > 0


def test_every_registered_criterion_declares_the_interface():
    for name in ("alrp", "ap", "focal"):  # aLRP always measures GIoU; the baselines with loss.reg giou only
        for reg in ("giou", "smooth_l1", "l1"):
            crit = CRITERIA[name](LossCfg(type=name, reg=reg), 3, [0.1, 0.1, 0.2, 0.2])
            assert isinstance(crit, RankingCriterion), name
            assert crit.measures_giou is (name == "alrp" or reg == "giou"), (name, reg)
    frcnn = build_model(load_config(REPO / "configs" / "shapes_faster_rcnn_alrp.yaml", TINY))
    assert isinstance(frcnn.criterion, CriterionHooks) and frcnn.criterion.has_self_balance
    fovea = build_model(load_config(REPO / "configs" / "shapes_fovea_alrp.yaml", TINY))
    assert isinstance(fovea.criterion, RankingCriterion) and fovea.criterion.has_self_balance
    focal = build_model(load_config(DEFAULT, TINY + ["loss.type=focal"]))
    assert not focal.criterion.has_self_balance

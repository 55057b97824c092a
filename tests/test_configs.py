"""Every shipped config builds its model on CPU (random init) and runs one training step at a small input."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detector.build import build_model
from detector.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def tiny_batch(num_classes: int, size: int = 64) -> tuple[torch.Tensor, list[dict]]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=g)
    boxes = [torch.tensor([[4.0, 6.0, 40.0, 44.0], [30.0, 20.0, 60.0, 62.0]]), torch.tensor([[10.0, 10.0, 30.0, 50.0]])]
    targets = [{"boxes": b, "labels": torch.arange(len(b)) % num_classes, "image_id": i,
                "img_size": torch.tensor([size, size]), "scale_factor": torch.ones(2)} for i, b in enumerate(boxes)]
    return images, targets


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_builds_and_trains_one_step(path):
    cfg = load_config(path, ["model.backbone.weights=null"])
    torch.manual_seed(0)
    model = build_model(cfg).train()
    images, targets = tiny_batch(cfg.model.num_classes)
    losses = model(images, targets)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(total)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    opt = torch.optim.SGD(params, lr=cfg.solver.base_lr, momentum=0.9)
    opt.zero_grad()
    total.backward()
    opt.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, params))
    assert changed > 0.5 * len(params), f"only {changed} of {len(params)} trainable tensors were updated"


def test_paper_configs_state_their_expected_result():
    for path in CONFIGS:
        cfg = load_config(path)
        if cfg.data.dataset == "coco":
            assert cfg.expected.source, f"{path.name}: expected.source is empty"

"""Folding BatchNorm into convolutions changes the detections only by float rounding."""
from __future__ import annotations

import torch

from detector.build import build_model
from detector.config import Config
from detector.fuse import fuse_for_inference


def test_fused_model_gives_the_same_detections():
    cfg = Config()
    cfg.model.backbone.name, cfg.model.backbone.weights, cfg.model.num_classes = "resnet50", None, 5
    cfg.model.test.score_thr = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():  # non-trivial statistics so the folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fused = fuse_for_inference(model)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert n_bn == 0 and sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 53
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        feats_a = model.backbone(x)
        feats_b = fused.backbone(x)
        for a, b in zip(feats_a, feats_b):  # float32 rounding relative to the features' scale
            assert (a - b).abs().max() <= 1e-5 * a.abs().max()
        out_a, out_b = model(x)[0], fused(x)[0]
    assert len(out_a["scores"]) == len(out_b["scores"]) == 100
    torch.testing.assert_close(out_a["scores"].sort().values, out_b["scores"].sort().values, rtol=0, atol=1e-5)

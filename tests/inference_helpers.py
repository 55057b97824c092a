"""Tiny random-init detectors and real photos for the inference, predict and export tests."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import torch

from detector.build import build_model
from detector.config import Config, config_to_dict, load_config

REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["circle", "square", "triangle", "cross"]
CATEGORY_IDS = [3, 5, 8, 13]  # non-contiguous on purpose


def tiny_config(**data) -> Config:
    """configs/default.yaml shrunk: ResNet-18, 32-channel FPN and one-conv head, 128 px test size."""
    over = ["model.fpn.out_channels=32", "model.head.channels=32", "model.head.num_convs=1",
            "data.test_short=128", "data.test_max=160", "runtime.device=cpu"]
    over += [f"data.{k}={v}" for k, v in data.items()]
    return load_config(REPO / "configs" / "default.yaml", over)


def tiny_model(cfg: Config, seed: int = 0, class_bias: float = -1.5) -> torch.nn.Module:
    """A random-init model whose class bias is raised so real photos give detections above 0.05."""
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.head.cls_out.bias.fill_(class_bias)
        for m in model.modules():  # non-trivial BatchNorm statistics, so folding BN changes the weights
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.8, 1.2)
    return model


def write_checkpoint(path: Path, model: torch.nn.Module, cfg: Config, with_classes: bool = True,
                     extra: dict | None = None) -> Path:
    """A training-style checkpoint: model, config (plain dict), class names, category ids (+ optimiser state)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = {"state": {i: {"momentum_buffer": p.detach().clone()} for i, p in enumerate(params)},
                 "param_groups": [{"lr": 0.01, "momentum": 0.9, "params": list(range(len(params)))}]}  # SGD's
    ckpt = {"model": model.state_dict(), "config": config_to_dict(cfg), "optimizer": optimizer, "epoch": 1,
            **(extra or {})}
    if with_classes:
        ckpt.update(class_names=list(CLASS_NAMES), category_ids=list(CATEGORY_IDS))
    torch.save(ckpt, path)
    return path


def photos(shared: Path, n: int = 2, distinct_sizes: bool = True) -> list[Path]:
    """Real COCO photos from the shared mini set, of ``n`` different sizes when ``distinct_sizes``."""
    root = shared / "datasets" / "coco2017_ccby_mini"
    info = json.loads((root / "annotations" / "instances_val.json").read_text())
    out, sizes = [], set()
    for img in sorted(info["images"], key=lambda i: i["file_name"]):
        size = (img["width"], img["height"])
        if distinct_sizes and size in sizes:
            continue
        sizes.add(size)
        out.append(root / "images" / img["file_name"])
        if len(out) == n:
            break
    return out


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION), cv2.COLOR_BGR2RGB)


def as_chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)

#!/usr/bin/env python
"""Re-run the step that stopped a training run with a non-finite loss, and say what went non-finite first.

    python -m scripts.replay_nan checkpoints/default/nan_dump.pth [--device cpu|cuda]

``nan_dump.pth`` (written by the trainer) holds the config, the model and self-balance state *before* the failing
step, and that step's images and targets. The replay runs the same forward in training mode with hooks on every
module, prints the loss components, the first module whose output is non-finite, any non-finite weight, and the
parameters whose gradients are non-finite after the backward pass.
"""
from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from detector.build import build_model
from detector.checkpoint import safe_load
from detector.cli import run_cli
from detector.config import config_from_dict
from detector.errors import CheckpointError


def _non_finite(x) -> bool:
    if torch.is_tensor(x):
        return x.is_floating_point() and not bool(torch.isfinite(x).all())
    if isinstance(x, (list, tuple)):
        return any(_non_finite(v) for v in x)
    if isinstance(x, dict):
        return any(_non_finite(v) for v in x.values())
    return False


def replay(path: str, device: str = "cpu") -> dict:
    """Replay the dumped step; returns what it found (also printed by the CLI)."""
    dump = safe_load(path, verify=False)
    if dump.get("kind") != "nan_dump" or "config" not in dump:
        raise CheckpointError(f"{path} is not a nan_dump.pth written by this trainer (no config / kind)")
    cfg = config_from_dict(dump["config"], source=f"{path} (config)")
    torch.manual_seed(cfg.runtime.seed)
    model = build_model(cfg).to(device)
    model.load_state_dict(dump["model"])
    crit = getattr(model, "criterion", None)
    if crit is not None and hasattr(crit, "set_period"):
        crit.set_period(max(cfg.loss.sb_period, 1))
    model.train()
    found: dict = {"iteration": dump["global_iter"], "image_ids": dump.get("image_ids", []),
                   "bad_weights": [n for n, p in model.named_parameters() if _non_finite(p)],
                   "first_module": None}

    def hook(module: nn.Module, _inp, out, name: str = "") -> None:
        if found["first_module"] is None and _non_finite(out):
            found["first_module"] = name or type(module).__name__

    handles = [m.register_forward_hook(lambda mod, i, o, n=name: hook(mod, i, o, n))
               for name, m in model.named_modules() if name]
    images = dump["images"].to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in dump["targets"]]
    for t, img_id in zip(targets, found["image_ids"]):
        t.setdefault("image_id", img_id)
    loss_dict = model(images, targets)
    for h in handles:
        h.remove()
    found["losses"] = {k: float(v.detach().float()) for k, v in loss_dict.items()}
    found["bad_losses"] = [k for k, v in found["losses"].items() if not math.isfinite(v)]
    total = sum(v for k, v in loss_dict.items() if k.startswith("loss_"))
    found["bad_grads"] = []
    if total.requires_grad:
        total.backward()
        found["bad_grads"] = [n for n, p in model.named_parameters() if p.grad is not None and _non_finite(p.grad)]
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dump", help="nan_dump.pth written by train.py when the loss became non-finite")
    p.add_argument("--device", default="cpu", help="device to replay on (default cpu)")
    args = p.parse_args()
    f = replay(args.dump, args.device)
    print(f"replayed iteration {f['iteration']} (images {f['image_ids']})")
    print("loss components: " + ", ".join(f"{k}={v:.6g}" for k, v in f["losses"].items()))
    print(f"non-finite loss components: {', '.join(f['bad_losses']) or 'none (the step is finite when replayed)'}")
    print(f"first module with a non-finite output: {f['first_module'] or 'none'}")
    print(f"non-finite weights: {', '.join(f['bad_weights'][:10]) or 'none'}")
    print(f"parameters with non-finite gradients ({len(f['bad_grads'])}): "
          f"{', '.join(f['bad_grads'][:10]) or 'none'}" + (" (first listed first)" if f["bad_grads"] else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)

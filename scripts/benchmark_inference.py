"""Inference speed of our RetinaNet against torchvision's ``retinanet_resnet50_fpn``, side by side.

    python scripts/benchmark_inference.py [--size 512] [--runs 10] [--warmup 2] [--threads N] [--dense]

Both models: ResNet-50 FPN, 80 classes, 9 anchors per location, random init, eval mode, under
``torch.inference_mode``, on the same (1, 3, size, size) input and with the same number of threads.
torchvision's transform is set to min_size = max_size = size so it also sees a size x size image (its
normalisation stays in the timing). Runs are interleaved, alternating which model goes first. With
``--dense`` the class biases of both are set to 0 (scores ~0.5) so post-processing handles the maximum
number of candidates instead of the few a prior-0.01 head produces. Prints median and min times and ratios
(the min is the steadier figure on a shared machine).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector.build import build_retinanet  # noqa: E402
from detector.config import ModelCfg  # noqa: E402
from detector.fuse import fuse_for_inference  # noqa: E402


def build_ours(device: torch.device) -> nn.Module:
    cfg = ModelCfg()
    cfg.anchors.scales_per_octave, cfg.anchors.ratios = 3, [0.5, 1.0, 2.0]
    return fuse_for_inference(build_retinanet(cfg).eval()).to(device)  # as evaluate.py runs it


def build_torchvision(size: int, device: torch.device) -> nn.Module:
    model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                                                min_size=size, max_size=size)
    return model.to(device).eval()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dense", action="store_true", help="zero class biases: many candidates to post-process")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    ours, tv = build_ours(device), build_torchvision(args.size, device)
    if args.dense:
        nn.init.zeros_(ours.head.cls_out.bias)
        nn.init.zeros_(tv.head.classification_head.cls_logits.bias)
    image = torch.rand(3, args.size, args.size, device=device)
    batch = ((image - image.new_tensor([0.485, 0.456, 0.406])[:, None, None])
             / image.new_tensor([0.229, 0.224, 0.225])[:, None, None])[None]
    runs = {"ours": lambda: ours(batch), "torchvision": lambda: tv([image])}
    times: dict[str, list[float]] = {"ours": [], "torchvision": []}
    with torch.inference_mode():
        for _ in range(args.warmup):
            for fn in runs.values():
                fn()
        counts = {"ours": len(runs["ours"]()[0]["boxes"]), "torchvision": len(runs["torchvision"]()[0]["boxes"])}
        for i in range(args.runs):
            order = ["ours", "torchvision"] if i % 2 == 0 else ["torchvision", "ours"]
            for name in order:
                times[name].append(timed(runs[name], device))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"device {device}, threads {args.threads}, input 1x3x{args.size}x{args.size}, {args.runs} interleaved runs "
          f"after {args.warmup} warm-up, {'dense (bias 0)' if args.dense else 'prior-0.01'} heads")
    for name in ("ours", "torchvision"):
        print(f"{name:<12} median {med[name] * 1000:8.1f} ms  min {best[name] * 1000:8.1f} ms  "
              f"({counts[name]} detections)")
    print(f"ratio ours / torchvision: median {med['ours'] / med['torchvision']:.3f}, "
          f"min {best['ours'] / best['torchvision']:.3f}")


if __name__ == "__main__":
    main()

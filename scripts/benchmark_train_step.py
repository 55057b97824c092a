#!/usr/bin/env python
"""Cost of one full training iteration with aLRP Loss vs Focal Loss, measured side by side.

Same model (RetinaNet R-50 + ATSS, 80 classes, random init), same batch (default 2 images of 512x512 with a
few random boxes each), same optimiser; the two variants are timed in alternation so machine noise hits both.
An iteration is forward + loss + backward + SGD step.

    python -m scripts.benchmark_train_step [--config CONFIG] [--batch 2] [--size 512] [--iters 5] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from detector.build import build_model
from detector.config import load_config


def make_batch(batch: int, size: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=g)
    targets = []
    for i in range(batch):
        n = 6
        xy = torch.rand(n, 2, generator=g) * size * 0.7
        wh = 24 + torch.rand(n, 2, generator=g) * size * 0.3
        boxes = torch.cat([xy, (xy + wh).clamp(max=size - 1)], dim=1)
        labels = torch.randint(0, num_classes, (n,), generator=g)
        targets.append({"boxes": boxes, "labels": labels, "image_id": i, "img_size": (size, size),
                        "scale_factor": torch.ones(2)})
    return images, targets


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m scripts.benchmark_train_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/alrp_retinanet_r50_atss_500.yaml")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--iters", type=int, default=5, help="timed iterations per variant")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda (the GPU check runs it on cuda)")
    p.add_argument("--amp", action="store_true", help="autocast (fp16 on CUDA) + GradScaler, as train.py --amp")
    args = p.parse_args()
    device = torch.device(args.device)
    amp = args.amp and device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)

    variants = {"alrp": ["loss.type=alrp"], "focal": ["loss.type=focal", "loss.reg=giou", "loss.reg_weight=2.0"]}
    models, opts = {}, {}
    for name, ov in variants.items():
        cfg = load_config(args.config, ["model.backbone.weights=null", *ov])
        torch.manual_seed(0)
        models[name] = build_model(cfg).to(device).train()
        models[name].criterion.set_period(3665)  # as in training: no SB update inside the timed window
        opts[name] = torch.optim.SGD([q for q in models[name].parameters() if q.requires_grad], lr=1e-4,
                                     momentum=0.9, weight_decay=1e-4)
    models["focal"].load_state_dict(models["alrp"].state_dict(), strict=False)
    images, targets = make_batch(args.batch, args.size, cfg.model.num_classes)
    images = images.to(device)
    targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
    scalers = {n: torch.amp.GradScaler(device.type, enabled=amp) for n in variants}

    def step(name: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            losses = models[name](images, targets)
        total = sum(v for k, v in losses.items() if k.startswith("loss_"))
        opts[name].zero_grad(set_to_none=True)
        scalers[name].scale(total).backward()
        scalers[name].step(opts[name])
        scalers[name].update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        for name in variants:
            step(name)
    times: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(args.iters):
        for name in variants:
            times[name].append(step(name))
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"config {args.config}, batch {args.batch} x {args.size}x{args.size}, {args.device}{' AMP' * amp}, "
          f"{torch.get_num_threads()} threads, "
          f"median of {args.iters} iterations each (interleaved)")
    for name in variants:
        print(f"  {name:6s} {med[name]:.3f} s/iter  (all: {', '.join(f'{t:.3f}' for t in times[name])})")
    print(f"ratio aLRP / Focal = {med['alrp'] / med['focal']:.3f}")


if __name__ == "__main__":
    main()

"""Parameter counts and output shapes of the detector of one or more configs.

    python -m scripts.model_summary --config configs/default.yaml [--size 512] [--set key=value ...]
    python -m scripts.model_summary --table --config configs/*.yaml

The model is built with random init (``model.backbone.weights`` is set to null: the summary needs no
download). ``--table`` prints one markdown row per config instead of the detailed report.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from detector.build import build_model
from detector.config import load_config


def count(module: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    params = list(module.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def summarise(path: str, overrides: list[str], size: int) -> dict:
    cfg = load_config(path, overrides + ["model.backbone.weights=null"])
    model = build_model(cfg).eval()  # the detector model.type names (RetinaNet, FoveaBox, Faster R-CNN)
    levels = []
    if hasattr(model, "head"):  # one-stage detectors: per-level (class logits, box outputs) of the dense head
        with torch.inference_mode():
            cls, reg = model.head(model.fpn(model.backbone(torch.zeros(1, 3, size, size))))
        levels = [(tuple(c.shape), tuple(r.shape)) for c, r in zip(cls, reg)]
    anchors = getattr(getattr(model, "anchor_generator", None), "num_anchors", None)
    if anchors is None and hasattr(model, "rpn"):
        anchors = model.rpn.anchor_generator.num_anchors
    parts = {name: count(child) for name, child in model.named_children() if count(child)[0]}
    return {"name": cfg.name, "cfg": cfg.model, "total": count(model), "parts": parts, "anchors": anchors,
            "levels": levels}


def print_report(s: dict, size: int) -> None:
    m = s["cfg"]
    print(f"{s['name']}: {m.type}, backbone {m.backbone.name} (DCN stages {m.backbone.dcn_stages}), "
          f"{m.num_classes} classes, {s['anchors']} anchors/location"
          + (f", assigner {m.assigner.type}" if m.type == "retinanet" else ""))
    print(f"{'part':<10}{'total':>14}{'trainable':>14}")
    for part, (total, trainable) in [*s["parts"].items(), ("total", s["total"])]:
        print(f"{part:<10}{total:>14,}{trainable:>14,}")
    if s["levels"]:
        print(f"dense head outputs for a 1x3x{size}x{size} input (class logits, box outputs):")
        for i, (c, r) in enumerate(s["levels"]):
            print(f"  P{i + 3}: {c}  {r}")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m scripts.model_summary", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", required=True, help="config file(s)")
    ap.add_argument("--size", type=int, default=512, help="square input size for the output shapes")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    ap.add_argument("--table", action="store_true", help="one markdown row per config")
    args = ap.parse_args()
    summaries = [summarise(path, args.set, args.size) for path in args.config]
    if args.table:
        print("| config | backbone | anchors | parameters | trainable |")
        print("|---|---|---|---:|---:|")
        for s in summaries:
            dcn = " + DCNv2" if any(s["cfg"].backbone.dcn_stages) else ""
            print(f"| {s['name']} | {s['cfg'].backbone.name}{dcn} | {s['anchors']} | {s['total'][0]:,} "
                  f"| {s['total'][1]:,} |")
        return
    for s in summaries:
        print_report(s, args.size)


if __name__ == "__main__":
    main()

"""Inference speed of our RetinaNet against torchvision's ``retinanet_resnet50_fpn``, side by side in one run.

    python -m scripts.benchmark_inference [--size 512] [--runs 10] [--warmup 2] [--threads N] [--dense] [--no-onnx]

Rows (all ResNet-50 FPN, 80 classes, 9 anchors per location, random init, eval mode, same thread count):

* ``ours (model)``: the BN-folded model on an already normalised (1, 3, size, size) batch, as ``evaluate.py``
  ran it before the wrapper existed;
* ``ours (Detector)``: ``detector.inference.Detector`` on the uint8 (3, size, size) image: test-time resize,
  normalisation, padding, model and rescaling, i.e. what ``predict.py`` / ``evaluate.py`` run;
* ``onnxruntime (CPU)``: the same Detector exported by ``scripts/export.py --format onnx`` (NMS in the graph),
  on onnxruntime's CPU provider (skipped when onnx / onnxruntime are not installed, or with --no-onnx);
* ``torchvision``: ``retinanet_resnet50_fpn`` with min_size = max_size = size on the float image (its
  normalisation and resize included, so it compares with the Detector row).

Runs are interleaved, rotating which goes first. With ``--dense`` the class biases are set to 0 (scores ~0.5) so
post-processing handles the maximum number of candidates instead of the few a prior-0.01 head produces. Prints
median and min times and the ratios to torchvision (the min is the steadier figure on a shared machine).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from detector.build import build_retinanet
from detector.config import Config, ModelCfg
from detector.fuse import fuse_for_inference
from detector.inference import Detector


def build_ours(device: torch.device) -> nn.Module:
    cfg = ModelCfg()
    cfg.anchors.scales_per_octave, cfg.anchors.ratios = 3, [0.5, 1.0, 2.0]
    return fuse_for_inference(build_retinanet(cfg).eval()).to(device)  # as evaluate.py runs it


def build_torchvision(size: int, device: torch.device) -> nn.Module:
    model = torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None,
                                                                min_size=size, max_size=size)
    return model.to(device).eval()


def build_onnx_session(detector: Detector, threads: int, folder: Path) -> Callable | None:
    """An onnxruntime CPU session of the exported Detector, or None when onnx / onnxruntime are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime as ort
    except ImportError:
        return None
    from scripts.export import export_onnx

    path = export_onnx(detector.cpu(), folder / "model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda image: session.run(None, {"image": image})


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m scripts.benchmark_inference", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="square input size (default 512)")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per model (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch / onnxruntime threads")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (onnxruntime always runs on the CPU)")
    ap.add_argument("--dense", action="store_true", help="zero class biases: many candidates to post-process")
    ap.add_argument("--no-onnx", action="store_true", help="leave out the onnxruntime row")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    ours, tv = build_ours(device), build_torchvision(args.size, device)
    if args.dense:
        nn.init.zeros_(ours.head.cls_out.bias)
        nn.init.zeros_(tv.head.classification_head.cls_logits.bias)
    cfg = Config()
    detector = Detector(ours, short=args.size, max_long=args.size, size_divisor=cfg.data.size_divisor)
    image_u8 = torch.randint(0, 256, (3, args.size, args.size), dtype=torch.uint8)
    image = (image_u8.float() / 255).to(device)
    batch = ((image - image.new_tensor([0.485, 0.456, 0.406])[:, None, None])
             / image.new_tensor([0.229, 0.224, 0.225])[:, None, None])[None]
    image_u8_dev = image_u8.to(device)
    runs: dict[str, Callable[[], object]] = {
        "ours (model)": lambda: ours(batch),
        "ours (Detector)": lambda: detector(image_u8_dev),
        "torchvision": lambda: tv([image]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        # the same weights as the torch rows, on the CPU
        cpu_copy = Detector(copy.deepcopy(ours).cpu(), args.size, args.size, cfg.data.size_divisor)
        session = None if args.no_onnx else build_onnx_session(cpu_copy, args.threads, Path(tmp))
        if session is not None:
            u8 = image_u8.numpy()
            runs["onnxruntime (CPU)"] = lambda: session(u8)
        counts: dict[str, int] = {}
        with torch.inference_mode():
            for _ in range(args.warmup):
                for fn in runs.values():
                    fn()
            for name, fn in runs.items():
                out = fn()
                counts[name] = len(out[1]) if isinstance(out, (list, tuple)) and not isinstance(out[0], dict) \
                    else len(out[0]["boxes"])
            names = list(runs)
            times: dict[str, list[float]] = {k: [] for k in names}
            for i in range(args.runs):
                order = names[i % len(names):] + names[:i % len(names)]
                for name in order:
                    times[name].append(timed(runs[name], device))
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    print(f"device {device}, threads {args.threads}, input {args.size}x{args.size}, {args.runs} interleaved runs "
          f"after {args.warmup} warm-up, {'dense (bias 0)' if args.dense else 'prior-0.01'} heads"
          + ("" if "onnxruntime (CPU)" in runs else "; onnxruntime row left out (--no-onnx or not installed)"))
    for name in names:
        print(f"{name:<18} median {med[name] * 1000:8.1f} ms  min {best[name] * 1000:8.1f} ms  "
              f"({counts[name]} detections)  ratio to torchvision: median {med[name] / med['torchvision']:.3f}, "
              f"min {best[name] / best['torchvision']:.3f}")


if __name__ == "__main__":
    main()

r"""Export a trained detector: a slim release file, or a graph for deployment (ONNX, TorchScript).

    python -m scripts.export --checkpoint checkpoints/default/last.pth --out model.pth [--fuse-bn]
    python -m scripts.export --checkpoint checkpoints/default/last.pth --out model.safetensors --safetensors
    python -m scripts.export --checkpoint model.pth --format onnx --out model.onnx
    python -m scripts.export --checkpoint model.pth --format torchscript --out model.pt

Release file (``pth``, the default): the model weights (without the loss module's state; with ``--fuse-bn``
BatchNorm folded into the convolutions), the resolved config, the class names and the dataset's category ids; no
optimiser. It loads with ``torch.load(weights_only=True)``, and ``predict.py`` / ``evaluate.py`` take it without
``--config``. ``--safetensors`` writes the weights as safetensors with the rest as JSON in the header metadata
(entry ``alrp``).

ONNX and TorchScript (RetinaNet models): the whole :class:`detector.inference.Detector` for one image, input
``image`` = (3, H, W) uint8 RGB (any H and W), outputs ``boxes`` (n, 4) xyxy in input pixels, ``scores`` (n,),
``labels`` (n,) int64, sorted by score. Resize, normalisation, padding, the network, decoding, score threshold,
class-wise NMS (ONNX ``NonMaxSuppression``) and the top ``max_per_img`` are all inside the graph. ONNX uses the
TorchScript-based exporter (``dynamo=False``) with dynamic height and width, opset 17; the class names and
category ids are in the model's metadata (``class_names``, ``category_ids`` as JSON). TorchScript is a
``torch.jit.trace`` of the same module (sizes stay dynamic; ``torch.jit.script`` does not compile the model, and
``torch.export`` specialises H and W because the resize size is float arithmetic on them); load it with
``torch.jit.load``; the metadata is the extra file ``alrp.json``. After writing, both formats are run on a second
image size and compared with PyTorch (ONNX only when onnxruntime is installed: ``pip install -r
requirements-export.txt``).
"""
from __future__ import annotations

import argparse
import json
import logging
import warnings
from pathlib import Path

import torch

from detector.checkpoint import atomic_save
from detector.cli import run_cli
from detector.config import config_to_dict
from detector.errors import ConfigError, DiskError
from detector.inference import RELEASE_FORMAT, RELEASE_KIND, Detector, ExportableRetinaNet, load_detector

log = logging.getLogger("export")

FORMATS = ("pth", "onnx", "torchscript")
ONNX_OPSET = 17


def release_payload(detector: Detector) -> dict:
    """Weights (loss state dropped), resolved config, class names, category ids: what a release file holds."""
    state = {k: v.detach().cpu().contiguous() for k, v in detector.model.state_dict().items()
             if not k.startswith("criterion.")}
    return {"format_version": RELEASE_FORMAT, "kind": RELEASE_KIND, "model": state,
            "config": config_to_dict(detector.config), "class_names": list(detector.class_names),
            "category_ids": [int(c) for c in detector.category_ids], "fused": bool(detector.fused)}


def write_release(detector: Detector, out: Path, safetensors: bool = False) -> Path:
    """Write the slim release file (``.pth`` by torch.save, atomically; or ``.safetensors``)."""
    payload = release_payload(detector)
    if not safetensors:
        atomic_save(payload, out)
        return out
    try:
        from safetensors.torch import save_file
    except ImportError as e:
        raise ConfigError("--safetensors needs the safetensors package: pip install -r requirements-export.txt") from e
    if out.suffix != ".safetensors":
        raise ConfigError(f"--safetensors: the output file must end in .safetensors, got {out}")
    meta = {k: v for k, v in payload.items() if k != "model"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        save_file(payload["model"], str(tmp), metadata={"format": "pt", "alrp": json.dumps(meta)})
        tmp.replace(out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DiskError(f"cannot write {out}: {e}") from e
    return out


def _example_image(detector: Detector, seed: int, h: int | None = None, w: int | None = None) -> torch.Tensor:
    """A uint8 noise image near the test size (tracing only needs the shapes; values are irrelevant)."""
    g = torch.Generator().manual_seed(seed)
    h = h or detector.short
    w = w or detector.short * 4 // 3
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def _metadata(detector: Detector) -> dict[str, str]:
    meta = {"class_names": json.dumps(detector.class_names), "category_ids": json.dumps(detector.category_ids),
            "input": "image: (3, H, W) uint8 RGB, any size",
            "outputs": "boxes (n, 4) xyxy input pixels, scores (n,), labels (n,) int64 (index into class_names)"}
    if detector.config is not None:
        meta["config"] = json.dumps(config_to_dict(detector.config))
    return meta


def export_onnx(detector: Detector, out: Path) -> Path:
    """The single-image graph with dynamic H and W, NMS inside (ONNX NonMaxSuppression), metadata attached."""
    try:
        import onnx
    except ImportError as e:
        raise ConfigError("--format onnx needs the onnx package: pip install -r requirements-export.txt") from e

    module = ExportableRetinaNet(detector).eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer notes about shape arithmetic, which is meant to be traced
        torch.onnx.export(module, (_example_image(detector, 0),), str(out), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=["boxes", "scores", "labels"],
                          dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "scores": {0: "n"},
                                        "labels": {0: "n"}})
    proto = onnx.load(str(out))
    for key, value in _metadata(detector).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out))
    return out


def export_torchscript(detector: Detector, out: Path) -> Path:
    """``torch.jit.trace`` of the single-image module (sizes traced as values, so H and W stay dynamic)."""
    module = ExportableRetinaNet(detector).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (_example_image(detector, 0),), check_trace=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(out), _extra_files={"alrp.json": json.dumps(_metadata(detector))})
    return out


def run_exported(fmt: str, path: Path, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Run an exported file on one uint8 (3, H, W) image; None when its runtime is not installed."""
    if fmt == "torchscript":
        with torch.no_grad():
            return tuple(t.detach() for t in torch.jit.load(str(path))(image))  # type: ignore[return-value]
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return tuple(torch.from_numpy(a) for a in session.run(None, {"image": image.numpy()}))  # type: ignore


def check_export(fmt: str, detector: Detector, path: Path) -> str:
    """Compare the exported file with the PyTorch wrapper on an image of another size than the traced one."""
    image = _example_image(detector, 1, detector.short * 3 // 4 + 7, detector.short + 13)
    got = run_exported(fmt, path, image)
    if got is None:
        return "not checked (onnxruntime is not installed: pip install -r requirements-export.txt)"
    want = detector.cpu()(image)[0]
    boxes, scores, labels = got
    if len(scores) != len(want["scores"]) or not torch.equal(labels, want["labels"]):
        return f"MISMATCH: {len(scores)} detections vs {len(want['scores'])} in PyTorch"
    if len(scores):
        db = float((boxes - want["boxes"]).abs().max())
        ds = float((scores - want["scores"]).abs().max())
        return f"checked on a {image.shape[1]}x{image.shape[2]} image: {len(scores)} detections, max |box diff| " \
               f"{db:.2g} px, max |score diff| {ds:.2g}"
    return f"checked on a {image.shape[1]}x{image.shape[2]} image: no detections in either"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scripts.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True,
                   help="training checkpoint (last.pth, best.pth, epoch_XXX.pth) or a release file")
    p.add_argument("--out", type=Path, required=True, help="output file (.pth, .safetensors, .onnx or .pt)")
    p.add_argument("--format", choices=FORMATS, default="pth",
                   help="pth = slim release file (default); onnx / torchscript = deployment graph (RetinaNet)")
    p.add_argument("--safetensors", action="store_true", help="with --format pth: weights as safetensors, the "
                   "config and class names as JSON metadata (the --out name must end in .safetensors)")
    p.add_argument("--fuse-bn", action="store_true",
                   help="fold BatchNorm into the convolutions (same detections to float rounding, faster); the "
                        "onnx and torchscript formats always fold")
    p.add_argument("--config", type=Path, default=None,
                   help="config to use instead of the one stored in the checkpoint (needed only for checkpoints "
                        "without one)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides stored with the export, e.g. model.test.score_thr=0.3")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.safetensors and args.format != "pth":
        raise ConfigError("--safetensors applies to --format pth only")
    fuse = args.fuse_bn or args.format != "pth"
    detector = load_detector(args.checkpoint, args.config, "cpu", fuse=fuse, overrides=args.overrides)
    if args.format == "pth":
        out = write_release(detector, args.out, args.safetensors)
        size = out.stat().st_size / 2**20
        print(f"release file written to {out} ({size:.1f} MiB, {len(detector.class_names)} classes"
              f"{', BatchNorm folded' if detector.fused else ''})")
        return 0
    out = (export_onnx if args.format == "onnx" else export_torchscript)(detector, args.out)
    print(f"{args.format} model written to {out} ({out.stat().st_size / 2**20:.1f} MiB); "
          f"{check_export(args.format, detector, out)}")
    return 0


if __name__ == "__main__":
    run_cli(main)

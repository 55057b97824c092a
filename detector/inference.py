"""The detector as users run it: test-time preprocessing + model + boxes in input-image coordinates.

:class:`Detector` wraps an eval-mode model with the test pipeline of ``data.transforms.build_test_transform``
(docs/REPRODUCTION.md §6): keep-ratio resize (short side ``short``, long side at most ``max_long``, mmcv's
``imrescale`` size rule), ImageNet normalisation, zero padding bottom/right to a multiple of ``size_divisor``,
then the model's own post-processing with the resize factors, so boxes come back in the pixels of the image that
was passed in. ``predict.py``, ``evaluate.py`` and ``scripts/export.py`` all run this one definition.

The resize reproduces OpenCV's ``INTER_LINEAR`` (what the test loader runs) instead of ``F.interpolate``: the
same half-pixel source coordinates, but computed in float64 and rounded once, as OpenCV does, and the
horizontal pass before the vertical one. ``F.interpolate`` computes the coordinates in float32 and differs from
the loader by up to 0.01 grey levels; this version agrees to float32 rounding (a few 1e-5 on the 0-255 scale,
``tests/test_inference.py`` checks it on real photos). It is built from gathers and multiply-adds only, so it
also traces into ONNX with a dynamic input size.

:class:`ExportableRetinaNet` is the same computation for one image as a traceable graph (for ONNX / torch.export):
the size arithmetic is done on tensors, the anchors are generated from the feature-map shapes, and NMS runs over
all candidates at once (class-wise via ``torchvision.ops.batched_nms``, the ONNX ``NonMaxSuppression`` op),
which keeps the same top ``max_per_img`` as the model's incremental NMS.
"""
from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from data.transforms import IMAGENET_MEAN, IMAGENET_STD, KeepRatioResize
from detector.config import Config, config_from_dict, config_to_dict
from detector.errors import CheckpointError, ConfigError

__all__ = ["Detector", "ExportableRetinaNet", "load_detector", "load_release", "keep_ratio_size", "resize_linear",
           "normalise", "pad_batch", "to_coco_results", "RELEASE_KIND", "read_class_info"]

log = logging.getLogger(__name__)

RELEASE_KIND = "release"  # the ``kind`` of a slim file written by scripts/export.py
RELEASE_FORMAT = 1


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing: one definition for the test loader's pipeline, in torch
# ---------------------------------------------------------------------------------------------------------------
def _tensor(v: int | Tensor, device: torch.device | None = None) -> Tensor:
    """``v`` as a tensor; a traced size already is one (and stays dynamic), an int or SymInt becomes one."""
    return v if torch.is_tensor(v) else torch.as_tensor(v, device=device)


def keep_ratio_size(h: int | Tensor, w: int | Tensor, short: int, max_long: int) -> tuple[Any, Any]:
    """(new_h, new_w) of the test resize: ints for ints (``KeepRatioResize.new_size``), int64 tensors for tensors.

    The tensor form (for traced graphs, where h and w are dynamic) computes in float64 like Python does, so both
    forms give the same sizes.
    """
    if isinstance(h, int) and isinstance(w, int):
        return KeepRatioResize.new_size(h, w, short, max_long)
    h, w = _tensor(h).to(torch.float64), _tensor(w).to(torch.float64)
    s = torch.minimum(max_long / torch.maximum(h, w), short / torch.minimum(h, w))
    return torch.floor(h * s + 0.5).to(torch.int64), torch.floor(w * s + 0.5).to(torch.int64)


def _linear_taps(n_in: int | Tensor, n_out: int | Tensor, device: torch.device) -> tuple[Tensor, Tensor, Tensor,
                                                                                        Tensor]:
    """OpenCV INTER_LINEAR taps along one axis: (i0, i1) source indices and (w0, w1) float32 weights per output."""
    n_in_f = _tensor(n_in, device).to(device=device, dtype=torch.float64)
    n_out_t = _tensor(n_out, device).to(device)
    scale = n_in_f / n_out_t.to(torch.float64)
    pos = (torch.arange(n_out_t, device=device, dtype=torch.float64) + 0.5) * scale - 0.5
    i0 = torch.floor(pos)
    frac = pos - i0
    last = n_in_f - 1
    frac = torch.where((i0 < 0) | (i0 >= last), torch.zeros_like(frac), frac)  # borders: the edge pixel, weight 1
    i0 = torch.minimum(torch.clamp(i0, min=0), last)
    i1 = torch.minimum(i0 + 1, last)
    w1 = frac.to(torch.float32)
    return i0.to(torch.int64), i1.to(torch.int64), 1.0 - w1, w1


def resize_linear(image: Tensor, size: tuple[int | Tensor, int | Tensor]) -> Tensor:
    """(C, H, W) float32 -> (C, new_h, new_w), bilinear with OpenCV ``INTER_LINEAR``'s taps and pass order."""
    _, h, w = image.shape
    x0, x1, a0, a1 = _linear_taps(w, size[1], image.device)
    y0, y1, b0, b1 = _linear_taps(h, size[0], image.device)
    rows = image.index_select(2, x0) * a0 + image.index_select(2, x1) * a1  # horizontal pass first
    return rows.index_select(1, y0) * b0[:, None] + rows.index_select(1, y1) * b1[:, None]


_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
# albumentations' Normalize multiplies by the float32 reciprocal of std (bit-identical to the loader)
_INV_STD = (1.0 / torch.tensor(IMAGENET_STD, dtype=torch.float64)).to(torch.float32)


def normalise(image: Tensor) -> Tensor:
    """(C, H, W) float32 on the 0-255 scale -> ImageNet-normalised, exactly as the test pipeline's Normalize."""
    return (image - _MEAN.to(image.device)[:, None, None]) * _INV_STD.to(image.device)[:, None, None]


def pad_batch(images: Sequence[Tensor], size_divisor: int) -> Tensor:
    """Stack (3, h, w) images, zero-padded bottom/right to the largest size rounded up to ``size_divisor``."""
    h = max(int(im.shape[1]) for im in images)
    w = max(int(im.shape[2]) for im in images)
    h, w = -(-h // size_divisor) * size_divisor, -(-w // size_divisor) * size_divisor
    batch = images[0].new_zeros(len(images), images[0].shape[0], h, w)
    for i, im in enumerate(images):
        batch[i, :, :im.shape[1], :im.shape[2]] = im
    return batch


def _as_float_image(image: Tensor) -> Tensor:
    """A (3, H, W) uint8 or float image as float32 on the 0-255 scale."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) RGB image, got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image.to(torch.float32)
    if not image.is_floating_point():
        raise ValueError(f"expected a uint8 or float image, got {image.dtype}")
    return image.to(torch.float32)


# ---------------------------------------------------------------------------------------------------------------
# The wrapper
# ---------------------------------------------------------------------------------------------------------------
class Detector(nn.Module):
    """An eval-mode detector that takes RGB images of any size and returns boxes in their pixel coordinates.

    ``forward(images)`` accepts one (3, H, W) tensor, a (B, 3, H, W) batch or a list of (3, H, W) tensors of
    different sizes; uint8, or float on the 0-255 scale (as decoded from a file; not 0-1). It returns one dict
    per image: ``boxes`` (k, 4) xyxy in input pixels, ``scores`` (k,), ``labels`` (k,) int64 in 0..K-1 (the
    class names are ``self.class_names[label]``, the dataset's category ids ``self.category_ids[label]``).
    """

    def __init__(self, model: nn.Module, short: int = 500, max_long: int = 833, size_divisor: int = 32,
                 class_names: Sequence[str] | None = None, category_ids: Sequence[int] | None = None,
                 config: Config | None = None, amp: bool = False) -> None:
        super().__init__()
        self.model = model.eval()
        self.short, self.max_long, self.size_divisor = int(short), int(max_long), int(size_divisor)
        num_classes = getattr(model, "num_classes", None) or (config.model.num_classes if config else None)
        names = list(class_names) if class_names else [f"class_{i}" for i in range(num_classes or 0)]
        ids = [int(c) for c in category_ids] if category_ids else list(range(1, len(names) + 1))
        if num_classes is not None and (len(names) != num_classes or len(ids) != num_classes):
            raise CheckpointError(f"the model has {num_classes} classes but {len(names)} class names and "
                                  f"{len(ids)} category ids were given")
        self.class_names, self.category_ids = names, ids
        self.config = config
        self.fused = False  # BatchNorm folded into the convolutions (set by load_detector)
        self.amp = amp  # autocast the model (not the preprocessing): float16 on CUDA, bfloat16 on CPU

    @classmethod
    def from_config(cls, model: nn.Module, cfg: Config, class_names: Sequence[str] | None = None,
                    category_ids: Sequence[int] | None = None, amp: bool = False) -> "Detector":
        """The wrapper with the test pipeline of ``cfg.data`` (``test_short``, ``test_max``, ``size_divisor``)."""
        d = cfg.data
        return cls(model, d.test_short, d.test_max, d.size_divisor, class_names, category_ids, cfg, amp)

    def train(self, mode: bool = True) -> "Detector":
        if mode:
            raise RuntimeError("Detector is for inference only; train the model itself")
        return super().train(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _as_list(self, images: Tensor | Sequence[Tensor]) -> list[Tensor]:
        if torch.is_tensor(images):
            if images.dim() == 3:
                return [images]
            if images.dim() == 4:
                return list(images.unbind(0))
            raise ValueError(f"expected (3, H, W) or (B, 3, H, W) images, got shape {tuple(images.shape)}")
        return list(images)

    def preprocess(self, images: Tensor | Sequence[Tensor]) -> tuple[Tensor, list[dict[str, Tensor]]]:
        """The padded, normalised batch and per-image ``img_size`` / ``scale_factor`` (as the test loader makes)."""
        device = self.device
        out, targets = [], []
        for image in self._as_list(images):
            img = _as_float_image(image.to(device, non_blocking=True))
            h, w = int(img.shape[1]), int(img.shape[2])
            if h < 1 or w < 1:
                raise ValueError(f"empty image of shape {tuple(image.shape)}")
            if image.is_floating_point() and h * w > 64 and float(img.max()) <= 1.0:
                warnings.warn("Detector: a float image with values <= 1; images are expected on the 0-255 scale",
                              stacklevel=3)
            nh, nw = keep_ratio_size(h, w, self.short, self.max_long)
            out.append(normalise(resize_linear(img, (nh, nw))))
            # the test loader stores the factors as float32: the same rounding, the same boxes
            targets.append({"img_size": torch.tensor([nh, nw]),
                            "scale_factor": torch.tensor([nw / w, nh / h], dtype=torch.float32),
                            "orig_size": torch.tensor([h, w])})
        return pad_batch(out, self.size_divisor), targets

    @torch.inference_mode()
    def forward(self, images: Tensor | Sequence[Tensor]) -> list[dict[str, Tensor]]:
        batch, targets = self.preprocess(images)
        if batch.shape[0] == 0:
            return []
        device = batch.device
        dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=self.amp):
            outputs = self.model(batch, targets)
        return [{"boxes": o["boxes"].float(), "scores": o["scores"].float(), "labels": o["labels"]} for o in outputs]


def to_coco_results(outputs: Sequence[dict[str, Tensor]], image_ids: Sequence[Any], category_ids: Sequence[int],
                    class_names: Sequence[str] | None = None) -> list[dict]:
    """COCO result dicts (``bbox`` as xywh rounded to 3 decimals, ``score`` to 5), optionally with ``category_name``.

    The rounding is the one ``detector.engine.run_inference`` applies, so files from either path compare equal.
    """
    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out["boxes"].float().cpu()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, score, label in zip(xywh, out["scores"].float().cpu().tolist(), out["labels"].cpu().tolist()):
            r = {"image_id": image_id, "category_id": int(category_ids[label]),
                 "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)}
            if class_names is not None:
                r["category_name"] = class_names[label]
            results.append(r)
    return results


# ---------------------------------------------------------------------------------------------------------------
# A traceable single-image RetinaNet (ONNX, torch.export)
# ---------------------------------------------------------------------------------------------------------------
def _class_wise_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
    """Class-wise NMS as one NMS over boxes shifted apart per class (torchvision's ``batched_nms`` trick, without
    its size-dependent branch, which torch.export cannot trace); indices by descending score."""
    top = torch.cat([boxes.reshape(-1), boxes.new_zeros(1)]).max()  # boxes are clipped, >= 0; safe when empty
    offsets = labels.to(boxes.dtype) * (top + 1)
    return nms(boxes + offsets[:, None], scores, iou)


class ExportableRetinaNet(nn.Module):
    """``forward(image (3, H, W) uint8 or float 0-255) -> (boxes (n, 4), scores (n,), labels (n,) int64)``.

    The computation of :class:`Detector` for a RetinaNet, written without Python control flow on tensor values so
    tracing keeps H and W dynamic. Boxes are in input pixels, sorted by descending score. Candidates are chosen as
    ``model.test.candidates: anchors`` does (the ``nms_pre`` best anchors per level); other modes are refused.
    """

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        model = detector.model
        from detector.retinanet import RetinaNet

        if type(model) is not RetinaNet:
            raise ConfigError(f"export supports RetinaNet models only, not {type(model).__name__}")
        mode = getattr(detector.config.model.test, "candidates", "anchors") if detector.config else "anchors"
        if mode != "anchors":
            raise ConfigError(f"export implements model.test.candidates=anchors only, not {mode!r}")
        self.model = model
        self.short, self.max_long, self.size_divisor = detector.short, detector.max_long, detector.size_divisor
        gen = model.anchor_generator
        self.strides = [int(s) for s in gen.strides]
        for i, s in enumerate(self.strides):
            self.register_buffer(f"base_anchors_{i}", gen.base_anchors(s), persistent=False)

    def _anchors(self, level: int, h: Tensor | int, w: Tensor | int, device: torch.device) -> Tensor:
        """(h*w*A, 4) anchors of one level ordered (H, W, A), as ``AnchorGenerator.grid_anchors``."""
        stride = self.strides[level]
        base = getattr(self, f"base_anchors_{level}")
        ys = torch.arange(h, dtype=torch.float32, device=device) * stride
        xs = torch.arange(w, dtype=torch.float32, device=device) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx, yy, xx, yy], dim=-1).reshape(-1, 1, 4)
        return (shifts + base[None]).reshape(-1, 4)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m = self.model
        img = image.to(torch.float32)
        h, w = _tensor(img.shape[1]), _tensor(img.shape[2])
        nh, nw = keep_ratio_size(h, w, self.short, self.max_long)
        x = normalise(resize_linear(img, (nh, nw)))
        div = self.size_divisor
        ph = (nh + div - 1) // div * div - nh
        pw = (nw + div - 1) // div * div - nw
        x = nn.functional.pad(x, [0, pw, 0, ph])[None]
        cls_logits, box_deltas = m.head(m.fpn(m.backbone(x)))
        k = m.num_classes
        all_boxes, all_scores = [], []
        for level, (logits, deltas) in enumerate(zip(cls_logits, box_deltas)):
            fh, fw = logits.shape[-2], logits.shape[-1]
            anchors = self._anchors(level, fh, fw, x.device)
            logits = logits[0].permute(1, 2, 0).reshape(-1, k)
            deltas = deltas[0].permute(1, 2, 0).reshape(-1, 4)
            if m.nms_pre > 0:
                k_top = torch.clamp(_tensor(logits.shape[0]), max=m.nms_pre)
                top = logits.amax(dim=1).topk(k_top).indices
                logits, deltas, anchors = logits[top], deltas[top], anchors[top]
            all_boxes.append(m.coder.decode(anchors, deltas))
            all_scores.append(logits.sigmoid())
        boxes = torch.cat(all_boxes)
        scores = torch.cat(all_scores)
        hi = torch.stack([nw, nh, nw, nh]).to(torch.float32)
        boxes = torch.minimum(boxes.clamp(min=0), hi)  # clip to the resized image (before padding)
        row, label = (scores > m.score_thr).nonzero(as_tuple=True)
        boxes, scores = boxes[row], scores[row, label]
        keep = _class_wise_nms(boxes, scores, label, m.nms_iou)
        if m.max_per_img > 0:
            keep = keep[:m.max_per_img]
        scale = torch.stack([nw.to(torch.float64) / w.to(torch.float64),
                             nh.to(torch.float64) / h.to(torch.float64)]).to(torch.float32)
        return boxes[keep] / scale.repeat(2), scores[keep], label[keep]


# ---------------------------------------------------------------------------------------------------------------
# Loading: a training checkpoint or a slim release file (.pth or .safetensors)
# ---------------------------------------------------------------------------------------------------------------
def _is_safetensors(path: Path) -> bool:
    return path.suffix == ".safetensors"


def load_release(path: str | Path) -> dict:
    """The contents of a checkpoint or release file as ``{model, config, class_names, category_ids, fused, kind}``.

    ``.safetensors`` files hold the weights, with the rest as JSON in the header's ``alrp`` metadata entry; other
    files are read with ``torch.load(weights_only=True)`` (checksum verified when present).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        try:
            from safetensors import SafetensorError, safe_open
        except ImportError as e:
            raise ConfigError(f"{path}: reading .safetensors files needs the safetensors package "
                              f"(pip install -r requirements-export.txt)") from e

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = json.loads((f.metadata() or {}).get("alrp", "null") or "null")
                state = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path}: not a valid safetensors file ({e})") from e
        if not isinstance(meta, dict) or "config" not in meta:
            raise CheckpointError(f"{path}: a safetensors file without this project's 'alrp' metadata (config, "
                                  f"class names); write it with `python -m scripts.export --safetensors`")
        return {**meta, "model": state}
    from detector.checkpoint import safe_load

    obj = safe_load(path)
    if not isinstance(obj.get("model"), dict):
        raise CheckpointError(f"{path}: no 'model' weights in this file (keys: {', '.join(map(str, obj))[:200]})")
    return obj


def read_class_info(obj: dict, cfg: Config, source: str | Path) -> tuple[list[str], list[int]]:
    """Class names and category ids stored in ``obj``; older checkpoints without them fall back to the
    categories of the config's validation annotation file, then to ``class_<i>`` / 1..K with a warning."""
    names, ids = list(obj.get("class_names") or []), [int(c) for c in obj.get("category_ids") or []]
    if names and ids:
        return names, ids
    try:
        from data.build import dataset_paths
        from data.coco import load_coco_json

        ann, _ = dataset_paths(cfg.data, "val")
        cats = sorted(load_coco_json(ann)["categories"], key=lambda c: int(c["id"]))
        if len(cats) == cfg.model.num_classes:
            log.warning("%s has no class names; using the categories of %s", source, ann)
            return [str(c.get("name", c["id"])) for c in cats], [int(c["id"]) for c in cats]
    except (OSError, ValueError, KeyError):
        pass
    log.warning("%s has no class names and its dataset is not available: classes are named class_0..", source)
    k = cfg.model.num_classes
    return names or [f"class_{i}" for i in range(k)], ids or list(range(1, k + 1))


def _load_state(model: nn.Module, state: dict[str, Tensor], source: str | Path) -> None:
    """Load ``state`` into ``model``; every tensor must fit (the loss module's buffers are optional)."""
    own = model.state_dict()
    misfit = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in state and not k.startswith("criterion.")]
    unexpected = [k for k in state if k not in own and not k.startswith("criterion.")]
    if misfit or missing or unexpected:
        raise CheckpointError(f"{source}: the weights do not fit the model its config builds: {len(misfit)} shape "
                              f"mismatches {misfit[:5]}, {len(missing)} missing {missing[:5]}, {len(unexpected)} "
                              f"unexpected {unexpected[:5]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def build_inference_model(cfg: Config, fused: bool = False) -> nn.Module:
    """The eval-mode model of ``cfg`` without downloading anything (weights come from a file); BN folded if asked."""
    from detector.build import build_model
    from detector.fuse import fuse_conv_bn

    cfg = config_from_dict(config_to_dict(cfg))  # a copy: the caller's config keeps its weight keys
    cfg.model.weights = None
    cfg.model.backbone.weights = None
    model = build_model(cfg).eval()
    if fused:
        fuse_conv_bn(model)
    return model


def load_detector(path: str | Path, config: Config | str | Path | None = None, device: str | torch.device = "cpu",
                  fuse: bool = True, overrides: Sequence[str] = (), amp: bool = False) -> Detector:
    """A :class:`Detector` from a training checkpoint or a slim release file (see ``scripts/export.py``).

    Args:
        path: ``last.pth`` / ``epoch_XXX.pth`` / ``best.pth`` (keys ``model``, ``config``, ``class_names``,
            ``category_ids``), a release ``.pth`` or a ``.safetensors`` release file.
        config: a config (object or YAML path) that replaces the one stored in the file; needed only for
            checkpoints written without one.
        overrides: ``dotted.key=value`` strings applied to the config (e.g. ``model.test.score_thr=0.3``).
        fuse: fold BatchNorm into the convolutions (same detections to float rounding, faster).
    """
    from detector.config import apply_overrides, load_config

    obj = load_release(path)
    if config is not None:
        # the checkpoint holds every weight: files the config names for training need not exist any more
        cfg = config if isinstance(config, Config) else load_config(
            config, ["model.weights=null", "model.backbone.weights=null"])
        raw = config_to_dict(cfg)
    elif isinstance(obj.get("config"), dict):
        raw = obj["config"]
    else:
        raise ConfigError(f"{path} stores no config: pass the config it was trained with (--config)")
    if overrides:
        raw = apply_overrides(raw, list(overrides))
    cfg = config_from_dict(raw, str(path))
    fused_file = bool(obj.get("fused", False))
    model = build_inference_model(cfg, fused=fused_file)
    _load_state(model, obj["model"], path)
    if fuse and not fused_file:
        from detector.fuse import fuse_conv_bn

        fuse_conv_bn(model)
    names, ids = read_class_info(obj, cfg, path)
    detector = Detector.from_config(model.to(torch.device(device)), cfg, names, ids, amp=amp)
    detector.fused = fused_file or fuse
    return detector


def raw_image_transform(image: Any, boxes: Any, labels: Any, iscrowd: Any, seed: int | None = None) -> dict:
    """A dataset transform that leaves the image as it is: (3, H, W) float32 0-255 RGB, scale factor 1.

    For datasets whose images go through :class:`Detector` (which resizes and normalises them itself); the
    targets keep the original boxes. Same output keys as ``data.transforms.TestTransform``.
    """
    import numpy as np

    h, w = image.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    crowd = np.asarray(iscrowd, dtype=bool).reshape(-1)
    return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)),
            "boxes": torch.from_numpy(boxes[~crowd]), "labels": torch.as_tensor(np.asarray(labels)[~crowd]),
            "crowd_boxes": torch.from_numpy(boxes[crowd]), "img_size": (h, w), "scale_factor": (1.0, 1.0)}


def list_collate(batch: list[Any]) -> list[Any]:
    """Keep a batch as a list of (image, target) pairs (images differ in size); drops skipped (None) samples."""
    return [b for b in batch if b is not None]

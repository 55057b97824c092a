"""Semantic checks of a typed config: ranges, enumerations and cross-field rules.

:func:`detector.config.load_config` runs these on the final config (file + ``_base_`` + overrides), so a bad
value fails in the first second, with the key, where it came from and what to do, before any dataset or model
is built. Structural problems (unknown key, wrong type) are caught earlier by the schema itself.

Enumerations are read from the registries the builders use (``detector.build``, ``detector.losses``,
``detector.backbone``), so a newly registered loss or model is valid without touching this module; the values of
fields without a registry are listed here.
"""
from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["config_issues", "check_config", "enum_values"]

DEVICES = ("auto", "cpu", "cuda")
DATASETS = ("coco", "shapes")
FPN_EXTRA_FROM = ("input", "output")
TEST_CANDIDATES = ("anchors", "pairs")

Issue = tuple[str, str]  # (dotted key, what is wrong and what to do)


# ------------------------------------------------------------------------------------------ enumerations
# Plain lists, used where a builder module does not (or no longer) export its registry under these names.
_FALLBACK = {
    "models": ("retinanet", "fovea", "faster_rcnn"),
    "backbones": ("resnet18", "resnet34", "resnet50", "resnet101", "resnext101_64x4d"),
    "assigners": ("atss", "max_iou"),
    "dense_losses": ("alrp", "ap", "focal"),
    "dense_regs": ("smooth_l1", "l1", "giou"),
    "rcnn_losses": ("alrp", "ce"),
    "rcnn_regs": ("l1", "giou"),
    "rank_scopes": ("device", "global"),
}


def _registry(module: str, names: Sequence[str], fallback: str) -> tuple[str, ...]:
    """The keys of the first of ``names`` that ``module`` exports (a dict, tuple or keys view), else the fallback."""
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return _FALLBACK[fallback]
    values: list[str] = []
    for name in names:
        reg = getattr(mod, name, None)
        if reg is not None:
            values += [str(k) for k in reg]
    return tuple(dict.fromkeys(values)) or _FALLBACK[fallback]


def enum_values() -> dict[str, tuple[str, ...]]:
    """Valid values of every enumerated key, from the live registries (imported here, not at module load)."""
    models = _registry("detector.build", ("MODELS", "OWN_LOSS_MODELS"), "models")
    dense_losses = _registry("detector.losses.criterion", ("CRITERIA",), "dense_losses")
    dense_regs = _registry("detector.losses.criterion", ("REG_TYPES",), "dense_regs")
    rcnn_losses = _registry("detector.faster_rcnn", ("STAGE_LOSSES", "LOSS_TYPES"), "rcnn_losses")
    rcnn_regs = _registry("detector.faster_rcnn", ("ROI_REG_TYPES", "REG_TYPES"), "rcnn_regs")
    return {
        "model.type": models,
        "model.backbone.name": _registry("detector.backbone", ("BACKBONES",), "backbones"),
        "model.assigner.type": _registry("detector.build", ("ASSIGNERS",), "assigners"),
        "model.fpn.extra_from": FPN_EXTRA_FROM,
        "model.test.candidates": TEST_CANDIDATES,
        "loss.type": tuple(dict.fromkeys((*dense_losses, *rcnn_losses))),
        "loss.type@dense": dense_losses,
        "loss.type@faster_rcnn": rcnn_losses,
        "loss.reg": tuple(dict.fromkeys((*dense_regs, *rcnn_regs))),
        "loss.reg@dense": dense_regs,
        "loss.reg@faster_rcnn": rcnn_regs,
        "loss.rank_scope": _registry("detector.losses.global_rank", ("RANK_SCOPES",), "rank_scopes"),
        "runtime.device": DEVICES,
        "data.dataset": DATASETS,
    }


def _closest(value: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), list(valid), n=1, cutoff=0.5)
    return f". Did you mean '{close[0]}'?" if close else ""


def _enum(key: str, value: Any, valid: Sequence[str]) -> list[Issue]:
    if value in valid:
        return []
    return [(key, f"'{key}' must be one of {', '.join(valid)}, got {value!r}{_closest(value, valid)}")]


# ------------------------------------------------------------------------------------------ ranges
def _get(cfg: Any, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _num(key: str, value: Any, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         hi_open: bool = False, hint: str = "") -> list[Issue]:
    """``value`` within [lo, hi] (or open ends); None passes (optional keys)."""
    if value is None:
        return []
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if ok:
        return []
    if lo is not None and hi is not None:
        rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        rng = f"{'>' if lo_open else '>='} {lo:g}"
    else:
        rng = f"{'<' if hi_open else '<='} {hi:g}"
    return [(key, f"'{key}' must be {rng}, got {value!r}{hint}")]


def _each(key: str, values: Iterable[Any] | None, **kw: Any) -> list[Issue]:
    if values is None:
        return []
    out: list[Issue] = []
    for i, v in enumerate(values):
        out += [(key, msg.replace(f"'{key}'", f"'{key}[{i}]'", 1)) for _, msg in _num(key, v, **kw)]
    return out


def _nonempty(key: str, values: Sequence[Any] | None) -> list[Issue]:
    return [(key, f"'{key}' must not be empty")] if values is not None and len(values) == 0 else []


def _increasing(key: str, values: Sequence[float] | None) -> list[Issue]:
    if values and any(b <= a for a, b in zip(values, values[1:])):
        return [(key, f"'{key}' must be strictly increasing, got {list(values)}")]
    return []


def _length(key: str, values: Sequence[Any] | None, n: int) -> list[Issue]:
    if values is not None and len(values) != n:
        return [(key, f"'{key}' must have {n} values, got {list(values)}")]
    return []


PROB = dict(lo=0.0, hi=1.0)
POS = dict(lo=0, lo_open=True)
NONNEG = dict(lo=0)
AT_LEAST_1 = dict(lo=1)

# key -> range, checked for every config (optional keys skip None)
RANGES: dict[str, dict[str, Any]] = {
    "model.num_classes": AT_LEAST_1,
    "model.backbone.frozen_stages": dict(lo=-1, hi=4),
    "model.fpn.out_channels": AT_LEAST_1,
    "model.anchors.octave_base_scale": POS,
    "model.anchors.scales_per_octave": AT_LEAST_1,
    "model.head.num_convs": NONNEG,
    "model.head.channels": AT_LEAST_1,
    "model.head.prior_prob": dict(lo=0, hi=1, lo_open=True, hi_open=True),
    "model.assigner.topk": AT_LEAST_1,
    "model.assigner.pos_iou": PROB,
    "model.assigner.neg_iou": PROB,
    "model.assigner.min_pos_iou": PROB,
    "model.test.nms_pre": AT_LEAST_1,
    "model.test.score_thr": PROB,
    "model.test.nms_iou": dict(lo=0, hi=1, lo_open=True),
    "model.test.max_per_img": AT_LEAST_1,
    "model.fovea.sigma": dict(lo=0, hi=1, lo_open=True),
    "model.rpn.pos_iou": dict(lo=0, hi=1, hi_open=True),
    "model.rpn.neg_iou": PROB,
    "model.rpn.min_pos_iou": PROB,
    "model.rpn.num_samples": AT_LEAST_1,
    "model.rpn.pos_fraction": PROB,
    "model.rpn.loss_weight": NONNEG,
    "model.rpn.train_nms_pre": AT_LEAST_1,
    "model.rpn.train_nms_post": AT_LEAST_1,
    "model.rpn.test_nms_pre": AT_LEAST_1,
    "model.rpn.test_nms_post": AT_LEAST_1,
    "model.rpn.nms_iou": dict(lo=0, hi=1, lo_open=True),
    "model.roi.fc_channels": AT_LEAST_1,
    "model.roi.roi_size": AT_LEAST_1,
    "model.roi.pos_iou": PROB,
    "model.roi.neg_iou": PROB,
    "model.roi.num_samples": AT_LEAST_1,
    "model.roi.pos_fraction": PROB,
    "data.train_size": AT_LEAST_1,
    "data.test_short": AT_LEAST_1,
    "data.test_max": AT_LEAST_1,
    "data.size": AT_LEAST_1,
    "data.size_divisor": AT_LEAST_1,
    "data.batch_size": AT_LEAST_1,
    "data.test_batch_size": AT_LEAST_1,
    "data.num_workers": NONNEG,
    "data.min_size": NONNEG,
    "data.aug.expand_prob": PROB,
    "data.aug.min_crop_size": dict(lo=0, hi=1, lo_open=True),
    "data.aug.flip_prob": PROB,
    "data.shapes.num_train": AT_LEAST_1,
    "data.shapes.num_val": AT_LEAST_1,
    "data.shapes.image_size": dict(lo=16),
    "loss.delta": POS,
    "loss.eps": POS,
    "loss.sb_init": POS,
    "loss.sb_period": dict(lo=0, hint=" (0 = once per epoch)"),
    "loss.reg_weight": NONNEG,
    "loss.smooth_l1_beta": POS,
    "loss.focal_alpha": PROB,
    "loss.focal_gamma": NONNEG,
    "solver.base_lr": POS,
    "solver.momentum": dict(lo=0, hi=1, hi_open=True),
    "solver.weight_decay": NONNEG,
    "solver.reference_batch": AT_LEAST_1,
    "solver.epochs": AT_LEAST_1,
    "solver.max_iters": AT_LEAST_1,
    "solver.gamma": dict(lo=0, hi=1, lo_open=True),
    "solver.warmup_iters": NONNEG,
    "solver.warmup_epochs": NONNEG,
    "solver.warmup_ratio": dict(lo=0, hi=1, lo_open=True),
    "solver.grad_clip": POS,
    "runtime.seed": NONNEG,
    "runtime.log_interval": dict(lo=1, hint=" (iterations between log lines)"),
    "runtime.eval_interval": dict(lo=0, hint=" (epochs between validations; 0 = never)"),
    "runtime.checkpoint_interval": dict(lo=1, hint=" (epochs between epoch_XXX.pth; lr drops are always saved)"),
    "runtime.checkpoint_iters": dict(lo=0, hint=" (0 = last.pth only at epoch ends)"),
    "runtime.keep_last": dict(lo=0, hint=" (0 = keep every epoch_XXX.pth)"),
    "runtime.eval_max_images": AT_LEAST_1,
}


def _ranges(cfg: Any) -> list[Issue]:
    out: list[Issue] = []
    for key, spec in RANGES.items():
        try:
            value = _get(cfg, key)
        except AttributeError:  # a key another version of the schema lacks
            continue
        out += _num(key, value, **spec)
    return out


def _lists(cfg: Any) -> list[Issue]:
    """Checks of list-valued keys: lengths, emptiness, element ranges, order."""
    m, d = cfg.model, cfg.data
    out = _length("model.coder_stds", m.coder_stds, 4) + _each("model.coder_stds", m.coder_stds, **POS)
    out += _length("model.backbone.dcn_stages", m.backbone.dcn_stages, 4)
    out += _nonempty("model.anchors.ratios", m.anchors.ratios) + _each("model.anchors.ratios", m.anchors.ratios, **POS)
    out += _nonempty("model.anchors.strides", m.anchors.strides)
    out += _each("model.anchors.strides", m.anchors.strides, **AT_LEAST_1)
    out += _increasing("model.anchors.strides", m.anchors.strides)
    sizes = getattr(m.anchors, "sizes", None)
    if sizes is not None:
        out += _length("model.anchors.sizes", sizes, len(m.anchors.strides))
        for i, level in enumerate(sizes):
            out += _nonempty(f"model.anchors.sizes[{i}]", level) + _each(f"model.anchors.sizes[{i}]", level, **POS)
    if m.type == "fovea":
        out += _each("model.fovea.base_edges", m.fovea.base_edges, **POS)
        for i, pair in enumerate(m.fovea.scale_ranges):
            if len(pair) != 2 or not 0 <= pair[0] <= pair[1]:
                out.append((f"model.fovea.scale_ranges", f"'model.fovea.scale_ranges[{i}]' must be [low, high] with "
                                                         f"0 <= low <= high, got {pair}"))
    if m.type == "faster_rcnn":
        for sec in ("rpn", "roi"):
            stds = getattr(m, sec).coder_stds
            out += _length(f"model.{sec}.coder_stds", stds, 4) + _each(f"model.{sec}.coder_stds", stds, **POS)
        out += _nonempty("model.rpn.anchor_scales", m.rpn.anchor_scales)
        out += _each("model.rpn.anchor_scales", m.rpn.anchor_scales, **POS)
        out += _nonempty("model.rpn.anchor_ratios", m.rpn.anchor_ratios)
        out += _each("model.rpn.anchor_ratios", m.rpn.anchor_ratios, **POS)
        out += _each("model.rpn.anchor_strides", m.rpn.anchor_strides, **AT_LEAST_1)
    a = d.aug
    if a.expand:
        out += _length("data.aug.expand_ratio", a.expand_ratio, 2)
        if len(a.expand_ratio) == 2 and not 1 <= a.expand_ratio[0] <= a.expand_ratio[1]:
            out.append(("data.aug.expand_ratio", f"'data.aug.expand_ratio' must be [low, high] with 1 <= low <= high, "
                                                 f"got {a.expand_ratio}"))
    if a.min_iou_crop:
        out += _nonempty("data.aug.min_ious", a.min_ious) + _each("data.aug.min_ious", a.min_ious, **PROB)
    return out


def _schedule(s: Any) -> list[Issue]:
    """lr steps: non-empty, positive, strictly increasing."""
    out: list[Issue] = []
    for key in ("lr_steps", "lr_step_iters"):
        steps = getattr(s, key)
        if steps is None:
            continue
        out += _nonempty(f"solver.{key}", steps) + _each(f"solver.{key}", steps, lo=1)
        out += _increasing(f"solver.{key}", steps)
    # A step at or after the end of training cannot corrupt a run (it never applies): the trainer warns about it
    # before the first step (solver.schedule_warnings), so shortening a schedule on the command line just works.
    return out


def _cross(cfg: Any, enums: dict[str, tuple[str, ...]]) -> list[Issue]:
    """Rules between keys: loss vs model type, IoU thresholds, test sizes, batches."""
    m, d, loss = cfg.model, cfg.data, cfg.loss
    out: list[Issue] = []
    if m.type == "faster_rcnn":
        valid = enums["loss.type@faster_rcnn"]
        if loss.type not in valid:
            out.append(("loss.type", f"'loss.type' must be one of {', '.join(valid)} for model.type faster_rcnn (it "
                                     f"builds its own losses), got {loss.type!r}{_closest(loss.type, valid)}"))
        if loss.type == "ce":
            out += _enum("loss.reg", loss.reg, enums["loss.reg@faster_rcnn"])
        if m.rpn.neg_iou > m.rpn.pos_iou:
            out.append(("model.rpn.neg_iou", f"'model.rpn.neg_iou' ({m.rpn.neg_iou}) must not exceed "
                                             f"'model.rpn.pos_iou' ({m.rpn.pos_iou})"))
    elif m.type in enums["model.type"]:
        valid = enums["loss.type@dense"]
        if loss.type not in valid:
            close = _closest(loss.type, valid)
            why = (f" ('{loss.type}' is a loss of model.type faster_rcnn)" if loss.type in enums["loss.type"]
                   else "")
            out.append(("loss.type", f"'loss.type' must be one of {', '.join(valid)} for model.type {m.type}, got "
                                     f"{loss.type!r}{why}{close}"))
        out += _enum("loss.reg", loss.reg, enums["loss.reg@dense"])
        if loss.type == "focal" and loss.rank_scope != "device":
            out.append(("loss.rank_scope", f"'loss.rank_scope' must be 'device' with loss.type focal (Focal Loss does "
                                           f"not rank), got {loss.rank_scope!r}"))
    if m.assigner.type == "max_iou" and m.assigner.neg_iou > m.assigner.pos_iou:
        out.append(("model.assigner.neg_iou", f"'model.assigner.neg_iou' ({m.assigner.neg_iou}) must not exceed "
                                              f"'model.assigner.pos_iou' ({m.assigner.pos_iou})"))
    if d.test_max < d.test_short:
        out.append(("data.test_max", f"'data.test_max' ({d.test_max}) must be >= 'data.test_short' ({d.test_short}): "
                                     f"it caps the longer side of an image whose shorter side is test_short"))
    if not cfg.name or "/" in cfg.name or "\\" in cfg.name or cfg.name in (".", ".."):
        out.append(("name", f"'name' names the run directory checkpoints/<name>/: it must be a non-empty file name "
                            f"without '/', got {cfg.name!r}"))
    if cfg.solver.warmup_iters is None and cfg.solver.warmup_epochs is None:
        out.append(("solver.warmup_iters", "give 'solver.warmup_iters' or 'solver.warmup_epochs' (0 = no warmup)"))
    if cfg.solver.epochs is None and cfg.solver.max_iters is None:
        out.append(("solver.epochs", "give 'solver.epochs' or 'solver.max_iters' (the length of training)"))
    if cfg.solver.lr_steps is None and cfg.solver.lr_step_iters is None:
        out.append(("solver.lr_steps", "give 'solver.lr_steps' (epochs) or 'solver.lr_step_iters' (iterations)"))
    return out


def _paths(cfg: Any) -> list[Issue]:
    """Files the config names directly (weights); the dataset paths are checked when the datasets are built
    (:func:`data.build.dataset_paths`, naming the key), so a config can be loaded where its data is not."""
    out: list[Issue] = []
    if cfg.model.weights is not None and not Path(cfg.model.weights).expanduser().is_file():
        out.append(("model.weights", f"'model.weights': file not found: {cfg.model.weights} (a checkpoint of this "
                                     f"detector; null = no weights)"))
    bw = cfg.model.backbone.weights
    if bw is not None and _looks_like_path(bw) and not Path(bw).expanduser().is_file():
        out.append(("model.backbone.weights", f"'model.backbone.weights': file not found: {bw} (a torchvision "
                                              f"weights name such as IMAGENET1K_V1, a local .pth, or null)"))
    return out


def _looks_like_path(text: str) -> bool:
    return "/" in text or "\\" in text or Path(text).suffix in (".pth", ".pt", ".pkl", ".bin", ".safetensors")


def config_issues(cfg: Any, paths: bool = True) -> list[Issue]:
    """Every semantic problem of ``cfg`` as (dotted key, message); empty when the config is usable.

    ``paths``: also check that the files the config names exist (not for a config read back from a checkpoint,
    whose ``model.weights`` may have been moved since: only the checkpoint's own weights are used then).
    """
    enums = enum_values()
    out: list[Issue] = []
    for key in ("model.type", "model.backbone.name", "model.assigner.type", "model.fpn.extra_from",
                "model.test.candidates", "loss.type", "loss.reg", "loss.rank_scope", "runtime.device",
                "data.dataset"):
        try:
            value = _get(cfg, key)
        except AttributeError:
            continue
        out += _enum(key, value, enums[key])
    out += _ranges(cfg) + _lists(cfg) + _schedule(cfg.solver) + _cross(cfg, enums) + (_paths(cfg) if paths else [])
    seen: set[str] = set()
    unique = []
    for key, msg in out:  # one message per key (e.g. loss.type unknown and unsupported by the model)
        if key not in seen:
            seen.add(key)
            unique.append((key, msg))
    return unique


def check_config(cfg: Any, source: str | Callable[[str], str] = "<config>", paths: bool = True) -> None:
    """Raise :class:`ConfigError` listing every problem of ``cfg`` on one line, each prefixed by its source.

    ``source`` is a string or a function key -> source ("command line" for an overridden key, else the file).
    """
    issues = config_issues(cfg, paths)
    if not issues:
        return
    where = source if callable(source) else (lambda _key: source)
    parts = [f"{where(key)}: {msg}" for key, msg in issues]
    raise ConfigError("; ".join(parts))

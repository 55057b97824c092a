"""Strict, typed YAML configuration.

A config file is YAML whose top-level sections mirror the constructors they feed
(``model``, ``data``, ``loss``, ``solver``, ``runtime``). A file may name at most one
``_base_`` file (relative to itself); the base must not have a ``_base_`` of its own.
Command-line overrides are ``dotted.key=value`` strings whose values are parsed as YAML.

Everything is validated into dataclasses: an unknown key, a wrong type or a missing
required value raises :class:`ConfigError` naming the key, the file (or "command line")
and the closest valid key. Nothing is silently ignored. The final config (file, base and
overrides) is then checked by :mod:`detector.config_checks`: ranges, enumerations (with the
closest valid name), cross-field rules and the weight files it names, all problems on one line. :func:`dump_config` writes the
resolved config as YAML that :func:`load_config` reads back to an equal object.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

__all__ = [
    "ConfigError", "Config", "ModelCfg", "BackboneCfg", "FPNCfg", "AnchorCfg", "HeadCfg", "AssignerCfg",
    "TestCfg", "FoveaCfg", "RPNCfg", "RoICfg", "DataCfg", "AugCfg", "ShapesCfg", "LossCfg", "SolverCfg", "RuntimeCfg", "ExpectedCfg",
    "load_config", "config_from_dict", "config_to_dict", "dump_config", "apply_overrides",
]


from .errors import ConfigError  # noqa: E402  (re-exported: ``from detector.config import ConfigError``)


# --------------------------------------------------------------------------------------------
# Sections. Field names are constructor keyword names; defaults are the paper's (docs/REPRODUCTION.md §5).
# --------------------------------------------------------------------------------------------
@dataclass
class BackboneCfg:
    """ResNet/ResNeXt body from torchvision (docs/REPRODUCTION.md §5)."""
    name: str = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101 | resnext101_64x4d
    weights: str | None = None  # torchvision enum name (e.g. IMAGENET1K_V1) or a local .pth path; None = random
    frozen_stages: int = 1  # stem + stage 1 (res2) frozen
    norm_eval: bool = True  # BatchNorm frozen (FrozenBatchNorm2d)
    dcn_stages: list[bool] = field(default_factory=lambda: [False, False, False, False])  # DCNv2 in c2..c5


@dataclass
class FPNCfg:
    """FPN P3-P7 with P6 from C5 ('on input') and no ReLU before P7 (mmdet 2.1)."""
    out_channels: int = 256
    extra_from: str = "input"  # input (C5) | output (P5)
    relu_before_extra: bool = False


@dataclass
class AnchorCfg:
    """RetinaNet anchors: octave base scale 4, centres on stride multiples."""
    octave_base_scale: float = 4.0
    scales_per_octave: int = 2
    ratios: list[float] = field(default_factory=lambda: [1.0])
    strides: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    sizes: list[list[float]] | None = None  # explicit sizes per level instead of the octave scales (torchvision)
    round_base: bool = False  # round base anchors to integers (torchvision)
    strides_from_image: bool = False  # per-axis level stride = padded image size // feature size (torchvision)


@dataclass
class HeadCfg:
    """RetinaNet head towers."""
    num_convs: int = 4
    channels: int = 256
    prior_prob: float = 0.01


@dataclass
class AssignerCfg:
    """Anchor assignment: ATSS (top-k by centre distance) or MaxIoU."""
    type: str = "atss"  # atss | max_iou
    topk: int = 9
    pos_iou: float = 0.5
    neg_iou: float = 0.4
    min_pos_iou: float = 0.0
    low_quality: bool = True


@dataclass
class TestCfg:
    """Inference settings (docs/REPRODUCTION.md §2.6, §8.11)."""
    nms_pre: int = 1000
    score_thr: float = 0.05
    nms_iou: float = 0.5
    max_per_img: int = 100
    candidates: str = "anchors"  # anchors (mmdet: nms_pre best anchors per level) | pairs (torchvision: best pairs)


@dataclass
class FoveaCfg:
    """FoveaBox targets (docs/REPRODUCTION.md §4.1); used when model.type == fovea."""
    sigma: float = 0.4
    base_edges: list[float] = field(default_factory=lambda: [16.0, 32.0, 64.0, 128.0, 256.0])
    scale_ranges: list[list[float]] = field(default_factory=lambda: [[1.0, 64.0], [32.0, 128.0], [64.0, 256.0],
                                                                     [128.0, 512.0], [256.0, 2048.0]])


@dataclass
class RPNCfg:
    """Faster R-CNN region proposal network (docs/REPRODUCTION.md §4.2, §5); used when model.type == faster_rcnn."""
    anchor_scales: list[float] = field(default_factory=lambda: [8.0])
    anchor_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    anchor_strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32, 64])
    pos_iou: float = 0.7
    neg_iou: float = 0.3
    min_pos_iou: float = 0.3
    coder_stds: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])
    sampling: bool = False  # RandomSampler 256 / 0.5 (baseline) or all anchors (aLRP)
    num_samples: int = 256
    pos_fraction: float = 0.5
    loss_weight: float = 0.2  # aLRP head weight on the RPN
    train_nms_pre: int = 2000
    train_nms_post: int = 1000
    test_nms_pre: int = 1000
    test_nms_post: int = 1000
    nms_iou: float = 0.7


@dataclass
class RoICfg:
    """Faster R-CNN RoI head: shared 2-fc (docs/REPRODUCTION.md §4.2, §5)."""
    fc_channels: int = 1024
    roi_size: int = 7
    pos_iou: float = 0.5
    neg_iou: float = 0.5
    coder_stds: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])
    sampling: bool = False  # RandomSampler 512 / 0.25 with gt added (baseline) or all proposals (aLRP)
    num_samples: int = 512
    pos_fraction: float = 0.25


@dataclass
class ModelCfg:
    """The detector."""
    type: str = "retinanet"  # retinanet | fovea | faster_rcnn
    num_classes: int = 80
    weights: str | None = None  # a checkpoint of this detector to load weights from (weights only)
    weights_strict: bool = False  # refuse model.weights unless every tensor fits (default: skip and report misfits)
    coder_stds: list[float] = field(default_factory=lambda: [0.1, 0.1, 0.2, 0.2])
    backbone: BackboneCfg = field(default_factory=BackboneCfg)
    fpn: FPNCfg = field(default_factory=FPNCfg)
    anchors: AnchorCfg = field(default_factory=AnchorCfg)
    head: HeadCfg = field(default_factory=HeadCfg)
    assigner: AssignerCfg = field(default_factory=AssignerCfg)
    test: TestCfg = field(default_factory=TestCfg)
    fovea: FoveaCfg = field(default_factory=FoveaCfg)
    rpn: RPNCfg = field(default_factory=RPNCfg)
    roi: RoICfg = field(default_factory=RoICfg)


@dataclass
class AugCfg:
    """SSD-style training augmentation (docs/REPRODUCTION.md §6); each stage can be switched off."""
    photometric: bool = True
    expand: bool = True
    expand_prob: float = 0.5
    expand_ratio: list[float] = field(default_factory=lambda: [1.0, 4.0])
    min_iou_crop: bool = True
    min_ious: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    min_crop_size: float = 0.3
    flip_prob: float = 0.5


@dataclass
class ShapesCfg:
    """The built-in synthetic 'shapes' dataset, generated once into ``data.root``."""
    num_train: int = 300
    num_val: int = 60
    image_size: int = 128
    seed: int = 0


@dataclass
class DataCfg:
    """Datasets and loaders. Paths are relative to ``root`` unless absolute."""
    dataset: str = "coco"  # coco | shapes
    root: str = "data/coco"
    train_ann: str = "annotations/instances_train2017.json"
    train_images: str = "train2017"
    val_ann: str = "annotations/instances_val2017.json"
    val_images: str = "val2017"
    test_ann: str = "annotations/image_info_test-dev2017.json"
    test_images: str = "test2017"
    train_size: int = 512  # square training resolution (512 or 800)
    test_short: int = 500  # test shorter side
    test_max: int = 833  # test longer side at most (1.66x)
    size: int | None = None  # one key for the scale: train_size = test_short = size, test_max = round(size * 5 / 3)
    size_divisor: int = 32
    batch_size: int = 8  # images per GPU
    test_batch_size: int = 2
    num_workers: int = 4
    filter_empty: bool = True
    min_size: int = 32
    skip_bad_images: bool = False
    aug: AugCfg = field(default_factory=AugCfg)
    shapes: ShapesCfg = field(default_factory=ShapesCfg)


@dataclass
class LossCfg:
    """Loss choice: aLRP (with self-balance), AP Loss + Smooth L1, or Focal + Smooth L1 / L1 / GIoU."""
    type: str = "alrp"  # alrp | ap | focal
    delta: float = 1.0
    eps: float = 1e-5
    sb_init: float = 50.0
    sb_period: int = 0  # iterations between SB updates; 0 = one epoch (from the loader)
    reg: str = "giou"  # for ap/focal: smooth_l1 | l1 | giou
    reg_weight: float = 1.0
    smooth_l1_beta: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    rank_scope: str = "device"  # device (the paper's: one ranking per GPU) | global (all images of all ranks)


@dataclass
class SolverCfg:
    """SGD with linear warmup and step decay (docs/REPRODUCTION.md §5)."""
    base_lr: float = 0.008
    momentum: float = 0.9
    weight_decay: float = 1e-4
    reference_batch: int = 32  # total batch the base_lr is meant for
    auto_scale_lr: bool = False
    # The schedule is given in epochs or in iterations: one key of each pair (epochs | max_iters,
    # lr_steps | lr_step_iters, warmup_iters | warmup_epochs). Setting one member in a file or override
    # drops the other member inherited from a _base_ (or the default); setting both in one place is an error.
    epochs: int | None = 100
    max_iters: int | None = None  # length of training in iterations (instead of epochs)
    lr_steps: list[int] | None = field(default_factory=lambda: [75, 95])  # epochs at which lr *= gamma
    lr_step_iters: list[int] | None = None  # iterations at which lr *= gamma (instead of lr_steps)
    gamma: float = 0.1
    warmup_iters: int | None = 500
    warmup_epochs: float | None = None  # warmup length in epochs (instead of warmup_iters)
    warmup_ratio: float = 0.001
    grad_clip: float | None = None


@dataclass
class RuntimeCfg:
    """Everything about how a run executes and what it writes."""
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = False
    channels_last: bool = False
    deterministic: bool = False
    log_interval: int = 20  # iterations between log lines / metrics.jsonl rows
    eval_interval: int = 1  # epochs between validations (0 = never)
    checkpoint_interval: int = 10  # epochs between epoch_XXX.pth (also written at lr drops)
    checkpoint_iters: int = 0  # also write last.pth every N iterations (0 = only at epoch ends)
    keep_last: int = 0  # keep at most N epoch_XXX.pth files (0 = keep all)
    eval_max_images: int | None = None  # evaluate on the first N val images only (quick runs)


@dataclass
class ExpectedCfg:
    """The result a config should reach according to the paper (documentation; None = not reported)."""
    source: str = ""
    minival_AP: float | None = None
    test_dev_AP: float | None = None
    minival_oLRP: float | None = None


@dataclass
class Config:
    """A whole experiment."""
    name: str = "experiment"
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    solver: SolverCfg = field(default_factory=SolverCfg)
    runtime: RuntimeCfg = field(default_factory=RuntimeCfg)
    expected: ExpectedCfg = field(default_factory=ExpectedCfg)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
_SCI = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(sorted(valid))}."


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                pass
        raise ConfigError(f"{source}: '{key}' must be {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' is a section and must be a mapping, got {value!r}")
        return _build(tp, value, key, source)
    if tp is float:
        if isinstance(value, str) and _SCI.fullmatch(value.strip()):
            value = float(value)  # PyYAML (YAML 1.1) reads '1e-4' as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: '{key}' has an unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type, raw: dict, prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else str(key)
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            raise ConfigError(f"{source}: unknown key '{full}'.{_suggest(full, valid)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        full = f"{prefix}.{f.name}" if prefix else f.name
        if f.name in raw:
            kwargs[f.name] = _coerce(raw[f.name], hints[f.name], full, source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key '{full}'")
    return cls(**kwargs)


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        full = f"{prefix}.{f.name}" if prefix else f.name
        out.append(full)
        if dataclasses.is_dataclass(hints[f.name]):
            out.extend(_all_keys(hints[f.name], full))
    return out


# Schedule keys given in epochs or in iterations: (epoch-based, iteration-based) members of each pair.
SCHEDULE_PAIRS = (("epochs", "max_iters"), ("lr_steps", "lr_step_iters"), ("warmup_iters", "warmup_epochs"))


def _partner(key: str) -> str | None:
    for a, b in SCHEDULE_PAIRS:
        if key == a:
            return b
        if key == b:
            return a
    return None


def _check_schedule_pairs(solver: dict, source: str) -> None:
    """Refuse both members of a schedule pair set in one place; null the epoch member the user replaced."""
    for a, b in SCHEDULE_PAIRS:
        if solver.get(a) is not None and solver.get(b) is not None:
            raise ConfigError(f"{source}: give either 'solver.{a}' or 'solver.{b}', not both "
                              f"(got {a}={solver[a]!r}, {b}={solver[b]!r})")
        if solver.get(b) is not None and a not in solver:
            solver[a] = None  # keeps the dataclass default of the epoch member from coming back


def _merge(base: dict, over: dict, path: tuple[str, ...] = ()) -> dict:
    """Recursive dict merge: mappings merge key by key, everything else is replaced.

    In the ``solver`` section, setting one member of a schedule pair drops the other inherited member.
    """
    out = dict(base)
    if path == ("solver",):
        for k, v in over.items():
            partner = _partner(k)
            if partner is not None and v is not None and partner not in over:
                out.pop(partner, None)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, path + (k,))
        else:
            out[k] = v
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(raw).__name__}")
    return raw


def config_from_dict(raw: dict, source: str | Callable[[str], str] = "<dict>", check: bool = True,
                     check_paths: bool = False) -> Config:
    """Validate a plain nested dict into a :class:`Config` (schedule pairs checked, ``data.size`` applied).

    With ``check`` the semantic rules of :mod:`detector.config_checks` run too (ranges, enumerations, cross-field
    rules), with ``check_paths`` also the existence of the files the config names (``model.weights``, a local
    ``model.backbone.weights``); ``source`` may be a function key -> source for their messages.
    """
    where = source if isinstance(source, str) else source("")
    if isinstance(raw.get("solver"), dict):
        raw = {**raw, "solver": dict(raw["solver"])}
        _check_schedule_pairs(raw["solver"], where)
    cfg = _build(Config, raw, "", where)
    if cfg.data.size is not None:
        cfg.data.train_size = cfg.data.test_short = cfg.data.size
        cfg.data.test_max = round(cfg.data.size * 5 / 3)
    if check:
        from .config_checks import check_config
        check_config(cfg, source, paths=check_paths)
    return cfg


def apply_overrides(raw: dict, overrides: list[str], source: str = "command line") -> dict:
    """Apply ``dotted.key=value`` strings (values parsed as YAML) to a raw config dict."""
    valid = _all_keys(Config)
    out = dict(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: override '{item}' must look like dotted.key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        if key not in valid:
            raise ConfigError(f"{source}: unknown key '{key}'.{_suggest(key, valid)}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: cannot parse the value of '{key}': {e}") from e
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        partner = _partner(parts[-1]) if parts[:-1] == ["solver"] else None
        if partner is not None and value is not None:
            node.pop(partner, None)  # e.g. solver.max_iters=N replaces the file's (or an earlier) solver.epochs
        node[parts[-1]] = value
    return out


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load ``path`` (with its optional ``_base_``), apply ``overrides`` and validate.

    If ``name`` is not set in the file it defaults to the file's stem.
    """
    path = Path(path)
    raw = _read_yaml(path)
    base_name = raw.pop("_base_", None)
    source = str(path)
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ConfigError(f"{path}: '_base_' must be a file name, got {base_name!r}")
        base_path = (path.parent / base_name).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: its _base_ '{base_name}' was not found (looked for {base_path}; a _base_ is "
                              f"relative to the file that names it)")
        base_raw = _read_yaml(base_path)
        if "_base_" in base_raw:
            raise ConfigError(f"{base_path}: only one level of '_base_' is allowed (used by {path})")
        _build(Config, base_raw, "", str(base_path))  # the base must be valid on its own
        raw = _merge(base_raw, raw)
        source = f"{path} (base {base_path.name})"
    raw.setdefault("name", path.stem)
    cfg = config_from_dict(raw, source, check=not overrides, check_paths=True)
    if overrides:
        raw = apply_overrides(raw, overrides)
        keys = [o.split("=", 1)[0].strip() for o in overrides]

        def source_of(key: str) -> str:  # a semantic error names where the offending value came from
            overridden = any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in keys)
            return "command line" if overridden or not key else source

        cfg = config_from_dict(raw, source_of, check_paths=True)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts/lists (YAML-safe)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (reloads to an equal object with :func:`load_config`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(cfg), f, sort_keys=False)

"""Convert released RetinaNet weights into a checkpoint of this framework's model for a given config.

    python -m scripts.convert_checkpoint --from mmdet SRC.pth --config configs/alrp_retinanet_r50_atss_500.yaml \\
        --out checkpoints/alrp_retinanet_r50_atss_500/release.pth
    python -m scripts.convert_checkpoint --from torchvision COCO_V1 \\
        --config configs/torchvision_retinanet_r50_fpn.yaml --out checkpoints/torchvision_retinanet_r50_fpn_coco.pth

``--from mmdet``: a checkpoint of the aLRP Loss release (mmdetection 2.x ``RetinaNet``; its ``state_dict``).
Module names map as (docs/REPRODUCTION.md §5):

    backbone.*                                    -> backbone.*   (torchvision ResNet names; DCN conv2.conv_offset,
                                                                   also read from mmdet 1.x's conv2_offset)
    neck.lateral_convs.i.conv.*                   -> fpn.lateral_convs.i.*
    neck.fpn_convs.i.conv.*  (i < 3: P3-P5)       -> fpn.output_convs.i.*
    neck.fpn_convs.i.conv.*  (i >= 3: P6, P7)     -> fpn.extra_convs.(i-3).*
    bbox_head.{cls,reg}_convs.i.conv.*            -> head.{cls,reg}_convs.(2i).*  (ReLUs sit at the odd indices)
    bbox_head.retina_cls.* / retina_reg.*         -> head.cls_out.* / head.reg_out.*

``--from torchvision``: ``torchvision.models.detection.retinanet_resnet50_fpn`` weights, either a weights name
(``COCO_V1``, downloaded through torchvision) or a saved state dict (current or pre-0.13 module names). Its 91
class outputs (index = COCO category id) are cut to the 80 COCO categories in ascending id (this framework's
label order) when the config has 80 classes, and kept whole for 91. Its COCO_V1 backbone runs FrozenBatchNorm2d
with eps 0 (``--bn-eps``, default 0): each BatchNorm weight is multiplied by sqrt((var + eps) / (var + bn_eps)),
which gives this model's eps-1e-5 BatchNorm the same output.

Every source tensor must land on a model tensor of the same shape and every model tensor (BatchNorm's
``num_batches_tracked`` and the loss state excepted) must be filled, otherwise nothing is written and the error
lists the unmatched, missing and misshapen names. The output holds ``model`` (the state dict), ``config``,
``converted_from`` and, for 80 classes, the COCO ``class_names`` / ``category_ids``; ``evaluate.py --checkpoint``
and ``model.weights`` read it.
"""
from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from detector.config import Config, config_to_dict, load_config
from detector.errors import CheckpointError, ConfigError

__all__ = ["SOURCES", "coco_categories", "mmdet_name", "torchvision_name", "read_source", "convert_state_dict", "convert", "main"]

# torchvision's RetinaNet class index is the COCO category id; these two names mark unused indices
_TV_UNUSED = ("__background__", "N/A")


def mmdet_name(key: str, num_fpn_outputs: int = 3) -> str | None:
    """This framework's name for a tensor of the release's mmdet-2.x RetinaNet (None: no rule for it)."""
    m = re.fullmatch(r"(backbone\..+\.conv2)_offset\.(weight|bias)", key)
    if m:  # DCN offsets under mmdet 1.x's sibling name (mmdet 2.x loads them into conv2.conv_offset too)
        return f"{m[1]}.conv_offset.{m[2]}"
    if key.startswith("backbone."):
        return key
    m = re.fullmatch(r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", key)
    if m:
        return f"fpn.lateral_convs.{m[1]}.{m[2]}"
    m = re.fullmatch(r"neck\.fpn_convs\.(\d+)\.conv\.(weight|bias)", key)
    if m:
        i = int(m[1])
        return (f"fpn.output_convs.{i}.{m[2]}" if i < num_fpn_outputs
                else f"fpn.extra_convs.{i - num_fpn_outputs}.{m[2]}")
    m = re.fullmatch(r"bbox_head\.(cls|reg)_convs\.(\d+)\.conv\.(weight|bias)", key)
    if m:
        return f"head.{m[1]}_convs.{2 * int(m[2])}.{m[3]}"
    m = re.fullmatch(r"bbox_head\.retina_(cls|reg)\.(weight|bias)", key)
    if m:
        return f"head.{m[1]}_out.{m[2]}"
    return None


def torchvision_name(key: str, num_fpn_outputs: int = 3) -> str | None:
    """This framework's name for a tensor of torchvision's retinanet_resnet50_fpn (None: no rule for it).

    Accepts the current names (``conv.i.0.weight``, ``inner_blocks.i.0.weight``) and the pre-0.13 ones of the
    released COCO_V1 file (``conv.(2i).weight``, ``inner_blocks.i.weight``).
    """
    if key.startswith("backbone.body."):
        return "backbone." + key[len("backbone.body."):]
    m = re.fullmatch(r"backbone\.fpn\.(inner|layer)_blocks\.(\d+)(?:\.0)?\.(weight|bias)", key)
    if m:
        return f"fpn.{'lateral' if m[1] == 'inner' else 'output'}_convs.{m[2]}.{m[3]}"
    m = re.fullmatch(r"backbone\.fpn\.extra_blocks\.p(\d+)\.(weight|bias)", key)
    if m:
        return f"fpn.extra_convs.{int(m[1]) - 6}.{m[2]}" if int(m[1]) >= 6 else None
    m = re.fullmatch(r"head\.(classification|regression)_head\.conv\.(\d+)\.0\.(weight|bias)", key)
    branch = {"classification": "cls", "regression": "reg"}
    if m:  # current names: conv.i.0 (Conv2dNormActivation) -> our Sequential index 2i
        return f"head.{branch[m[1]]}_convs.{2 * int(m[2])}.{m[3]}"
    m = re.fullmatch(r"head\.(classification|regression)_head\.conv\.(\d+)\.(weight|bias)", key)
    if m:  # pre-0.13 names: conv.(2i) in a Sequential of conv, relu, ... like ours
        return f"head.{branch[m[1]]}_convs.{m[2]}.{m[3]}" if int(m[2]) % 2 == 0 else None
    m = re.fullmatch(r"head\.(classification_head\.cls_logits|regression_head\.bbox_reg)\.(weight|bias)", key)
    if m:
        return f"head.{'cls' if m[1].startswith('classification') else 'reg'}_out.{m[2]}"
    return None


SOURCES: dict[str, Callable[[str, int], str | None]] = {"mmdet": mmdet_name, "torchvision": torchvision_name}


def _torchvision_weights(name: str):
    """The RetinaNet_ResNet50_FPN_Weights member named ``name`` (e.g. COCO_V1), or None if it is not one."""
    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights as W
    member = name.split(".")[-1]
    return W[member] if member in W.__members__ else None


def read_source(src: str, kind: str, unsafe_load: bool = False) -> dict[str, Tensor]:
    """The source state dict: a torchvision weights name (``--from torchvision``) or a checkpoint file.

    A file may hold the state dict itself or wrap it as ``state_dict`` (mmdet) or ``model``; ``module.`` prefixes
    (DataParallel) are dropped. Files are read with ``weights_only=True`` unless ``unsafe_load``.
    """
    if kind == "torchvision" and not Path(src).exists() and _torchvision_weights(src) is not None:
        return dict(_torchvision_weights(src).get_state_dict(progress=True))
    path = Path(src)
    if not path.is_file():
        raise CheckpointError(f"source checkpoint not found: {path}"
                              + (" (or give a torchvision weights name such as COCO_V1)" if kind == "torchvision"
                                 else ""))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe_load)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name and the way out
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"cannot read {path} ({first[:200]}); if it is a trusted file that holds more than "
                              f"tensors and plain containers, rerun with --unsafe-load") from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(torch.is_tensor(v) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (expected tensors, or a dict with 'state_dict'/'model')")
    return {k.removeprefix("module."): v for k, v in obj.items() if torch.is_tensor(v)}


def coco_categories() -> tuple[list[str], list[int]]:
    """Names and ids of the 80 COCO categories in ascending id (torchvision's COCO metadata)."""
    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights as W
    cats = W.COCO_V1.meta["categories"]
    ids = [i for i, n in enumerate(cats) if n not in _TV_UNUSED]
    return [cats[i] for i in ids], ids


def _coco_class_rows(num_src: int, num_dst: int) -> list[int] | None:
    """Which of torchvision's class outputs become ours: all (same count) or the 80 COCO categories of 91."""
    if num_src == num_dst:
        return None
    if num_src == 91 and num_dst == 80:
        return coco_categories()[1]
    raise ConfigError(f"model.num_classes={num_dst}, but the torchvision weights have {num_src} class outputs: "
                      f"use a config with 80 (the COCO categories) or {num_src} classes")


def _select_classes(t: Tensor, num_anchors: int, rows: list[int]) -> Tensor:
    """Keep the class rows ``rows`` of an (A*K, ...) class-logit conv tensor (row = anchor*K + class)."""
    k = t.shape[0] // num_anchors
    return t.reshape(num_anchors, k, *t.shape[1:])[:, rows].reshape(num_anchors * len(rows), *t.shape[1:])


def _batchnorm_eps(model: nn.Module) -> dict[str, float]:
    """State-dict prefix (``name.``) -> eps of every BatchNorm layer of the model."""
    return {f"{n}.": m.eps for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}


def convert_state_dict(source: dict[str, Tensor], model: nn.Module, kind: str, num_classes: int,
                       bn_eps: float | None = None) -> dict[str, Tensor]:
    """Rename (and for torchvision, cut the classes of) ``source`` onto ``model``'s state dict; refuse any misfit.

    ``bn_eps``: the eps the source's BatchNorm layers ran with, when it differs from the model's (absorbed into
    the BatchNorm weights). Raises :class:`CheckpointError` listing every unmatched, missing or misshapen name.
    """
    if kind not in SOURCES:
        raise ConfigError(f"--from must be one of {', '.join(SOURCES)}, got '{kind}'")
    target = model.state_dict()
    num_fpn = len(model.fpn.output_convs)
    num_anchors = model.anchor_generator.num_anchors
    out: dict[str, Tensor] = {}
    unmatched, misshapen, duplicated = [], [], []
    for key, value in source.items():
        name = SOURCES[kind](key, num_fpn)
        if name is None or name not in target:
            unmatched.append(key if name is None else f"{key} (-> {name}, not in the model)")
            continue
        if name in out:
            duplicated.append(f"{key} (-> {name})")
            continue
        if kind == "torchvision" and name.startswith("head.cls_out."):
            rows = _coco_class_rows(value.shape[0] // num_anchors, num_classes)
            value = value if rows is None else _select_classes(value, num_anchors, rows)
        if value.shape != target[name].shape:
            misshapen.append(f"{key} {tuple(value.shape)} -> {name} {tuple(target[name].shape)}")
            continue
        out[name] = value.detach().clone().to(target[name].dtype)
    missing = [k for k in target if k not in out and not k.startswith("criterion.")
               and not k.endswith(".num_batches_tracked")]
    if unmatched or missing or misshapen or duplicated:
        parts = [f"{len(v)} {what}: {', '.join(v)}" for what, v in (
            ("unmatched source tensor(s)", unmatched), ("model tensor(s) not in the source", missing),
            ("shape mismatch(es)", misshapen), ("source tensor(s) mapped twice", duplicated)) if v]
        raise CheckpointError(f"the {kind} weights do not fit this config's model; nothing written. "
                              + "; ".join(parts))
    for k in target:  # BatchNorm counters the source does not have (torchvision's FrozenBatchNorm2d)
        if k.endswith(".num_batches_tracked") and k not in out:
            out[k] = target[k].clone()
    if bn_eps is not None:
        _absorb_bn_eps(out, _batchnorm_eps(model), bn_eps)
    return out


def _absorb_bn_eps(state: dict[str, Tensor], model_eps: dict[str, float], src_eps: float) -> None:
    """Scale BatchNorm weights so (x-m)/sqrt(v+eps_model)*w' = (x-m)/sqrt(v+src_eps)*w, in float64."""
    for prefix, eps in model_eps.items():
        if eps == src_eps or f"{prefix}weight" not in state:
            continue
        var = state[f"{prefix}running_var"].double()
        if bool(((var + src_eps) <= 0).any()):
            raise CheckpointError(f"{prefix}running_var has entries <= {-src_eps}: the source BatchNorm "
                                  f"(eps {src_eps}) divides by zero there")
        w = state[f"{prefix}weight"]
        state[f"{prefix}weight"] = (w.double() * torch.sqrt((var + eps) / (var + src_eps))).to(w.dtype)


def convert(kind: str, src: str, config: str | Path, out: str | Path, bn_eps: float | None = None,
            unsafe_load: bool = False) -> dict[str, Tensor]:
    """Build the config's model (random init), convert ``src`` onto it, write ``out``; returns the state dict."""
    from detector.build import build_model
    from detector.checkpoint import atomic_save

    cfg: Config = load_config(config, ["model.backbone.weights=null", "model.weights=null"])
    if cfg.model.type != "retinanet":
        raise ConfigError(f"{config}: model.type is '{cfg.model.type}'; only RetinaNet weights are converted")
    model = build_model(cfg)
    state = convert_state_dict(read_source(src, kind, unsafe_load), model, kind, cfg.model.num_classes, bn_eps)
    model.load_state_dict(state, strict=False)  # the shapes were checked: this cannot fail half-way
    payload = {"model": state, "config": config_to_dict(cfg),
               "converted_from": {"kind": kind, "source": str(src), "source_bn_eps": bn_eps}}
    if cfg.model.num_classes == 80:  # both sources are COCO detectors: labels 0..79 = COCO ids in ascending order
        payload["class_names"], payload["category_ids"] = coco_categories()
    atomic_save(payload, out)
    return state


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Convert released RetinaNet weights (the aLRP Loss release's mmdet-2.x "
                                            "checkpoints, torchvision's retinanet_resnet50_fpn) for a config.")
    p.add_argument("--from", dest="kind", required=True, choices=sorted(SOURCES), help="where the weights come from")
    p.add_argument("src", help="source checkpoint file, or a torchvision weights name (COCO_V1) with --from torchvision")
    p.add_argument("--config", required=True, type=Path, help="the config whose model receives the weights")
    p.add_argument("--out", required=True, type=Path, help="output checkpoint (.pth)")
    p.add_argument("--bn-eps", type=float, default=None,
                   help="eps of the source's BatchNorm layers when it differs from this model's 1e-5 "
                        "(default: 0 for --from torchvision, COCO_V1's FrozenBatchNorm2d; none for mmdet)")
    p.add_argument("--unsafe-load", action="store_true",
                   help="read the source with full unpickling (only for trusted files weights_only cannot read)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    bn_eps = args.bn_eps if args.bn_eps is not None else (0.0 if args.kind == "torchvision" else None)
    state = convert(args.kind, args.src, args.config, args.out, bn_eps, args.unsafe_load)
    numel = sum(v.numel() for v in state.values() if v.is_floating_point())
    print(f"wrote {args.out}: {len(state)} tensors ({numel / 1e6:.1f} M values) from {args.src} ({args.kind}) "
          f"for {args.config}" + (f"; BatchNorm eps {bn_eps} absorbed" if bn_eps is not None else ""))
    return 0


if __name__ == "__main__":
    from detector.cli import run_cli

    run_cli(main)

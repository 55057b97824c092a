"""Checkpoints: atomic writes, safe loads (``weights_only=True``), exact resume, weights-only loading.

A training checkpoint is a dict of plain tensors, numbers and strings::

    {format_version, model, optimizer, scheduler, scaler, epoch, iter_in_epoch, global_iter, best_ap,
     config, rng: {torch, cuda, numpy, python}}

``model`` includes the loss module's buffers (the aLRP self-balance weight and its running sums),
``epoch``/``iter_in_epoch`` are the sampler position to continue from. RNG states are stored as
tensors and tuples so ``torch.load(weights_only=True)`` accepts them.
"""
from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import config_to_dict

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# config keys that may change between a checkpoint and its resume without changing the experiment
_RESUME_MAY_DIFFER = ("runtime.", "data.num_workers", "data.test_batch_size", "data.root", "data.train_ann",
                      "data.train_images", "data.val_ann", "data.val_images", "data.test_ann", "data.test_images",
                      "data.skip_bad_images", "solver.max_iters", "model.weights", "model.backbone.weights",
                      "expected.", "name")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used for what was asked; the message says what differs."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """Write ``obj`` with torch.save to a temp file in the same folder, fsync, then rename over ``path``.

    A crash at any point leaves either the old file or the new one, never a truncated file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def safe_load(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` on CPU with an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f"cannot load checkpoint {path}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
    return obj


# ---------------------------------------------------------------------------------------------------
# RNG state
# ---------------------------------------------------------------------------------------------------
def get_rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


# ---------------------------------------------------------------------------------------------------
# Config comparison
# ---------------------------------------------------------------------------------------------------
def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(saved: dict, current: dict, ignore: tuple[str, ...] = _RESUME_MAY_DIFFER) -> list[str]:
    """Human-readable lines for every config key whose value differs (keys matching ``ignore`` skipped)."""
    a, b = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(a) | set(b)):
        if any(key == p or (p.endswith(".") and key.startswith(p)) for p in ignore):
            continue
        if a.get(key, "<absent>") != b.get(key, "<absent>"):
            lines.append(f"  {key}: checkpoint={a.get(key, '<absent>')!r} now={b.get(key, '<absent>')!r}")
    return lines


# ---------------------------------------------------------------------------------------------------
# Save / resume / weights only
# ---------------------------------------------------------------------------------------------------
def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def make_checkpoint(model: nn.Module, optimizer, scheduler, scaler, cfg, *, epoch: int, iter_in_epoch: int,
                    global_iter: int, best_ap: float) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
        "epoch": epoch,
        "iter_in_epoch": iter_in_epoch,
        "global_iter": global_iter,
        "best_ap": float(best_ap),
        "config": config_to_dict(cfg),
        "rng": get_rng_state(),
    }


def check_compatible(ckpt: dict, cfg, path: str | Path) -> None:
    """Raise :class:`CheckpointError` if ``ckpt`` is from another format version or another experiment."""
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}, this code reads version "
                              f"{FORMAT_VERSION}; it was written by another version of the framework")
    missing = [k for k in ("model", "optimizer", "scheduler", "epoch", "iter_in_epoch", "config", "rng")
               if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    diffs = config_differences(ckpt["config"], config_to_dict(cfg))
    if diffs:
        raise CheckpointError(f"{path} was written by a different config; these keys differ:\n" + "\n".join(diffs)
                              + "\nResume with the same config (or start a new run with model.weights=...).")


def resume(path: str | Path, model: nn.Module, optimizer, scheduler, scaler, cfg) -> dict:
    """Restore everything from a training checkpoint; returns the checkpoint dict (epoch, position, best_ap)."""
    ckpt = safe_load(path)
    check_compatible(ckpt, cfg, path)
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    log.info("resumed from %s: epoch %d, iteration %d of the epoch (global %d), best AP %.4f",
             path, ckpt["epoch"], ckpt["iter_in_epoch"], ckpt["global_iter"], ckpt["best_ap"])
    return ckpt


def load_model_weights(model: nn.Module, path: str | Path, strict_loss_state: bool = False) -> None:
    """Load only the model weights from a training checkpoint or a plain state_dict file.

    Missing / unexpected keys and shape mismatches are reported by name; detector weights must match
    exactly, while the loss module's state (``criterion.*``) may be absent (e.g. another loss).
    """
    obj = safe_load(path)
    state = obj["model"] if "model" in obj and isinstance(obj["model"], dict) else obj
    target = unwrap(model)
    own = target.state_dict()
    shape_bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and hasattr(v, "shape") and v.shape != own[k].shape]
    if shape_bad:
        raise CheckpointError(f"{path}: shape mismatch for {len(shape_bad)} tensors:\n  " + "\n  ".join(shape_bad[:20]))
    missing = [k for k in own if k not in state and (strict_loss_state or not k.startswith("criterion."))]
    unexpected = [k for k in state if k not in own and not k.startswith("criterion.")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit this model; missing keys: {missing[:20]} "
                              f"({len(missing)} in all); unexpected keys: {unexpected[:20]} ({len(unexpected)} in all)")
    target.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    log.info("loaded model weights from %s", path)

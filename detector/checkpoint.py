"""Checkpoints: atomic, checksummed writes, safe loads (``weights_only=True``), exact resume, weights loading.

A training checkpoint (``last.pth``) is a dict of plain tensors, numbers and strings::

    {format_version, kind: "train", model, optimizer, scheduler, scaler, epoch, iter_in_epoch, global_iter,
     best_ap, world_size, batch_size, total_batch, config, class_names, category_ids,
     rng: {torch, cuda, numpy, python}, checksum}

``model`` includes the loss module's buffers (the aLRP self-balance weight and its running sums),
``epoch``/``iter_in_epoch`` are the position to continue from; ``total_batch`` (= world_size x batch_size)
fixes which global samples an iteration reads, so a resume may change the world size but not the total batch.
Epoch and best checkpoints are *lean* (``kind: "weights"``): no optimiser, scheduler, scaler or RNG state.
RNG states are stored as tensors and tuples so ``torch.load(weights_only=True)`` accepts them.

``checksum`` is a BLAKE2b digest of every tensor's bytes (with dtype and shape) and every other value, in key
order; :func:`safe_load` recomputes it, so flipped bytes inside a file are reported instead of loaded.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import config_to_dict
from .errors import CheckpointError, DiskError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Config keys that may change between a checkpoint and its resume. The schedule keys extend or shorten a run,
# runtime.* changes how it executes, the data paths let a cluster mount the dataset elsewhere. Each difference
# is logged. data.batch_size may change only with the world size, keeping the total batch (checked separately).
_RESUME_MAY_DIFFER = ("runtime.", "solver.epochs", "solver.max_iters", "solver.lr_steps", "solver.lr_step_iters",
                      "data.num_workers", "data.test_batch_size", "data.root", "data.train_ann",
                      "data.train_images", "data.val_ann", "data.val_images", "data.test_ann", "data.test_images",
                      "data.skip_bad_images", "data.batch_size", "model.weights", "model.weights_strict",
                      "model.backbone.weights", "expected.", "name")
_TMP_SUFFIX = ".tmp"


def _digest_value(h: "hashlib._Hash", value: Any) -> None:
    if torch.is_tensor(value):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                     else t.to(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        h.update(b"D%d" % len(value))
        for k in sorted(value, key=repr):
            h.update(repr(k).encode())
            _digest_value(h, value[k])
    elif isinstance(value, (list, tuple)):
        h.update(b"L%d" % len(value))
        for v in value:
            _digest_value(h, v)
    else:
        h.update(repr(value).encode())


def payload_checksum(obj: dict) -> str:
    """BLAKE2b digest of ``obj`` without its ``checksum`` key (tensors by dtype, shape and bytes)."""
    h = hashlib.blake2b(digest_size=16)
    _digest_value(h, {k: v for k, v in obj.items() if k != "checksum"})
    return h.hexdigest()


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files that interrupted (e.g. SIGKILLed) checkpoint writes left in ``folder``."""
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in folder.glob(f".*.pth.*{_TMP_SUFFIX}"):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    if removed:
        log.info("removed %d temp file(s) of interrupted checkpoint writes in %s", len(removed), folder)
    return removed


def prune_epoch_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the ``keep`` newest ``epoch_N.pth`` files in ``folder`` (``runtime.keep_last``), newest by the
    epoch number, not by name: ``epoch_1000.pth`` sorts before ``epoch_975.pth`` as text. Returns what was deleted."""
    numbered = []
    for p in Path(folder).glob("epoch_*.pth"):
        m = re.fullmatch(r"epoch_(\d+)\.pth", p.name)
        if m:
            numbered.append((int(m.group(1)), p))
    old = [p for _, p in sorted(numbered)[:-keep]] if keep > 0 else []
    for p in old:
        p.unlink(missing_ok=True)
    return old


def _is_disk_error(e: BaseException) -> bool:
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM):
        return True
    text = str(e)
    return "unexpected pos" in text or "No space left" in text or "file write failed" in text


def atomic_save(obj: Any, path: str | Path, checksum: bool = True) -> None:
    """Write ``obj`` with torch.save to a temp file in the same folder, fsync, then rename over ``path``.

    A dict gets a ``checksum`` entry first (see :func:`payload_checksum`). A crash at any point leaves either
    the old file or the new one, never a truncated file; a full disk or a permission problem raises
    :class:`DiskError` in one line and leaves the previous file intact. The file gets the process umask's
    permissions, as a plain ``open`` would.
    """
    path = Path(path)
    if checksum and isinstance(obj, dict):
        obj = {**obj, "checksum": payload_checksum(obj)}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, Exception) and _is_disk_error(e):
            why = "disk full" if ("pos" in str(e) or getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
                                  or "space" in str(e)) else "permission denied or read-only"
            raise DiskError(f"cannot write {path}: {why} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                            f"the previous {path.name} is intact; free space or fix permissions, then resume") from e
        raise


def first_non_finite(obj: Any, prefix: str = "") -> str | None:
    """The key of the first floating tensor in ``obj`` holding a NaN or an infinity (None if all are finite)."""
    if torch.is_tensor(obj):
        if obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj).all()):
            return prefix or "<tensor>"
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad = first_non_finite(v, f"{prefix}.{k}" if prefix else str(k))
            if bad is not None:
                return bad
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = first_non_finite(v, f"{prefix}[{i}]")
            if bad is not None:
                return bad
    return None


def safe_load(path: str | Path, verify: bool = True) -> dict:
    """``torch.load(weights_only=True)`` on CPU with an error naming the file.

    With ``verify`` the checksum (if the file has one) is recomputed, and the model weights must be finite.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: it is truncated, corrupted or not a checkpoint "
                              f"({first[:200]})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(obj).__name__}")
    if verify:
        if "checksum" in obj and payload_checksum(obj) != obj["checksum"]:
            raise CheckpointError(f"checkpoint {path} is corrupted: checksum mismatch (its bytes changed after it "
                                  f"was written); use another checkpoint, e.g. an epoch_XXX.pth")
        bad = first_non_finite(obj.get("model", obj))
        if bad is not None:
            raise CheckpointError(f"checkpoint {path} holds non-finite values in '{bad}'; "
                                  f"use an earlier checkpoint")
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
                    global_iter: int, best_ap: float, world_size: int = 1, class_names: list[str] | None = None,
                    category_ids: list[int] | None = None, lean: bool = False) -> dict:
    """The checkpoint dict; ``lean`` leaves out what only a resume needs (optimiser, scheduler, scaler, RNG)."""
    ckpt = {
        "format_version": FORMAT_VERSION,
        "kind": "weights" if lean else "train",
        "model": unwrap(model).state_dict(),
        "epoch": epoch,
        "iter_in_epoch": iter_in_epoch,
        "global_iter": global_iter,
        "best_ap": float(best_ap),
        "world_size": int(world_size),
        "batch_size": int(cfg.data.batch_size),
        "total_batch": int(world_size * cfg.data.batch_size),
        "config": config_to_dict(cfg),
        "class_names": list(class_names or []),
        "category_ids": [int(c) for c in (category_ids or [])],
    }
    if not lean:
        ckpt.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else {},
                    rng=get_rng_state())
    return ckpt


def check_compatible(ckpt: dict, cfg, path: str | Path) -> None:
    """Raise :class:`CheckpointError` if ``ckpt`` is from another format version or another experiment."""
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version!r}, this code reads version "
                              f"{FORMAT_VERSION}; it was written by another version of the framework")
    missing = [k for k in ("model", "optimizer", "scheduler", "epoch", "iter_in_epoch", "config", "rng")
               if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a resumable checkpoint (missing {', '.join(missing)}); only last.pth "
                              f"holds the optimiser state: resume from it, or start a new run with model.weights=")
    diffs = config_differences(ckpt["config"], config_to_dict(cfg))
    if diffs:
        raise CheckpointError(f"{path} was written by a different config; these keys differ:\n" + "\n".join(diffs)
                              + "\nResume with the same config (or start a new run with model.weights=...).")
    for line in config_differences(ckpt["config"], config_to_dict(cfg), ignore=("expected.",)):
        log.info("resume: config changed (allowed):%s", line)


def check_total_batch(ckpt: dict, cfg, world_size: int, path: str | Path) -> None:
    """Refuse a resume whose total batch differs: iterations would read other samples and the schedule shift."""
    saved_world = int(ckpt.get("world_size", 1))
    saved_batch = int(ckpt.get("batch_size", ckpt["config"]["data"]["batch_size"]))
    saved_total = saved_world * saved_batch
    total = world_size * cfg.data.batch_size
    if total != saved_total:
        hint = (f"run with data.batch_size={saved_total // world_size} on {world_size} process(es)"
                if saved_total % world_size == 0 else f"use a world size that divides {saved_total}")
        raise CheckpointError(
            f"{path} was written with a total batch of {saved_total} ({saved_world} process(es) x {saved_batch} "
            f"images); now {world_size} x {cfg.data.batch_size} = {total}. Resuming would read other samples per "
            f"iteration and shift the schedule: {hint}, or start a new run with model.weights={path}")
    if saved_world != world_size:
        log.warning("resuming a %d-process run on %d process(es) (%d x %d images per iteration as before): the "
                    "data continue at the next unseen sample%s", saved_world, world_size, world_size,
                    cfg.data.batch_size, "; with loss.rank_scope=device the ranking pool per device changes"
                    if cfg.loss.rank_scope == "device" else "")


def resume(path: str | Path, model: nn.Module, optimizer, scheduler, scaler, cfg, world_size: int = 1) -> dict:
    """Restore everything from a training checkpoint; returns the checkpoint dict (epoch, position, best_ap)."""
    ckpt = safe_load(path)
    check_compatible(ckpt, cfg, path)
    check_total_batch(ckpt, cfg, world_size, path)
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    set_rng_state(ckpt["rng"])
    log.info("resumed from %s: epoch %d, iteration %d of the epoch (global %d), best AP %.4f",
             path, ckpt["epoch"], ckpt["iter_in_epoch"], ckpt["global_iter"], ckpt["best_ap"])
    return ckpt


def load_model_weights(model: nn.Module, path: str | Path, strict: bool = False) -> list[str]:
    """Load the model weights of a checkpoint, a slim release file or a plain state_dict file.

    Every tensor whose name and shape match is loaded. With ``strict`` (``model.weights_strict``) any missing,
    unexpected or misshapen tensor is refused by name; otherwise those are skipped and reported (fine-tuning
    from a detector with another class count skips the class logits, as detectron2 does). The loss module's
    state (``criterion.*``, e.g. the self-balance weight) is never required. Returns the skipped names.
    """
    obj = safe_load(path)
    state = obj["model"] if "model" in obj and isinstance(obj["model"], dict) else obj
    target = unwrap(model)
    own = target.state_dict()
    shape_bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and hasattr(v, "shape") and v.shape != own[k].shape]
    missing = [k for k in own if k not in state and not k.startswith("criterion.")]
    unexpected = [k for k in state if k not in own and not k.startswith("criterion.")]
    if strict and (shape_bad or missing or unexpected):
        raise CheckpointError(f"{path}: weights do not fit this model (model.weights_strict=true): "
                              f"{len(shape_bad)} shape mismatches {shape_bad[:10]}, {len(missing)} missing "
                              f"{missing[:10]}, {len(unexpected)} unexpected {unexpected[:10]}")
    fits = {k: v for k, v in state.items() if k in own and hasattr(v, "shape") and v.shape == own[k].shape}
    if not any(not k.startswith("criterion.") for k in fits):
        raise CheckpointError(f"{path}: no tensor fits this model (is it a checkpoint of another architecture?)")
    target.load_state_dict(fits, strict=False)
    skipped = [s.split(":")[0] for s in shape_bad] + missing + unexpected
    log.info("loaded %d tensors of model weights from %s", sum(not k.startswith("criterion.") for k in fits), path)
    if shape_bad:
        log.warning("model.weights: skipped %d tensor(s) whose shape differs (kept their initialisation): %s",
                    len(shape_bad), "; ".join(shape_bad[:10]))
    if missing:
        log.warning("model.weights: %d tensor(s) of the model are not in %s (kept their initialisation): %s",
                    len(missing), path, ", ".join(missing[:10]))
    if unexpected:
        log.warning("model.weights: ignored %d tensor(s) of %s that this model does not have: %s",
                    len(unexpected), path, ", ".join(unexpected[:10]))
    return skipped

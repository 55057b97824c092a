"""Optimiser and learning-rate schedule (docs/REPRODUCTION.md §5): SGD, linear warmup, step decay.

The schedule may be given in epochs or in iterations, one key of each pair (``solver.epochs | solver.max_iters``,
``solver.lr_steps | solver.lr_step_iters``, ``solver.warmup_iters | solver.warmup_epochs``).
:func:`resolve_schedule` turns either form into iterations once the loader length is known; with the epoch keys
the learning rate at every iteration is exactly what it was when only epochs existed (an lr step at epoch ``e``
is the step at iteration ``e * iters_per_epoch``). :func:`schedule_warnings` flags schedules that cannot work
for the data they are run on (a small dataset with a recipe made for a bigger one).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from .config import SolverCfg
from .errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["Schedule", "effective_lr", "build_optimizer", "resolve_schedule", "lr_factor", "build_scheduler",
           "schedule_warnings", "schedule_summary", "MAX_WARMUP_SHARE", "MIN_TOTAL_ITERS", "MIN_SB_PERIOD"]

# Plausibility limits for schedule_warnings (rules of thumb, not hard limits).
MAX_WARMUP_SHARE = 0.25  # warmup longer than a quarter of training leaves little time at the full lr
MIN_TOTAL_ITERS = 300  # fewer iterations than this do not train a detector from these recipes
MIN_SB_PERIOD = 20  # a self-balance mean over fewer iterations is dominated by the first, noisy ones
SUGGESTED_SB_PERIOD = 50


def effective_lr(cfg: SolverCfg, total_batch: int) -> float:
    """The base lr for ``total_batch`` images per step.

    The paper's lr belongs to ``cfg.reference_batch`` images; with another total batch we warn, and
    scale linearly only when ``solver.auto_scale_lr`` is true (explicit is better than surprising).
    """
    if total_batch == cfg.reference_batch:
        return cfg.base_lr
    scaled = cfg.base_lr * total_batch / cfg.reference_batch
    if cfg.auto_scale_lr:
        log.warning("total batch %d != solver.reference_batch %d: lr scaled linearly %.6g -> %.6g",
                    total_batch, cfg.reference_batch, cfg.base_lr, scaled)
        return scaled
    log.warning("total batch %d != solver.reference_batch %d: keeping lr %.6g (the linear rule would give %.6g; "
                "set solver.auto_scale_lr=true to apply it)", total_batch, cfg.reference_batch, cfg.base_lr, scaled)
    return cfg.base_lr


def build_optimizer(model: nn.Module, cfg: SolverCfg, lr: float) -> torch.optim.SGD:
    """SGD with momentum and weight decay over the trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


# --------------------------------------------------------------------------------------------
# The schedule in iterations
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Schedule:
    """The training schedule in iterations, resolved from either the epoch or the iteration keys.

    Attributes:
        iters_per_epoch: full batches per epoch (the loader length).
        total_iters: iterations in all; training stops at this global iteration (possibly inside an epoch).
        epochs: epochs started, ``ceil(total_iters / iters_per_epoch)``; the last one may be partial.
        warmup_iters: iterations of linear warmup (0 = none).
        step_iters: sorted global iterations at which the lr is multiplied by ``gamma`` (from then on).
        length_key, warmup_key, steps_key: the config keys the three values came from (for messages).
    """
    iters_per_epoch: int
    total_iters: int
    epochs: int
    warmup_iters: int
    step_iters: list[int]
    length_key: str = "solver.epochs"
    warmup_key: str = "solver.warmup_iters"
    steps_key: str = "solver.lr_steps"

    @property
    def warmup_share(self) -> float:
        """Fraction of training spent in warmup (1.0 when warmup covers all of it, or training is empty)."""
        return min(self.warmup_iters / self.total_iters, 1.0) if self.total_iters > 0 else 1.0


def _one_of(cfg: SolverCfg, epoch_key: str, iter_key: str):
    """(name, value) of the one member of a schedule pair that is set; ConfigError if none or both are."""
    a, b = getattr(cfg, epoch_key), getattr(cfg, iter_key)
    if a is not None and b is not None:
        raise ConfigError(f"give either 'solver.{epoch_key}' or 'solver.{iter_key}', not both "
                          f"(got {epoch_key}={a!r}, {iter_key}={b!r})")
    if a is None and b is None:
        raise ConfigError(f"the schedule needs 'solver.{epoch_key}' or 'solver.{iter_key}'; both are null")
    return (epoch_key, a) if a is not None else (iter_key, b)


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def resolve_schedule(cfg: SolverCfg, iters_per_epoch: int) -> Schedule:
    """The schedule of ``cfg`` in iterations for a loader of ``iters_per_epoch`` batches.

    Epoch keys convert exactly (``epochs * ipe``, ``lr_steps`` e -> ``e * ipe``); ``warmup_epochs`` is rounded to
    the nearest iteration. Raises ConfigError for a missing/doubled pair member or a negative value.
    """
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
    ipe = int(iters_per_epoch)
    length_key, length = _one_of(cfg, "epochs", "max_iters")
    if length < 0:
        raise ConfigError(f"'solver.{length_key}' must be >= 0, got {length}")
    total = length * ipe if length_key == "epochs" else int(length)

    warmup_key, warmup = _one_of(cfg, "warmup_iters", "warmup_epochs")
    if warmup < 0:
        raise ConfigError(f"'solver.{warmup_key}' must be >= 0, got {warmup}")
    warmup_iters = int(warmup) if warmup_key == "warmup_iters" else _round_half_up(warmup * ipe)

    steps_key, steps = _one_of(cfg, "lr_steps", "lr_step_iters")
    if any(s < 0 for s in steps):
        raise ConfigError(f"'solver.{steps_key}' must not be negative, got {steps}")
    step_iters = sorted(int(s) * ipe if steps_key == "lr_steps" else int(s) for s in steps)

    return Schedule(iters_per_epoch=ipe, total_iters=total, epochs=-(-total // ipe), warmup_iters=warmup_iters,
                    step_iters=step_iters, length_key=f"solver.{length_key}", warmup_key=f"solver.{warmup_key}",
                    steps_key=f"solver.{steps_key}")


def _factor(it: int, schedule: Schedule, gamma: float, warmup_ratio: float) -> float:
    """Multiplier of the base lr at global iteration ``it`` under ``schedule``."""
    factor = gamma ** sum(it >= s for s in schedule.step_iters)
    if it < schedule.warmup_iters:
        factor *= 1.0 - (1.0 - it / schedule.warmup_iters) * (1.0 - warmup_ratio)
    return factor


def lr_factor(it: int, iters_per_epoch: int, cfg: SolverCfg) -> float:
    """Multiplier of the base lr at global iteration ``it`` (0-based, the step about to be taken).

    Step decay: ``gamma ** (number of lr step iterations already reached)``. Linear warmup (mmdet 'linear'): for
    ``it < warmup_iters`` the factor is multiplied by ``1 - (1 - it / warmup_iters) * (1 - warmup_ratio)``.
    """
    return _factor(it, resolve_schedule(cfg, max(iters_per_epoch, 1)), cfg.gamma, cfg.warmup_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SolverCfg,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration LambdaLR implementing :func:`lr_factor`; call ``step()`` after every iteration."""
    schedule = resolve_schedule(cfg, max(iters_per_epoch, 1))
    gamma, ratio = cfg.gamma, cfg.warmup_ratio
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: _factor(it, schedule, gamma, ratio))


# --------------------------------------------------------------------------------------------
# What the trainer logs before the first step
# --------------------------------------------------------------------------------------------
def _steps_text(schedule: Schedule) -> str:
    if not schedule.step_iters:
        return "no lr steps"
    its = ", ".join(str(s) for s in schedule.step_iters)
    return f"lr steps at iterations {its} ({schedule.steps_key})"


def schedule_summary(schedule: Schedule, sb_period: int | None) -> str:
    """One log line: iterations per epoch, total, warmup share, lr steps and the self-balance period.

    ``sb_period``: iterations between self-balance updates (``loss.sb_period``, or one epoch when it is 0);
    None or 0 when the loss has no self-balance.
    """
    ipe = schedule.iters_per_epoch
    epochs = schedule.total_iters / ipe
    ep_text = f"{epochs:g}" if epochs == int(epochs) else f"{epochs:.2f}"
    sb_epochs = sb_period / ipe if sb_period else 0.0
    sb = (f"self-balance period {sb_period} iterations ({sb_epochs:.3g} epoch{'' if sb_epochs == 1 else 's'})"
          if sb_period else "no self-balance")
    return (f"schedule: {ipe} iterations/epoch, {schedule.total_iters} iterations in all = {ep_text} epochs "
            f"({schedule.length_key}); warmup {schedule.warmup_iters} iterations = "
            f"{100 * schedule.warmup_share:.0f}% of training ({schedule.warmup_key}); {_steps_text(schedule)}; {sb}")


def schedule_warnings(schedule: Schedule, sb_period: int | None) -> list[str]:
    """One line per implausible part of ``schedule`` for this data, each naming the key to change.

    Flags: warmup above :data:`MAX_WARMUP_SHARE` of training, fewer than :data:`MIN_TOTAL_ITERS` iterations, a
    self-balance period (``sb_period``; None/0 = no self-balance) under :data:`MIN_SB_PERIOD` iterations, and lr
    steps that training never reaches.
    """
    out = []
    total, ipe = schedule.total_iters, schedule.iters_per_epoch
    if total < MIN_TOTAL_ITERS:
        how = (f"raise {schedule.length_key} or give the length in iterations, e.g. solver.max_iters=1000"
               if schedule.length_key == "solver.epochs" else f"raise {schedule.length_key}, e.g. to 1000")
        out.append(f"schedule: only {total} iterations in all ({ipe} per epoch), fewer than the few hundred "
                   f"({MIN_TOTAL_ITERS}+) a detector needs: {how}")
    if schedule.warmup_iters > MAX_WARMUP_SHARE * total:
        suggestion = max(int(MAX_WARMUP_SHARE * total) // 2, 1)
        key = schedule.warmup_key
        value = suggestion if key == "solver.warmup_iters" else f"{suggestion / ipe:.3g}"
        out.append(f"schedule: warmup is {schedule.warmup_iters} of {total} iterations "
                   f"({100 * schedule.warmup_share:.0f}%, above a quarter of training): lower {key}, e.g. "
                   f"{key}={value}, or train longer")
    if sb_period and sb_period < MIN_SB_PERIOD:
        out.append(f"schedule: the self-balance weight is updated every {sb_period} iterations (loss.sb_period; "
                   f"0 = once per epoch, {ipe} iterations here), too few "
                   f"for a stable mean (it can swing to hundreds or thousands): set loss.sb_period="
                   f"{SUGGESTED_SB_PERIOD} or more")
    late = [s for s in schedule.step_iters if s >= total]
    if late and total > 0:
        out.append(f"schedule: lr steps at iterations {', '.join(map(str, late))} ({schedule.steps_key}) are at or "
                   f"after the end of training ({total} iterations) and never apply: lower {schedule.steps_key}")
    return out

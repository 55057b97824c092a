"""Optimiser and learning-rate schedule (SPEC §5): SGD, linear warmup, step decay by epoch."""
from __future__ import annotations

import logging

import torch
from torch import nn

from .config import SolverCfg

log = logging.getLogger(__name__)


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


def lr_factor(it: int, iters_per_epoch: int, cfg: SolverCfg) -> float:
    """Multiplier of the base lr at global iteration ``it`` (0-based, the step about to be taken).

    Step decay: ``gamma ** (number of lr_steps epochs already reached)``, with epoch = it // iters_per_epoch.
    Linear warmup (mmdet 'linear'): for it < warmup_iters the factor is multiplied by
    ``1 - (1 - it / warmup_iters) * (1 - warmup_ratio)``.
    """
    epoch = it // max(iters_per_epoch, 1)
    factor = cfg.gamma ** sum(epoch >= s for s in cfg.lr_steps)
    if it < cfg.warmup_iters:
        factor *= 1.0 - (1.0 - it / cfg.warmup_iters) * (1.0 - cfg.warmup_ratio)
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SolverCfg,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration LambdaLR implementing :func:`lr_factor`; call ``step()`` after every iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, iters_per_epoch, cfg))

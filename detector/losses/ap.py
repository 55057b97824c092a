"""AP Loss (Chen et al.) as in the aLRP release's mmdet copy (docs/REPRODUCTION.md §3.1), loop-free.

Relations, ranks and FP are those of aLRP (smoothed step everywhere, see :mod:`detector.losses.alrp`). Positives
are visited in ascending score order with a running maximum of the precision (interpolated AP):

    cur_i = rank_pos(i) / rank(i),   p_i = max_{i' <= i} cur_{i'}  (a cummax over ascending scores)
    grad(s_i) = -(1 - p_i) / P,      grad(s_j) = Σ_i h_ij r_i / P
    r_i = 1 / rank(i) if cur_i >= p_i else (1 - p_i) / ((1 - cur_i) rank(i))
    loss = 1 - mean_i p_i

The negatives' gradient uses the same per-interval affine tables as aLRP, with weights ``r_i`` instead of
``-g_i / FP(i)``. Balance (Theorem 2) holds because ``Σ_j h_ij = FP(i) = (1 - cur_i) rank(i)``.
With a process group the ranking is batch-global exactly as for aLRP (see :mod:`detector.losses.alrp`, item 5).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .alrp import Ranking, _check_inputs, _loss_dtype
from .global_rank import RankGroup

__all__ = ["ap_loss", "APLossFunction"]


class APLossFunction(torch.autograd.Function):
    """Interpolated AP Loss; the backward pass delivers the release's gradient (not d loss / d logits).

    With a :class:`RankGroup`: the loss of all ranks' entries together, and this rank's slice of the gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, delta: float = 1.0, use_grid: bool | None = None,
                group: RankGroup | None = None) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            rk = Ranking(logits.detach(), targets, delta, use_grid, group)
            ctx.in_dtype, ctx.numel, ctx.rk = logits.dtype, logits.numel(), None
            if rk.P == 0:
                return logits.new_zeros((), dtype=_loss_dtype(logits.dtype))
            n, m, index = rk.negative_moments()
            fp = rk.relation_sums(n, m)
            (sum_h,) = rk.positive_relations([torch.ones_like(rk.u)])
            rank_pos = 1.0 + sum_h
            rank = rank_pos + fp
            cur = rank_pos / rank
            prec = torch.cummax(cur, 0).values
            update = cur >= prec
            r = torch.where(update, 1.0 / rank, (1.0 - prec) / ((1.0 - cur).clamp_min(1e-300) * rank)) / rk.P
            g_pos = -(1.0 - prec) / rk.P
            if ctx.needs_input_grad[0]:
                ctx.rk, ctx.index, ctx.g_pos = rk, index, g_pos
                ctx.A, ctx.B = rk.negative_tables(r)
            return (1.0 - prec).mean().to(_loss_dtype(logits.dtype))

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        if ctx.rk is None:
            return torch.zeros(ctx.numel, dtype=ctx.in_dtype, device=grad_loss.device), None, None, None, None
        gout = grad_loss.to(torch.float64)
        grad = ctx.rk.negative_grad(ctx.index, ctx.A * gout, ctx.B * gout, ctx.g_pos * gout, ctx.in_dtype)
        return grad, None, None, None, None


def ap_loss(logits: Tensor, targets: Tensor, delta: float = 1.0, group=None) -> Tensor:
    """AP Loss of one device's batch: logits (M,), targets (M,) in {1, 0, -1}. Zero positives give 0.

    ``group``: a ``torch.distributed`` process group; every rank then returns the loss of the concatenation of
    all ranks' inputs and the matching slice of its gradient (see :func:`detector.losses.alrp.alrp_loss`).
    """
    _check_inputs(logits, targets, None, delta)
    return APLossFunction.apply(logits, targets, delta, None, None if group is None else RankGroup(group))

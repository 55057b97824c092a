"""Communication of the batch-global ranking (``loss.rank_scope: global``): O(P) values per call.

aLRP and AP Loss rank every (anchor, class) entry of every rank together when given a process group. Each rank
sends its positives' logits (and E values) once, sums its negatives' per-interval moments into one all-reduce,
and does everything else identically on every rank (the math is in :mod:`detector.losses.alrp`). Three
collectives per call, in the same order on every rank: an all-gather of the positive counts, an all-gather of the
positives' values (padded to the largest count), and an all-reduce of the 2·(2P+1) moments (skipped on every rank
alike when there are no positives anywhere).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import ConfigError

__all__ = ["RankGroup", "ddp_loss_scale", "RANK_SCOPES"]

RANK_SCOPES = ("device", "global")


def ddp_loss_scale(rank_scope: str) -> float:
    """Factor the trainer multiplies the total loss by before ``backward()`` under DDP.

    With ``global`` every rank returns the loss of the whole batch, and its backward pass gives the gradient of
    that loss restricted to the rank's own inputs; the full gradient is the *sum* of those slices over the ranks.
    DDP averages gradients, so the loss is multiplied by the world size W (under an initialised process group).
    With ``device`` (one ranking per rank, the paper's) the factor is 1.
    """
    if rank_scope not in RANK_SCOPES:
        raise ConfigError(f"config key 'loss.rank_scope' must be one of {RANK_SCOPES}, got {rank_scope!r}")
    if rank_scope == "global" and dist.is_available() and dist.is_initialized():
        return float(dist.get_world_size())
    return 1.0


class RankGroup:
    """One call's view of the ranks: gathers the positives, all-reduces the moments, splices the local slot.

    ``group`` is a ``torch.distributed`` process group (e.g. ``torch.distributed.group.WORLD``). After
    :meth:`gather_positives`, ``offset`` and ``count`` locate this rank's positives in the concatenation of all
    ranks' positives (rank 0's first: the flat-positive order of the single-process loss on the concatenated
    inputs), and ``errors`` holds the gathered E values (float64) when some were sent.
    """

    def __init__(self, group):
        self.group = group
        self.offset = 0
        self.count = 0
        self.errors: Tensor | None = None

    def gather_positives(self, logits: Tensor, errors: Tensor | None = None) -> Tensor:
        """All ranks' positive logits (float64, rank-major); E values, if given, are kept in ``self.errors``.

        ``logits`` and ``errors`` are this rank's (P_r,) tensors (detached; any float dtype, exact in float64).
        """
        if errors is not None and errors.numel() != logits.numel():
            raise ValueError(f"aLRP loss: got {errors.numel()} loc_errors for {logits.numel()} positives "
                             "(one E per entry of logits[targets == 1], in that order)")
        dev = logits.device
        world = dist.get_world_size(self.group)
        rank = dist.get_rank(self.group)
        counts = [torch.zeros(1, dtype=torch.int64, device=dev) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([logits.numel()], dtype=torch.int64, device=dev), group=self.group)
        sizes = torch.cat(counts).tolist()  # one host sync
        cols = 1 if errors is None else 2
        width = max(max(sizes), 1)
        mine = torch.zeros(width, cols, dtype=torch.float64, device=dev)
        mine[: sizes[rank], 0] = logits.to(torch.float64)
        if errors is not None:
            mine[: sizes[rank], 1] = errors.to(torch.float64)
        parts = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(parts, mine, group=self.group)
        values = torch.cat([p[:n] for p, n in zip(parts, sizes)])  # (P, cols)
        self.offset, self.count = sum(sizes[:rank]), sizes[rank]
        if errors is not None:
            self.errors = values[:, 1].contiguous()
        return values[:, 0].contiguous()

    def all_reduce_sum(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """Element-wise sums over the ranks of same-dtype tensors, in one all-reduce."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        return tuple(x.view_as(t) for x, t in zip(flat.split([t.numel() for t in tensors]), tensors))

    def local(self, x: Tensor) -> Tensor:
        """This rank's slice of a tensor in the gathered flat-positive order."""
        return x[self.offset: self.offset + self.count]

    def splice_errors(self, local_errors: Tensor) -> Tensor:
        """The gathered E values (float64) with this rank's slot replaced by ``local_errors`` (differentiable).

        The other ranks' values are constants here: the gradient w.r.t. ``local_errors`` is this rank's slice of
        the single-process gradient, and DDP sums the slices (see :func:`ddp_loss_scale`).
        """
        assert self.errors is not None, "gather_positives(..., errors) must run first"
        return torch.cat([self.errors[: self.offset], local_errors.to(torch.float64),
                          self.errors[self.offset + self.count:]])

"""Self-balancing weight of aLRP's localisation component (paper §4.2, docs/REPRODUCTION.md §2.4), synchronised
and checkpointed.

``loss = cls + SB · loc``. Every ``period`` calls (one epoch: the trainer passes the loader length) the weight
becomes ``(mean cls + mean loc) / mean loc`` over the iterations *with positives* since the last update, with the
sums all-reduced across ranks so every GPU uses the same weight. Deviations from the release, on purpose:
the state is in buffers (saved with the model, restored on resume), the sums are synchronised, and every call
counts towards the period (iterations without positives too) so all ranks update on the same iteration.
The new weight applies on the update iteration itself, as in the release. No host sync on the hot path.
"""
from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["SelfBalance"]


class SelfBalance(nn.Module):
    """Owns the SB weight; ``forward(cls_loss, loc_loss, has_pos)`` accumulates and returns the weight to use."""

    def __init__(self, init_weight: float = 50.0, period: int = 0):
        super().__init__()
        if not init_weight > 0:
            raise ValueError(f"SelfBalance: loss.sb_init must be > 0, got {init_weight}")
        if period < 0:
            raise ValueError(f"SelfBalance: loss.sb_period must be >= 0, got {period}")
        self.register_buffer("weight", torch.tensor(float(init_weight), dtype=torch.float32))
        self.register_buffer("cls_sum", torch.zeros((), dtype=torch.float64))  # Σ cls over iterations with positives
        self.register_buffer("loc_sum", torch.zeros((), dtype=torch.float64))  # Σ unweighted loc, same iterations
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))  # iterations with positives
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))  # calls since the start
        self.period = int(period)
        self.fixed_period = self.period > 0  # ``loss.sb_period`` set: the trainer's epoch length does not apply
        self._calls = 0  # host mirror of ``iteration`` (no sync to decide when to update)
        self._warned = False

    def set_period(self, period: int) -> None:
        """Iterations between updates (the trainer passes iterations per epoch)."""
        if period <= 0:
            raise ValueError(f"SelfBalance: the period must be > 0 iterations, got {period}")
        self.period = int(period)

    def set_epoch_length(self, iters_per_epoch: int) -> None:
        """The trainer's iterations per epoch: the period, unless a fixed period was configured."""
        if not self.fixed_period:
            self.set_period(iters_per_epoch)

    def forward(self, cls_loss: Tensor, loc_loss: Tensor, has_pos: bool) -> Tensor:
        """Record one training iteration and return the weight for its localisation loss (a detached tensor)."""
        if not self.training:
            return self.weight.detach().clone()
        if has_pos:
            self.cls_sum += cls_loss.detach().to(self.cls_sum.dtype)
            self.loc_sum += loc_loss.detach().to(self.loc_sum.dtype)
            self.count += 1
        self.iteration += 1
        self._calls += 1
        if self.period <= 0:
            if not self._warned:
                warnings.warn("SelfBalance has no period: call criterion.set_period(iters_per_epoch) or set "
                              "loss.sb_period; the SB weight stays at its initial value", stacklevel=2)
                self._warned = True
        elif self._calls % self.period == 0:
            self._update()
        return self.weight.detach().clone()

    def _update(self) -> None:
        stats = torch.stack([self.cls_sum, self.loc_sum, self.count])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        cls_sum, loc_sum, count = stats.unbind()
        cls_mean = cls_sum / count.clamp_min(1)
        loc_mean = loc_sum / count.clamp_min(1)
        ok = (count > 0) & (loc_mean > 0)
        new = (cls_mean + loc_mean) / torch.where(ok, loc_mean, torch.ones_like(loc_mean))
        self.weight.copy_(torch.where(ok, new, self.weight.to(new.dtype)))
        self.cls_sum.zero_()
        self.loc_sum.zero_()
        self.count.zero_()

    def consolidate(self) -> None:
        """Collective: move the running sums of every rank onto rank 0 (others hold zeros).

        The next update all-reduces the sums, so this changes nothing for training; it makes the state that
        rank 0 writes into a checkpoint the whole run's, so a resumed run updates exactly as if never stopped.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        stats = torch.stack([self.cls_sum, self.loc_sum, self.count])
        dist.all_reduce(stats)
        if dist.get_rank() != 0:
            stats.zero_()
        self.cls_sum.copy_(stats[0])
        self.loc_sum.copy_(stats[1])
        self.count.copy_(stats[2])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._calls = int(self.iteration)
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            # a checkpoint holds the run's sums (see consolidate); keep them on rank 0 only
            self.cls_sum.zero_()
            self.loc_sum.zero_()
            self.count.zero_()

    def extra_repr(self) -> str:
        return f"period={self.period}"

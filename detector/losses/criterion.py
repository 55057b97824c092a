"""The ranking-pool criterion: its declared interface, the shipped criteria and their registry.

A detector hands its loss one *ranking pool* per device batch (docs/REPRODUCTION.md §2.1):

- ``logits`` (M,): every (prior, class) entry of every image, flattened prior-major (``prior * K + class``);
- ``targets`` (M,) float: 1 at (positive prior, its class), 0 for a negative entry, -1 for an ignored one;
- ``pos_pred`` and ``pos_target`` (P, 4): the positives' predicted and target box encodings, rows in
  ``logits[targets == 1]`` order.

What the criterion needs to know about those boxes is *declared* by the criterion: ``measures_giou`` True means it
decodes both as normalised deltas around a unit anchor (``decode_unit_anchor`` with the model's coder stds) and
uses ``1 - GIoU``; the detector then feeds it such deltas whatever its own box coder is (a FoveaBox converts its log
distances first). False means the encodings are compared as given (Smooth L1 / L1 on raw deltas).

It returns ``loss_*`` terms (summed by the trainer) plus detached statistics (``num_pos``, ``sb_weight`` ...).
With zero positives the ranking losses are 0 and still connected to the graph; Focal Loss keeps its negatives'
term (normalised by 1), as mmdet does.

Adding a loss: write a :class:`Criterion` subclass in its own module and register its builder in
:data:`CRITERIA` under the ``loss.type`` that selects it (docs/EXTENDING.md).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import LossCfg
from ..errors import ConfigError
from .alrp import alrp_loss
from .ap import ap_loss
from .basic import focal_loss, giou_errors, giou_loss, l1_loss, smooth_l1_loss
from .global_rank import RANK_SCOPES
from .self_balance import SelfBalance

__all__ = ["CriterionHooks", "RankingCriterion", "Criterion", "ALRPTerms", "self_balanced_alrp", "RegressionLoss",
           "ALRPCriterion", "APCriterion", "FocalCriterion", "CriterionBuilder", "CRITERIA", "LOSS_TYPES",
           "REG_TYPES", "build_criterion", "rank_group", "global_count"]

REG_TYPES = ("smooth_l1", "l1", "giou")


# ---------------------------------------------------------------------------------------------- declared interfaces
@runtime_checkable
class CriterionHooks(Protocol):
    """What the trainer may use on ``model.criterion`` (every detector's criterion has all of it).

    - ``set_period(iters_per_epoch)``: the self-balance period when ``loss.sb_period`` is 0 (a no-op otherwise and
      for criteria without self-balance);
    - ``track_balance`` (bool, settable): record the Theorem-2 gradient balance of the classification logits on
      the next backward pass; ``last_balance``: ``(sum of positive grads, sum of negative grads)`` or None;
    - ``consolidate()``: collective (every rank calls it), before a checkpoint is written: moves the self-balance
      running sums onto rank 0 (a no-op without self-balance or without a process group);
    - ``has_self_balance``: whether it owns a self-balance weight (``sb_weight`` is logged and the SB period applies).
    """

    track_balance: bool
    last_balance: tuple[Tensor, Tensor] | None

    @property
    def has_self_balance(self) -> bool: ...

    def set_period(self, period: int) -> None: ...

    def consolidate(self) -> None: ...


@runtime_checkable
class RankingCriterion(CriterionHooks, Protocol):
    """A loss over one ranking pool (module docstring): ``criterion(logits, targets, pos_pred, pos_target)``.

    ``measures_giou``: True if it decodes ``pos_pred`` / ``pos_target`` as unit-anchor deltas for GIoU, False
    if it compares them as given.
    """

    measures_giou: bool

    def __call__(self, logits: Tensor, targets: Tensor, pos_pred: Tensor, pos_target: Tensor) -> dict[str, Tensor]: ...


# ---------------------------------------------------------------------------------------------- shared plumbing
def rank_group(rank_scope: str):
    """The process group the ranking spans: ``torch.distributed.group.WORLD`` for ``global`` under an initialised
    process group of more than one rank, else None (one ranking per device, the paper's)."""
    if rank_scope == "global" and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.group.WORLD
    return None


def global_count(count: int, like: Tensor, group) -> Tensor:
    """``count`` summed over the ranks of ``group`` (float32 tensor on ``like``'s device; one all-reduce)."""
    total = like.new_full((), float(count), dtype=torch.float32)
    dist.all_reduce(total, group=group)
    return total


class Criterion(nn.Module):
    """Base of the shipped criteria: implements :class:`CriterionHooks`.

    ``set_period`` and ``consolidate`` reach every :class:`SelfBalance` inside the criterion; ``watch(logits,
    targets)`` (call it on the pool's logits) records ``last_balance`` when ``track_balance`` is set.
    ``rank_scope``: ``device`` or ``global`` (``loss.rank_scope``); :meth:`group` is the process group to rank over.
    """

    measures_giou: bool = False

    def __init__(self, rank_scope: str = "device") -> None:
        super().__init__()
        if rank_scope not in RANK_SCOPES:
            raise ConfigError(f"config key 'loss.rank_scope' must be one of {RANK_SCOPES}, got {rank_scope!r}")
        self.rank_scope = rank_scope
        self.track_balance = False
        self.last_balance: tuple[Tensor, Tensor] | None = None

    def group(self):
        """The process group of this call's ranking (None: this device's batch only)."""
        return rank_group(self.rank_scope)

    @property
    def has_self_balance(self) -> bool:
        return any(isinstance(m, SelfBalance) for m in self.modules())

    def set_period(self, period: int) -> None:
        for m in self.modules():
            if isinstance(m, SelfBalance):
                m.set_epoch_length(period)

    def consolidate(self) -> None:
        for m in self.modules():
            if isinstance(m, SelfBalance):
                m.consolidate()

    def watch(self, logits: Tensor, targets: Tensor) -> None:
        """Record ``last_balance`` from the gradient of ``logits`` if ``track_balance`` is on."""
        if not (self.track_balance and logits.requires_grad):
            return
        pos, neg = targets == 1, targets == 0

        def hook(grad: Tensor) -> None:
            g = grad.detach().float()
            self.last_balance = ((g * pos).sum(), (g * neg).sum())

        logits.register_hook(hook)


class ALRPTerms(NamedTuple):
    """The aLRP loss of one pool: ``cls``, ``loc`` (= SB x localisation component), the SB weight used and the
    unweighted localisation component (detached)."""

    cls: Tensor
    loc: Tensor
    sb_weight: Tensor
    loc_raw: Tensor


def self_balanced_alrp(sb: SelfBalance, logits: Tensor, targets: Tensor, errors: Tensor, *, delta: float = 1.0,
                       eps: float = 1e-5, weight: float = 1.0, group=None) -> ALRPTerms:
    """aLRP Loss with self-balance, the one wiring every detector uses (docs/REPRODUCTION.md §2.3-2.4, §4.2).

    ``errors`` (P,): E of the positives in ``logits[targets == 1]`` order. ``weight`` scales the classification
    component and its gradient and the localisation component (the RPN's head weight, §4.2); SB sees the weighted
    localisation component, so its ratio does not depend on ``weight``. ``group``: rank over every rank's pool.
    """
    num_pos = errors.shape[0]
    cls, loc = alrp_loss(logits, targets, errors, delta, eps, weight=weight, group=group)
    if weight != 1.0:
        loc = loc * weight
    sb_weight = sb(cls, loc, num_pos > 0)
    return ALRPTerms(cls, sb_weight.to(loc.dtype) * loc, sb_weight, loc.detach())


class RegressionLoss(nn.Module):
    """Smooth L1 / L1 on the box encodings or GIoU on unit-anchor boxes (``kind``), times ``weight``."""

    def __init__(self, kind: str, weight: float, beta: float, stds: Sequence[float]):
        super().__init__()
        if kind not in REG_TYPES:
            raise ConfigError(f"config key 'loss.reg': unknown regression loss '{kind}', choose one of {REG_TYPES}")
        self.kind, self.weight, self.beta, self.stds = kind, weight, beta, list(stds)

    @property
    def measures_giou(self) -> bool:
        return self.kind == "giou"

    def forward(self, pred: Tensor, target: Tensor, num_pos: Tensor | None = None) -> Tensor:
        """Mean over the positives, or over ``num_pos`` of them (all ranks' count under a global ranking)."""
        if self.kind == "smooth_l1":
            loss = smooth_l1_loss(pred, target, self.beta, num_pos)
        elif self.kind == "l1":
            loss = l1_loss(pred, target, num_pos)
        else:
            loss = giou_loss(pred, target, self.stds, num_pos)
        return self.weight * loss


# ---------------------------------------------------------------------------------------------- shipped criteria
class ALRPCriterion(Criterion):
    """aLRP Loss: ``loss_cls`` = ranking component, ``loss_box`` = SB · localisation component
    (docs/REPRODUCTION.md §2.3-2.4)."""

    measures_giou = True

    def __init__(self, delta: float, eps: float, coder_stds: Sequence[float], sb_init: float, sb_period: int,
                 rank_scope: str = "device"):
        super().__init__(rank_scope)
        self.delta, self.eps, self.stds = delta, eps, list(coder_stds)
        self.sb = SelfBalance(sb_init, sb_period)

    def forward(self, logits: Tensor, targets: Tensor, pos_pred: Tensor, pos_target: Tensor) -> dict[str, Tensor]:
        self.watch(logits, targets)
        errors = giou_errors(pos_pred, pos_target, self.stds)  # (P,) E = 1 - GIoU in [0, 2]
        t = self_balanced_alrp(self.sb, logits, targets, errors, delta=self.delta, eps=self.eps, group=self.group())
        return {"loss_cls": t.cls, "loss_box": t.loc, "sb_weight": t.sb_weight, "loc_raw": t.loc_raw,
                "num_pos": logits.new_full((), float(pos_pred.shape[0]))}


class APCriterion(Criterion):
    """AP Loss + a regression loss (docs/REPRODUCTION.md §3.1: Smooth L1 on normalised deltas in the release).

    Under a global ranking the regression is normalised by the positives of all ranks, so the ranks' losses sum
    to the loss of the whole batch.
    """

    def __init__(self, delta: float, reg: RegressionLoss, rank_scope: str = "device"):
        super().__init__(rank_scope)
        self.delta, self.reg = delta, reg
        self.measures_giou = reg.measures_giou

    def forward(self, logits: Tensor, targets: Tensor, pos_pred: Tensor, pos_target: Tensor) -> dict[str, Tensor]:
        self.watch(logits, targets)
        group = self.group()
        num_pos = None if group is None else global_count(pos_pred.shape[0], logits, group)
        return {"loss_cls": ap_loss(logits, targets, self.delta, group=group),
                "loss_box": self.reg(pos_pred, pos_target, num_pos),
                "num_pos": logits.new_full((), float(pos_pred.shape[0]))}


class FocalCriterion(Criterion):
    """Focal Loss (normalised by the number of positives) + a regression loss; one device's batch only."""

    def __init__(self, alpha: float, gamma: float, reg: RegressionLoss):
        super().__init__("device")
        self.alpha, self.gamma, self.reg = alpha, gamma, reg
        self.measures_giou = reg.measures_giou

    def forward(self, logits: Tensor, targets: Tensor, pos_pred: Tensor, pos_target: Tensor) -> dict[str, Tensor]:
        self.watch(logits, targets)
        cls = focal_loss(logits, targets, self.alpha, self.gamma)
        return {"loss_cls": cls, "loss_box": self.reg(pos_pred, pos_target),
                "num_pos": logits.new_full((), float(pos_pred.shape[0]))}


# ---------------------------------------------------------------------------------------------- registry
CriterionBuilder = Callable[[LossCfg, int, Sequence[float]], RankingCriterion]
"""``builder(cfg.loss, num_classes, coder_stds) -> criterion``; raise ConfigError naming the key on bad values."""


def _regression(cfg: LossCfg, stds: Sequence[float]) -> RegressionLoss:
    return RegressionLoss(cfg.reg, cfg.reg_weight, cfg.smooth_l1_beta, stds)


def _build_alrp(cfg: LossCfg, num_classes: int, stds: Sequence[float]) -> ALRPCriterion:
    return ALRPCriterion(cfg.delta, cfg.eps, stds, cfg.sb_init, cfg.sb_period, cfg.rank_scope)


def _build_ap(cfg: LossCfg, num_classes: int, stds: Sequence[float]) -> APCriterion:
    return APCriterion(cfg.delta, _regression(cfg, stds), cfg.rank_scope)


def _build_focal(cfg: LossCfg, num_classes: int, stds: Sequence[float]) -> FocalCriterion:
    if cfg.rank_scope != "device":
        raise ConfigError("config key 'loss.rank_scope': Focal Loss is not a ranking loss; only 'device' applies "
                          f"(got {cfg.rank_scope!r})")
    return FocalCriterion(cfg.focal_alpha, cfg.focal_gamma, _regression(cfg, stds))


# loss.type -> builder of the criterion every dense detector (RetinaNet, FoveaBox, ...) trains with
CRITERIA: dict[str, CriterionBuilder] = {
    "alrp": _build_alrp,
    "ap": _build_ap,
    "focal": _build_focal,
}
# The valid values of ``loss.type`` for dense detectors: a live view of the registry, so a registered loss is valid.
LOSS_TYPES = CRITERIA.keys()


def build_criterion(loss_cfg: LossCfg, num_classes: int, coder_stds: Sequence[float]) -> RankingCriterion:
    """The criterion registered under ``loss.type``; bad values raise ConfigError naming the config key."""
    if loss_cfg.type not in CRITERIA:
        raise ConfigError(f"config key 'loss.type': unknown loss '{loss_cfg.type}', choose one of "
                          f"{', '.join(CRITERIA)}")
    if num_classes < 1:
        raise ConfigError(f"config key 'model.num_classes' must be >= 1, got {num_classes}")
    if len(coder_stds) != 4:
        raise ConfigError(f"config key 'model.coder_stds' must have 4 values, got {list(coder_stds)}")
    if not loss_cfg.delta > 0:
        raise ConfigError(f"config key 'loss.delta' must be > 0, got {loss_cfg.delta}")
    if loss_cfg.rank_scope not in RANK_SCOPES:
        raise ConfigError(f"config key 'loss.rank_scope' must be one of {RANK_SCOPES}, got {loss_cfg.rank_scope!r}")
    return CRITERIA[loss_cfg.type](loss_cfg, num_classes, coder_stds)

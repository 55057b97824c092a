"""``build_criterion``: the loss of one device's batch from ``cfg.loss`` (aLRP, AP Loss or Focal baselines).

Called by the model as ``criterion(logits (M,), targets (M,) in {1, 0, -1}, pos_pred_deltas (P, 4),
pos_target_deltas (P, 4))``; rows of the deltas follow ``logits[targets == 1]``. Returns ``loss_cls`` and
``loss_box`` (summed by the trainer) plus detached statistics. With zero positives the ranking losses are 0 and
still connected to the graph; Focal Loss keeps its negatives' term (normalised by 1), as mmdet does.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..config import LossCfg
from .alrp import alrp_loss
from .ap import ap_loss
from .basic import focal_loss, giou_errors, giou_loss, l1_loss, smooth_l1_loss
from .self_balance import SelfBalance

__all__ = ["build_criterion", "ALRPCriterion", "APCriterion", "FocalCriterion", "LOSS_TYPES", "REG_TYPES"]

LOSS_TYPES = ("alrp", "ap", "focal")
REG_TYPES = ("smooth_l1", "l1", "giou")


class _Criterion(nn.Module):
    """Shared plumbing: the balance hook (Theorem 2 diagnostics) and the ``set_period`` no-op."""

    def __init__(self):
        super().__init__()
        self.track_balance = False
        self.last_balance: tuple[Tensor, Tensor] | None = None

    def set_period(self, period: int) -> None:
        """Iterations per epoch; only aLRP's self-balance uses it."""

    def _watch(self, logits: Tensor, targets: Tensor) -> None:
        if not (self.track_balance and logits.requires_grad):
            return
        pos, neg = targets == 1, targets == 0

        def hook(grad: Tensor) -> None:
            g = grad.detach().float()
            self.last_balance = ((g * pos).sum(), (g * neg).sum())

        logits.register_hook(hook)


class _Regression(nn.Module):
    """Smooth L1 / L1 on normalised deltas or GIoU on unit-anchor boxes, times ``weight``."""

    def __init__(self, kind: str, weight: float, beta: float, stds: list[float]):
        super().__init__()
        self.kind, self.weight, self.beta, self.stds = kind, weight, beta, list(stds)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if self.kind == "smooth_l1":
            loss = smooth_l1_loss(pred, target, self.beta)
        elif self.kind == "l1":
            loss = l1_loss(pred, target)
        else:
            loss = giou_loss(pred, target, self.stds)
        return self.weight * loss


class ALRPCriterion(_Criterion):
    """aLRP Loss: ``loss_cls`` = ranking component, ``loss_box`` = SB · localisation component (SPEC §2.3-2.4)."""

    def __init__(self, delta: float, eps: float, coder_stds: list[float], sb_init: float, sb_period: int):
        super().__init__()
        self.delta, self.eps, self.stds = delta, eps, list(coder_stds)
        self.fixed_period = sb_period > 0
        self.sb = SelfBalance(sb_init, sb_period)

    def set_period(self, period: int) -> None:
        if not self.fixed_period:
            self.sb.set_period(period)

    def forward(self, logits: Tensor, targets: Tensor, pos_pred_deltas: Tensor,
                pos_target_deltas: Tensor) -> dict[str, Tensor]:
        self._watch(logits, targets)
        num_pos = pos_pred_deltas.shape[0]
        errors = giou_errors(pos_pred_deltas, pos_target_deltas, self.stds)  # (P,) E = 1 - GIoU in [0, 2]
        cls, loc = alrp_loss(logits, targets, errors, self.delta, self.eps)
        weight = self.sb(cls, loc, num_pos > 0)
        return {"loss_cls": cls, "loss_box": weight.to(loc.dtype) * loc, "sb_weight": weight,
                "loc_raw": loc.detach(), "num_pos": logits.new_full((), float(num_pos))}


class APCriterion(_Criterion):
    """AP Loss + a regression loss (SPEC §3.1: Smooth L1 on normalised deltas in the release)."""

    def __init__(self, delta: float, reg: _Regression):
        super().__init__()
        self.delta, self.reg = delta, reg

    def forward(self, logits: Tensor, targets: Tensor, pos_pred_deltas: Tensor,
                pos_target_deltas: Tensor) -> dict[str, Tensor]:
        self._watch(logits, targets)
        return {"loss_cls": ap_loss(logits, targets, self.delta),
                "loss_box": self.reg(pos_pred_deltas, pos_target_deltas),
                "num_pos": logits.new_full((), float(pos_pred_deltas.shape[0]))}


class FocalCriterion(_Criterion):
    """Focal Loss (normalised by the number of positives) + a regression loss."""

    def __init__(self, alpha: float, gamma: float, reg: _Regression):
        super().__init__()
        self.alpha, self.gamma, self.reg = alpha, gamma, reg

    def forward(self, logits: Tensor, targets: Tensor, pos_pred_deltas: Tensor,
                pos_target_deltas: Tensor) -> dict[str, Tensor]:
        self._watch(logits, targets)
        cls = focal_loss(logits, targets, self.alpha, self.gamma)
        return {"loss_cls": cls, "loss_box": self.reg(pos_pred_deltas, pos_target_deltas),
                "num_pos": logits.new_full((), float(pos_pred_deltas.shape[0]))}


def build_criterion(loss_cfg: LossCfg, num_classes: int, coder_stds: list[float]) -> nn.Module:
    """The criterion named by ``loss.type``; bad values raise ValueError naming the config key."""
    if loss_cfg.type not in LOSS_TYPES:
        raise ValueError(f"config key 'loss.type': unknown loss '{loss_cfg.type}', choose one of {LOSS_TYPES}")
    if loss_cfg.reg not in REG_TYPES:
        raise ValueError(f"config key 'loss.reg': unknown regression loss '{loss_cfg.reg}', choose one of {REG_TYPES}")
    if num_classes < 1:
        raise ValueError(f"config key 'model.num_classes' must be >= 1, got {num_classes}")
    if len(coder_stds) != 4:
        raise ValueError(f"config key 'model.coder_stds' must have 4 values, got {coder_stds}")
    if not loss_cfg.delta > 0:
        raise ValueError(f"config key 'loss.delta' must be > 0, got {loss_cfg.delta}")
    if loss_cfg.type == "alrp":
        return ALRPCriterion(loss_cfg.delta, loss_cfg.eps, coder_stds, loss_cfg.sb_init, loss_cfg.sb_period)
    reg = _Regression(loss_cfg.reg, loss_cfg.reg_weight, loss_cfg.smooth_l1_beta, coder_stds)
    if loss_cfg.type == "ap":
        return APCriterion(loss_cfg.delta, reg)
    return FocalCriterion(loss_cfg.focal_alpha, loss_cfg.focal_gamma, reg)

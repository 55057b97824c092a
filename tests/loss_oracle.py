"""Loop oracles for aLRP and AP Loss, written straight from the paper's equations and docs/REPRODUCTION.md §1-§3.

One step per positive (visited in ascending score order), each step vectorised over the relevant negatives and
the other positives, as in the authors' release: O(P·N) work. Used by the tests and scripts/benchmark_loss.py.
Computed in the dtype of ``logits`` (use float64 for reference-grade values).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _step(x: Tensor, delta: float) -> Tensor:
    """H_δ(x) = clamp(x / 2δ + 1/2, 0, 1)."""
    return torch.clamp(x / (2 * delta) + 0.5, min=0, max=1)


def alrp_oracle(logits: Tensor, targets: Tensor, loc_errors: Tensor, delta: float = 1.0, eps: float = 1e-5,
                weight: float = 1.0) -> dict[str, Tensor]:
    """aLRP with the release's conventions: cls_loss, rank (flat-positive order), order, grad, loc, loc_grad_e."""
    grad = torch.zeros_like(logits)
    pos = targets == 1
    fg = logits[pos]
    e = loc_errors.to(logits.dtype)
    P = fg.numel()
    if P == 0:
        zero = logits.new_zeros(())
        return {"cls_loss": zero, "rank": fg, "order": torch.zeros(0, dtype=torch.long), "grad": grad,
                "loc": zero, "loc_grad_e": e}
    thr = fg.min() - delta
    rel = (targets == 0) & (logits >= thr)
    neg = logits[rel]
    neg_grad = torch.zeros_like(neg)
    fg_grad = torch.zeros_like(fg)
    rank = torch.zeros_like(fg)
    prec = torch.zeros_like(fg)
    order = torch.argsort(fg, stable=True)
    for i in order.tolist():
        h_neg = _step(neg - fg[i], delta)
        h_pos = _step(fg - fg[i], delta)
        h_pos[i] = 0
        fp = h_neg.sum()
        rank_pos = 1 + h_pos.sum()
        rank[i] = rank_pos + fp
        prec[i] = rank_pos / rank[i]
        if fp > eps:
            fg_grad[i] = -(torch.sum(h_pos * e) + fp) / rank[i]
            neg_grad += h_neg * (-fg_grad[i] / fp)
    grad[pos] = fg_grad
    grad[rel] = neg_grad
    grad = grad * (weight / P)
    cls = (1 - prec.mean()) * weight
    # localisation: hard descending order, smoothed rank
    e_leaf = e.detach().clone().requires_grad_(True)
    d = order.flip(0)
    loc = (torch.cumsum(e_leaf[d], 0) / rank[d]).mean()
    (loc_grad,) = torch.autograd.grad(loc, e_leaf)
    return {"cls_loss": cls, "rank": rank, "order": order, "grad": grad, "loc": loc.detach(), "loc_grad_e": loc_grad}


def ap_oracle(logits: Tensor, targets: Tensor, delta: float = 1.0) -> dict[str, Tensor]:
    """AP Loss with interpolated precision (docs/REPRODUCTION.md §3.1): loss and grad (divided by P)."""
    grad = torch.zeros_like(logits)
    pos = targets == 1
    fg = logits[pos]
    P = fg.numel()
    if P == 0:
        return {"loss": logits.new_zeros(()), "grad": grad}
    thr = fg.min() - delta
    rel = (targets == 0) & (logits >= thr)
    neg = logits[rel]
    neg_grad = torch.zeros_like(neg)
    fg_grad = torch.zeros_like(fg)
    prec = torch.zeros_like(fg)
    max_prec = 0.0
    for i in torch.argsort(fg, stable=True).tolist():
        h_neg = _step(neg - fg[i], delta)
        h_pos = _step(fg - fg[i], delta)
        h_pos[i] = 0
        rank_pos = 1 + h_pos.sum()
        rank = rank_pos + h_neg.sum()
        cur = rank_pos / rank
        if max_prec <= cur:
            max_prec = cur
            neg_grad += h_neg / rank
        else:
            neg_grad += h_neg / rank * ((1 - max_prec) / (1 - cur))
        fg_grad[i] = -(1 - max_prec)
        prec[i] = max_prec
    grad[pos] = fg_grad
    grad[rel] = neg_grad
    return {"loss": 1 - prec.mean(), "grad": grad / P}

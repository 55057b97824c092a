r"""aLRP Loss (Oksuz et al., NeurIPS 2020) with the release's conventions, computed without a loop.

Conventions (docs/REPRODUCTION.md §1, §2.3): ``s`` are raw logits, ``H(x) = clamp(x / 2δ + 1/2, 0, 1)``. For positive i and any
other entry j, ``h_ij = H(s_j - s_i)`` (smoothed everywhere, also between positives; ``h_ii = 0``).

    rank_pos(i) = 1 + Σ_{k≠i} h_ik     FP(i) = Σ_{j∈N} h_ij     rank(i) = rank_pos(i) + FP(i)
    cls_loss    = 1 - mean_i rank_pos(i) / rank(i)  (= mean_i FP(i) / rank(i))
    g_i         = -(Σ_{k≠i} h_ik E_k + FP(i)) / rank(i)        if FP(i) > eps, else 0
    grad(s_i)   = g_i / P            grad(s_j) = Σ_i h_ij w_i / P,   w_i = -g_i / FP(i)
    loc_loss    = mean_q cumsum(E[d])[q] / rank(d[q]),  d = positives by descending score (hard order)

The authors loop over the P positives and touch every negative each time: O(P·N). Here every sum is a prefix
sum over the *sorted* positives, so the cost is O((N + P) log P) time and O(N + P) memory.

Derivation. Sort the positives, ``u_0 <= ... <= u_{P-1}``. As a function of a source value ``t`` (a negative's
logit, or another positive's), ``h_i(t) = H(t - u_i)`` is piecewise linear with two knots:

    h_i(t) = 0 for t < L_i = u_i - δ,   (t - u_i)/2δ + 1/2 on [L_i, U_i),   1 for t >= U_i = u_i + δ.

Merge all 2P knots into one sorted list ``β`` (``L`` and ``U`` each stay sorted). A source falls into interval
``c = #{β <= t}`` (0..2P). Within one interval the set of positives for which it is "full" (``t >= U_i``, i.e.
``i < a_c`` with ``a_c`` = number of U-knots among the first c) and the set for which it is "linear"
(``a_c <= i < b_c``, ``b_c`` = number of L-knots among the first c) are fixed, and both are *contiguous ranges
of sorted positives*. Hence:

1. Sums over sources for every positive (FP, rank_pos and Σ_k h_ik E_k). Only two moments per interval are
   needed: ``n_c = Σ x`` and ``m_c = Σ x·t`` over the sources in interval c (x = 1 for FP / rank_pos, x = E_k
   for the localisation term). With the suffix sums ``R[c] = Σ_{c' >= c}`` and the knot positions ``pL_i``,
   ``pU_i`` in the merged list, source j is linear for i iff ``pL_i < c_j <= pU_i`` and full iff ``c_j > pU_i``:

       Σ_j x_j h_ij = Rn[pU_i+1] + (W_m - u_i W_n) / 2δ + W_n / 2,
       W_n = Rn[pL_i+1] - Rn[pU_i+1],  W_m = Rm[pL_i+1] - Rm[pU_i+1]

   Each negative is visited once (to find c and add 1 and t into bins); everything after is O(P).
   Suffix sums (from the top) keep the float64 round-off proportional to the negatives relevant to i, which is
   where FP is small. The positive-positive sums include the self term h_ii = 1/2, which is subtracted.
2. The gradient of negative j, ``Σ_i w_i h_ij = W[a_c] + Σ_{a_c <= i < b_c} w_i ((t_j - u_i)/2δ + 1/2)``, is with
   the exclusive prefix sums ``W[k] = Σ_{i<k} w_i`` and ``V[k] = Σ_{i<k} w_i u_i`` an affine function of t_j
   per interval: ``A_c + t_j B_c`` with ``B_c = (W[b_c] - W[a_c]) / 2δ`` and
   ``A_c = W[a_c] + (W[b_c] - W[a_c]) / 2 - (V[b_c] - V[a_c]) / 2δ``. One gather and one fma per entry.
3. Finding c. ``torch.searchsorted`` is exact but slow on CPU (a branchy binary search per entry), so on CPU a
   uniform grid of power-of-two cells is laid over ``[β_0, β_{2P-1}]``: ``cell = trunc(t / Δ - k0)``, each cell
   stores the number of knots below it and its single knot (``c = base[cell] + (t >= knot)``), and the entries of
   cells holding two or more knots are resolved by searchsorted afterwards. CUDA uses searchsorted directly.
4. Masking without reading the targets in the hot loop: every entry is binned, then the positives and ignored
   entries (one ``nonzero`` of ``targets != 0``) are subtracted from the bins again; their gradient is written
   explicitly (the positives' own g_i, exactly 0 for ignored entries). Logits must be finite: a non-finite logit,
   even on an ignored entry, makes the loss NaN (which the trainer's finiteness check reports).

5. Batch-global ranking (``group=``, ``loss.rank_scope: global``). The ranking of the concatenation of all
   ranks' inputs needs, per rank, only O(P) communication: the knot list and every per-positive quantity depend
   on the positives' logits (and E values) alone, and the negatives enter only through the per-interval moments
   ``(n_c, m_c)``, which are sums and therefore additive over ranks. So every rank all-gathers the positives
   (rank-major: the flat-positive order of the concatenated inputs, so the stable sort breaks ties identically),
   bins its *own* entries against the shared knots, all-reduces ``(n, m)`` (2·(2P+1) values) and then computes
   FP, rank, g_i, w_i and the tables (A, B) identically on every rank. Its backward pass writes ``A_c + t_j B_c``
   for its local negatives and its own positives' g_i: the matching slice of the single-process gradient. The
   localisation component is the global value too, differentiable w.r.t. the local E only (the other ranks' E
   are constants), so the sum of the ranks' gradients is the single-process gradient; DDP averages, hence the
   trainer scales the loss by the world size (``ddp_loss_scale``). Communication: :mod:`.global_rank`.

Cost per entry: forward ~12 elementwise/gather/scatter ops on 32K-entry chunks, backward 2 gathers and an fma;
memory: one int32 interval index per entry kept for the backward pass plus chunk-sized buffers.
Precision: per-entry arithmetic, moments, tables and every per-positive quantity are float64 (fp16/bf16/fp32
logits are exact in float64). The loss is not autocast: the logits are cast explicitly and the gradient is
returned in the input dtype, scaled by the incoming gradient before the cast (a GradScaler's scale protects fp16).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .global_rank import RankGroup

__all__ = ["alrp_loss", "ALRPClassification", "Ranking", "alrp_loc_loss"]

_CPU_CHUNK = (1 << 15) - 1  # entries per step on CPU: below torch's grain size, so each op runs inline on one
# thread with its temporaries in L2 (multi-threaded small ops stall at barriers when other processes compete)
_CUDA_CHUNK = 1 << 24
_GRID_CELLS = (1 << 14) - 2  # grid cells between this and twice this: the tables stay below the grain size too


def _suffix(x: Tensor) -> Tensor:
    """``R[c] = Σ_{c' >= c} x[c']`` with one trailing zero: (n,) -> (n + 1,)."""
    return torch.cat([x.flip(0).cumsum(0).flip(0), x.new_zeros(1)])


def _exclusive(x: Tensor) -> Tensor:
    """``W[k] = Σ_{i < k} x[i]``: (n,) -> (n + 1,)."""
    return torch.cat([x.new_zeros(1), x.cumsum(0)])


class _Grid:
    """Power-of-two cells over the knots; maps a logit to its interval index c (CPU path).

    Cell ``k`` covers ``[(k0 + k)Δ, (k0 + k + 1)Δ)``. ``base[k]`` = knots below the cell, ``beta[k]`` = its single
    knot (NaN if none); a cell with two or more knots gets ``base = fallback`` and its entries are resolved by
    searchsorted. The cell of a float64 logit is ``trunc(t/Δ - k0)``: the scaling is exact and the subtraction is
    exact unless t is within 2^-34 cells of a cell boundary, where a neighbouring cell gives the same value of
    every relation (the relations are continuous), so c is exact up to that continuity.
    """

    def __init__(self, knots: Tensor, fallback: int, target_cells: int = _GRID_CELLS):
        lo, hi = float(knots[0]), float(knots[-1])
        self.ok = math.isfinite(hi - lo)  # non-finite positives: searchsorted (the loss will be NaN)
        if not self.ok:
            return
        exp = math.floor(math.log2(max(hi - lo, 1e-30) / target_cells))
        self.inv = 2.0 ** -exp  # 1 / Δ, an exact scaling
        self.k0 = math.floor(lo * self.inv) - 1  # cell 0 lies wholly below the lowest knot
        kmax = math.floor(hi * self.inv) + 1  # the last cell lies wholly above the highest knot
        self.ok = max(abs(self.k0), abs(kmax)) < 2.0 ** 30 and math.isfinite(self.inv)
        if not self.ok:
            return
        self.top = float(kmax - self.k0)
        cells = kmax - self.k0 + 1
        kb = (torch.floor(knots * self.inv) - self.k0).long()  # (2P,) cell of each knot
        count = torch.bincount(kb, minlength=cells)
        base = _exclusive(count)[:-1]  # knots strictly below each cell
        mine = count[kb] == 1
        self.beta = torch.full((cells,), math.nan, dtype=torch.float64)  # NaN: t >= NaN is false even for t = inf
        self.beta[kb[mine]] = knots[mine]
        crowded = count >= 2
        self.has_fallback = bool(crowded.any())
        self.base = torch.where(crowded, torch.full_like(base, fallback), base)

    def interval(self, t64: Tensor, out: Tensor, work: dict[str, Tensor]) -> Tensor:
        """Interval index (int64, written to ``out``) of every float64 logit in ``t64``."""
        n = t64.numel()
        y, cell, beta, ge = work["y"][:n], work["cell"][:n], work["beta"][:n], work["ge"][:n]
        torch.mul(t64, self.inv, out=y).sub_(self.k0).clamp_(0.0, self.top)
        cell.copy_(y)  # truncation = floor on non-negative values
        torch.index_select(self.base, 0, cell, out=out)
        torch.index_select(self.beta, 0, cell, out=beta)
        return out.add_(torch.ge(t64, beta, out=ge))


class Ranking:
    """The sorted positives and the merged knot list of one call, plus the per-interval algebra.

    ``Ranking(logits, targets, delta)`` sorts the positives; :meth:`negative_moments` scans the entries once.
    All per-positive tensors are float64 and in ascending score order (``order`` maps it to flat-positive order).
    With a :class:`RankGroup` the positives are those of all ranks (``loc_errors``, this rank's E values, are
    gathered with them), the moments are summed over the ranks, and the scans touch this rank's entries only.
    """

    def __init__(self, logits: Tensor, targets: Tensor, delta: float, use_grid: bool | None = None,
                 group: RankGroup | None = None, loc_errors: Tensor | None = None):
        self.logits, self.targets, self.delta = logits, targets, float(delta)
        self.inv2d = 1.0 / (2.0 * self.delta)
        dev = logits.device
        self.other_flat = (targets != 0).nonzero().squeeze(1)  # positives and ignored entries, flat order
        self.pos_flat = self.other_flat[targets[self.other_flat] == 1]  # (P,) flat order
        self.group = group
        fg = logits[self.pos_flat].to(torch.float64)
        if group is not None:  # all ranks' positives, rank-major
            fg = group.gather_positives(fg, loc_errors)
        self.P = int(fg.numel())
        self.order = torch.argsort(fg, stable=True)  # flat-positive index of the q-th lowest positive
        self.u = fg[self.order]  # (P,) ascending
        self.local_sorted: Tensor | None = None  # sorted positions of this rank's positives (None: all)
        if group is None:
            self.pos_sorted_flat = self.pos_flat[self.order]
        else:
            mine = (self.order >= group.offset) & (self.order < group.offset + group.count)
            self.local_sorted = mine.nonzero().squeeze(1)
            self.pos_sorted_flat = self.pos_flat[self.order[self.local_sorted] - group.offset]
        vals = torch.cat([self.u - self.delta, self.u + self.delta])  # (2P,) L then U
        perm = torch.argsort(vals, stable=True)
        self.knots = vals[perm]
        is_u = (perm >= self.P).long()
        self.a_of = _exclusive(is_u)  # (2P+1,) U-knots among the first c knots
        self.b_of = torch.arange(2 * self.P + 1, device=dev) - self.a_of  # L-knots among the first c
        where = torch.empty_like(perm)
        where[perm] = torch.arange(2 * self.P, device=dev)
        self.pL, self.pU = where[: self.P], where[self.P:]
        self.fallback = 2 * self.P + 1  # extra bin: entries whose interval the grid could not resolve
        if use_grid is None:
            use_grid = dev.type == "cpu"
        cells = min(_GRID_CELLS, max(64, logits.numel() // 8))  # no point in more cells than entries
        self.grid = _Grid(self.knots, self.fallback, cells) if use_grid and self.P > 0 else None
        if self.grid is not None and not self.grid.ok:
            self.grid = None

    # ---------------------------------------------------------------- scans over the flat entries
    def _step(self) -> int:
        return _CUDA_CHUNK if self.logits.is_cuda else _CPU_CHUNK

    def negative_moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per interval: number of negatives ``n`` and the sum of their logits ``m`` (float64, (2P+1,)), and
        every entry's interval index (int32, (M,)). With a group, ``n`` and ``m`` are summed over the ranks.

        The hot loop reads only the logits: all entries are binned, then the few non-negatives (positives and
        ignored entries, gathered once) are taken out again.
        """
        size = 2 * self.P + 2
        dev = self.logits.device
        n = torch.zeros(size, dtype=torch.float64, device=dev)
        m = torch.zeros(size, dtype=torch.float64, device=dev)
        total = self.logits.numel()
        index = torch.empty(total, dtype=torch.int32, device=dev)
        step = min(self._step(), max(total, 1))
        ones = torch.ones(step, dtype=torch.float64, device=dev)
        c_buf = torch.empty(step, dtype=torch.int64, device=dev)
        t_buf = torch.empty(step, dtype=torch.float64, device=dev)
        work = {"y": torch.empty(step, dtype=torch.float64, device=dev),
                "cell": torch.empty(step, dtype=torch.int32, device=dev),
                "beta": torch.empty(step, dtype=torch.float64, device=dev),
                "ge": torch.empty(step, dtype=torch.bool, device=dev)}
        grid = self.grid
        try:
            self._scan(grid, n, m, index, step, ones, c_buf, t_buf, work)
        except IndexError:  # a NaN logit has no grid cell; searchsorted bins it and the loss becomes NaN
            if bool(torch.isfinite(self.logits).all()):
                raise
            grid = None
            n.zero_(), m.zero_()
            self._scan(grid, n, m, index, step, ones, c_buf, t_buf, work)
        if grid is not None and grid.has_fallback and bool(n[self.fallback] > 0):
            idx = (index == self.fallback).nonzero().squeeze(1)  # entries in crowded cells: resolve exactly
            t64 = self.logits[idx].to(torch.float64)
            c = torch.searchsorted(self.knots, t64, right=True)
            index[idx] = c.to(torch.int32)
            n.index_add_(0, c, torch.ones_like(t64))
            m.index_add_(0, c, t64)
        other = self.other_flat
        if other.numel():  # take the positives and ignored entries out again
            c = index[other].long()
            n.index_add_(0, c, torch.full_like(other, -1, dtype=torch.float64))
            m.index_add_(0, c, -self.logits[other].to(torch.float64))
        n, m = n[:-1].clone(), m[:-1].clone()
        n[0], m[0] = 0.0, 0.0  # interval 0 relates to no positive
        if self.group is not None:
            n, m = self.group.all_reduce_sum(n, m)
        return n, m, index

    def _scan(self, grid: _Grid | None, n: Tensor, m: Tensor, index: Tensor, step: int, ones: Tensor, c_buf: Tensor,
              t_buf: Tensor, work: dict[str, Tensor]) -> None:
        """Bin every entry: interval index into ``index``, counts into ``n``, logit sums into ``m``."""
        total = self.logits.numel()
        for s in range(0, total, step):
            e = min(s + step, total)
            t64 = t_buf[: e - s].copy_(self.logits[s:e])
            c = c_buf[: e - s]
            if grid is not None:
                grid.interval(t64, c, work)
            else:
                torch.searchsorted(self.knots, t64, right=True, out=c)
            n.scatter_add_(0, c, ones[: e - s])
            m.scatter_add_(0, c, t64)
            index[s:e].copy_(c)

    def negative_grad(self, index: Tensor, A: Tensor, B: Tensor, g_pos: Tensor, out_dtype: torch.dtype) -> Tensor:
        """``grad[j] = A[c_j] + s_j B[c_j]`` for every negative, ``g_pos`` (sorted order) at the positives, 0 when
        ignored; with a group, for this rank's entries and positives."""
        total = self.logits.numel()
        dev = self.logits.device
        out = torch.empty(total, dtype=out_dtype, device=dev)
        step = min(self._step(), max(total, 1))
        a_buf, b_buf, t_buf = (torch.empty(step, dtype=torch.float64, device=dev) for _ in range(3))
        for s in range(0, total, step):
            e = min(s + step, total)
            c = index[s:e]
            g = torch.index_select(A, 0, c, out=a_buf[: e - s])
            g.addcmul_(t_buf[: e - s].copy_(self.logits[s:e]), torch.index_select(B, 0, c, out=b_buf[: e - s]))
            out[s:e].copy_(g)
        out[self.other_flat] = 0
        if self.local_sorted is not None:
            g_pos = g_pos[self.local_sorted]
        out[self.pos_sorted_flat] = g_pos.to(out_dtype)
        return out

    # ---------------------------------------------------------------- O(P) algebra
    def relation_sums(self, n: Tensor, m: Tensor) -> Tensor:
        """``Σ_j x_j h_ij`` for every sorted positive i from per-interval ``n = Σ x`` and ``m = Σ x t``."""
        rn, rm = _suffix(n), _suffix(m)
        lo, hi = self.pL + 1, self.pU + 1
        full = rn[hi]
        win_n = rn[lo] - rn[hi]
        win_m = rm[lo] - rm[hi]
        return full + (win_m - self.u * win_n) * self.inv2d + 0.5 * win_n

    def positive_relations(self, weights: list[Tensor]) -> list[Tensor]:
        """``Σ_{k≠i} x_k h_ik`` over the positives for each weight vector x (sorted order, (P,) float64)."""
        c = torch.searchsorted(self.knots, self.u, right=True)
        size = 2 * self.P + 1
        out = []
        for x in weights:
            n = torch.zeros(size, dtype=torch.float64, device=self.u.device).index_add_(0, c, x)
            m = torch.zeros(size, dtype=torch.float64, device=self.u.device).index_add_(0, c, x * self.u)
            out.append(self.relation_sums(n, m) - 0.5 * x)  # remove the self term h_ii = 1/2
        return out

    def negative_tables(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """Per-interval ``(A, B)`` with ``Σ_i w_i h_i(t) = A_c + t B_c`` (float64, (2P+1,))."""
        W, V = _exclusive(w), _exclusive(w * self.u)
        wa, wb = W[self.a_of], W[self.b_of]
        B = (wb - wa) * self.inv2d
        A = wa + 0.5 * (wb - wa) - (V[self.b_of] - V[self.a_of]) * self.inv2d
        return A, B

    def to_flat_order(self, x: Tensor) -> Tensor:
        """A per-positive tensor from ascending-score order to ``logits[targets == 1]`` order."""
        out = torch.empty_like(x)
        out[self.order] = x
        return out


def _check_inputs(logits: Tensor, targets: Tensor, loc_errors: Tensor | None, delta: float) -> None:
    if logits.dim() != 1:
        raise ValueError(f"ranking loss: logits must be 1-D (all anchor x class entries), got {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(f"ranking loss: targets shape {tuple(targets.shape)} != logits shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"ranking loss: logits must be floating point, got {logits.dtype}")
    if loc_errors is not None and loc_errors.dim() != 1:
        raise ValueError(f"aLRP loss: loc_errors must be 1-D (one E per positive), got {tuple(loc_errors.shape)}")
    if not delta > 0:
        raise ValueError(f"ranking loss: delta must be > 0, got {delta}")


def _loss_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class ALRPClassification(torch.autograd.Function):
    """``(cls_loss, rank, order)`` of aLRP; the backward pass delivers the error-driven gradient (docs/REPRODUCTION.md §1).

    ``rank`` (float64) follows ``logits[targets == 1]`` order; ``order`` is the stable ascending argsort of those
    logits. Neither is differentiable. ``weight`` multiplies the loss and the gradient (the RPN variant).
    With a :class:`RankGroup` the loss is that of all ranks' entries together, ``rank`` and ``order`` cover all
    ranks' positives (rank-major), and the gathered E values are left in ``group.errors``.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, loc_errors: Tensor, delta: float = 1.0, eps: float = 1e-5,
                weight: float = 1.0, use_grid: bool | None = None, group: RankGroup | None = None):
        with torch.autocast(logits.device.type, enabled=False):
            rk = Ranking(logits.detach(), targets, delta, use_grid, group, loc_errors.detach())
            ctx.in_dtype, ctx.numel = logits.dtype, logits.numel()
            loss_dtype = _loss_dtype(logits.dtype)
            if rk.P == 0:
                ctx.rk = None
                empty = torch.empty(0, dtype=torch.float64, device=logits.device)
                ctx.mark_non_differentiable(empty, rk.order)
                return logits.new_zeros((), dtype=loss_dtype), empty, rk.order
            if group is not None:
                e_sorted = group.errors[rk.order]
            elif loc_errors.numel() != rk.P:
                raise ValueError(f"aLRP loss: got {loc_errors.numel()} loc_errors for {rk.P} positives "
                                 "(one E per entry of logits[targets == 1], in that order)")
            else:
                e_sorted = loc_errors.detach().to(torch.float64)[rk.order]
            n, m, index = rk.negative_moments()
            fp = rk.relation_sums(n, m)
            sum_h, sum_he = rk.positive_relations([torch.ones_like(rk.u), e_sorted])
            rank = 1.0 + sum_h + fp
            gate = fp > eps
            numer = sum_he + fp
            scale = float(weight) / rk.P
            g_pos = torch.where(gate, -numer / rank, torch.zeros_like(rank)) * scale
            w = torch.where(gate, numer / (rank * fp.clamp_min(1e-300)), torch.zeros_like(rank)) * scale
            cls = (fp / rank).mean() * float(weight)
            if ctx.needs_input_grad[0]:
                ctx.rk, ctx.index, ctx.g_pos = rk, index, g_pos
                ctx.A, ctx.B = rk.negative_tables(w)
            else:
                ctx.rk = None
            rank_flat = rk.to_flat_order(rank)
            ctx.mark_non_differentiable(rank_flat, rk.order)
            return cls.to(loss_dtype), rank_flat, rk.order

    @staticmethod
    def backward(ctx, grad_cls: Tensor, _grad_rank, _grad_order):
        if ctx.rk is None:
            grad = torch.zeros(ctx.numel, dtype=ctx.in_dtype, device=grad_cls.device)
            return grad, None, None, None, None, None, None, None
        gout = grad_cls.to(torch.float64)
        grad = ctx.rk.negative_grad(ctx.index, ctx.A * gout, ctx.B * gout, ctx.g_pos * gout, ctx.in_dtype)
        return grad, None, None, None, None, None, None, None


def alrp_loc_loss(loc_errors: Tensor, rank: Tensor, order: Tensor) -> Tensor:
    """Localisation component (docs/REPRODUCTION.md §2.3): ``mean_q cumsum(E[d])[q] / rank[d[q]]``, d = ``order`` flipped.

    Differentiable w.r.t. ``loc_errors`` only. With zero positives it is ``loc_errors.sum()`` (0, in the graph).
    """
    out_dtype = _loss_dtype(loc_errors.dtype)
    if loc_errors.numel() == 0:
        return loc_errors.sum().to(out_dtype)
    with torch.autocast(loc_errors.device.type, enabled=False):
        d = order.flip(0)  # descending score, hard order (stable ties: the larger flat index first)
        cum = torch.cumsum(loc_errors.to(torch.float64)[d], 0)
        return (cum / rank.detach().to(torch.float64)[d]).mean().to(out_dtype)


def alrp_loss(logits: Tensor, targets: Tensor, loc_errors: Tensor, delta: float = 1.0, eps: float = 1e-5,
              weight: float = 1.0, group=None) -> tuple[Tensor, Tensor]:
    """aLRP Loss: ``(cls_loss, loc_loss)`` for one device's batch, or for all ranks' batches with ``group``.

    logits: (M,) every (anchor, class) entry; targets: (M,) 1 positive / 0 negative / -1 ignored;
    loc_errors: (P,) E_k = 1 - GIoU in ``logits[targets == 1]`` order. ``cls_loss`` backpropagates the
    error-driven ranking gradient to ``logits``; ``loc_loss`` is differentiable w.r.t. ``loc_errors`` only.
    ``weight`` scales ``cls_loss`` and its gradient (the RPN variant of the release).
    ``group``: a ``torch.distributed`` process group (every member calls this with its own inputs). Each rank then
    returns the loss of the concatenation of all ranks' inputs (rank order), and its gradients are the matching
    slices of that loss's gradient; None = one ranking per process.
    """
    _check_inputs(logits, targets, loc_errors, delta)
    rg = None if group is None else RankGroup(group)
    cls, rank, order = ALRPClassification.apply(logits, targets, loc_errors.detach(), delta, eps, weight, None, rg)
    if rg is None or rank.numel() == 0:
        return cls, alrp_loc_loss(loc_errors, rank, order)
    loc = alrp_loc_loss(rg.splice_errors(loc_errors), rank, order)
    return cls, loc.to(_loss_dtype(loc_errors.dtype))

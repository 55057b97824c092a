"""aLRP Loss: the release's reference cases, Theorem 2, ignored entries, zero positives, half inputs, the oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.losses import ALRPClassification, alrp_loc_loss, alrp_loss
from loss_oracle import alrp_oracle

# float32 tolerances of the reference README; the losses get atol 1e-8 because rounding the float64 inputs to
# float32 moves tiny FP values (hand_eps_gate_*: FP = 5e-6 from -0.99999) by ~1e-8.
TOL = {torch.float64: dict(loss=(1e-9, 1e-12), grad=(1e-9, 1e-12)),
       torch.float32: dict(loss=(1e-6, 1e-8), grad=(1e-5, 1e-8))}
TIE_LOC = (0.3337231969, 0.2744639376)  # hand_tie_pos_unequal_e: stable vs the other tie-break


def _run(logits: np.ndarray, targets: np.ndarray, e: np.ndarray, dtype: torch.dtype, use_grid: bool | None,
         weight: float = 1.0):
    lg = torch.tensor(logits, dtype=dtype, requires_grad=True)
    tg = torch.tensor(targets)
    err = torch.tensor(e, dtype=dtype, requires_grad=True)
    cls, rank, order = ALRPClassification.apply(lg, tg, err.detach(), 1.0, 1e-5, weight, use_grid)
    loc = alrp_loc_loss(err, rank, order)
    (cls + loc).backward()
    return cls.detach().double(), rank, order, lg.grad.double(), loc.detach().double(), err.grad.double()


def _close(name: str, case: str, got, want, rtol: float, atol: float) -> None:
    got = np.asarray(torch.as_tensor(got, dtype=torch.float64))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{case}: {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("use_grid", [True, False])
def test_reference_cases(reference_dir, dtype, use_grid):
    data = np.load(reference_dir / "alrp_cases.npz")
    names = [str(c) for c in data["case_names"]]
    assert len(names) == 22
    tol = TOL[dtype]
    for case in names:
        k = lambda key: data[f"{case}__{key}"]  # noqa: E731
        cls, rank, order, grad, loc, loc_grad = _run(k("logits"), k("targets"), k("e"), dtype, use_grid)
        _close("cls_loss", case, cls, k("cls_loss"), *tol["loss"])
        _close("rank", case, rank, k("rank"), *tol["loss"])
        _close("grad", case, grad, k("grad"), *tol["grad"])
        _close("loc_grad_e", case, loc_grad, k("loc_grad_e"), *tol["grad"])
        if case == "hand_tie_pos_unequal_e":
            assert min(abs(float(loc) - v) for v in TIE_LOC) < 1e-6, f"{case}: loc {float(loc)}"
        else:
            _close("loc", case, loc, k("loc"), *tol["loss"])
            assert torch.equal(order, torch.as_tensor(k("order"))), f"{case}: order"
        targets = k("targets")
        assert torch.all(grad[torch.as_tensor(targets == -1)] == 0), f"{case}: ignored entries got gradient"
        if case != "hand_tie_pos_unequal_e":
            _close("total_sb50", case, cls + 50 * loc, k("total_sb50"), *tol["loss"])


def _random_case(gen: torch.Generator, P: int, N: int, I: int, dist: str):
    """Flat logits/targets/e with positives scattered among negatives and ignored entries."""
    if dist == "init":
        pos, neg = torch.randn(P, generator=gen) * 0.5 - 4.6, torch.randn(N, generator=gen) * 0.5 - 4.6
    elif dist == "trained":  # positives high and spread, most negatives far below, a tail of hard negatives
        pos = torch.randn(P, generator=gen) * 2.0 + 1.0
        hard = N // 20
        neg = torch.cat([torch.randn(N - hard, generator=gen) - 8.0, torch.randn(hard, generator=gen) * 2.0])
    elif dist == "ties":  # quantised logits: many exact ties and knots sharing cells
        pos = torch.randint(-8, 8, (P,), generator=gen).double() / 4
        neg = torch.randint(-16, 8, (N,), generator=gen).double() / 4
    elif dist == "far":  # large logits: the cell numbers exceed float32's exact range, searchsorted is used
        pos, neg = torch.randn(P, generator=gen) + 1e5, torch.randn(N, generator=gen) + 1e5
    else:
        pos, neg = torch.randn(P, generator=gen), torch.randn(N, generator=gen)
    ign = torch.randn(I, generator=gen) * 3.0
    logits = torch.cat([pos.double(), neg.double(), ign.double()])
    targets = torch.cat([torch.ones(P), torch.zeros(N), -torch.ones(I)]).to(torch.int8)
    perm = torch.randperm(P + N + I, generator=gen)
    logits, targets = logits[perm], targets[perm]
    e = torch.rand(P, generator=gen, dtype=torch.float64) * 2
    return logits, targets, e


CASES = [(7, 300, 0, "normal"), (40, 2000, 100, "init"), (60, 3000, 200, "trained"), (25, 800, 50, "ties"),
         (1, 50, 5, "normal"), (120, 500, 0, "ties"), (15, 400, 10, "far")]


@pytest.mark.parametrize("P,N,I,dist", CASES)
def test_random_against_oracle(P, N, I, dist):
    gen = torch.Generator().manual_seed(P * 1000 + N)
    logits, targets, e = _random_case(gen, P, N, I, dist)
    ref = alrp_oracle(logits, targets, e, weight=0.2)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        for use_grid in (True, False):
            x = logits.to(dtype)
            want = ref if dtype == torch.float64 else alrp_oracle(x.double(), targets, e, weight=0.2)
            cls, rank, order, grad, loc, loc_grad = _run(x.numpy(), targets.numpy(), e.to(dtype).numpy(), dtype,
                                                         use_grid, weight=0.2)
            scale = want["grad"].abs().max()
            assert torch.allclose(cls, want["cls_loss"], rtol=rtol, atol=1e-12), (dtype, use_grid)
            assert torch.allclose(rank, want["rank"], rtol=rtol), (dtype, use_grid)
            assert (grad - want["grad"]).abs().max() <= rtol * scale, (dtype, use_grid)
            assert torch.allclose(loc, want["loc"], rtol=rtol), (dtype, use_grid)
            assert torch.allclose(loc_grad, want["loc_grad_e"], rtol=rtol), (dtype, use_grid)


@pytest.mark.parametrize("seed", range(4))
def test_theorem2_balance_on_random_inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    P = int(torch.randint(1, 200, (1,), generator=gen))
    logits, targets, e = _random_case(gen, P, 5000, 300, ["normal", "init", "trained", "ties"][seed])
    lg = logits.clone().requires_grad_(True)
    cls, _ = alrp_loss(lg, targets, e)
    cls.backward()
    g = lg.grad
    pos, neg = g[targets == 1].sum(), g[targets == 0].sum()
    assert pos <= 0
    assert abs(float(pos + neg)) <= 1e-12 * float(g.abs().sum()) + 1e-15
    assert torch.all(g[targets == -1] == 0)


def test_ignored_entries_get_exactly_zero_gradient_even_when_extreme():
    logits = torch.tensor([0.0, 50.0, 0.5, -30.0, 0.2, 1e6, -0.3], dtype=torch.float32, requires_grad=True)
    targets = torch.tensor([1, -1, 0, -1, 1, -1, 0])
    cls, loc = alrp_loss(logits, targets, torch.tensor([0.4, 0.9]))
    (cls + loc).backward()
    assert torch.all(logits.grad[targets == -1] == 0)
    assert torch.any(logits.grad[targets == 0] != 0)


def test_zero_positives_is_zero_connected_and_finite():
    logits = torch.randn(100, requires_grad=True)
    targets = torch.zeros(100, dtype=torch.long)
    targets[:10] = -1
    e = torch.zeros(0, requires_grad=True)
    cls, loc = alrp_loss(logits, targets, e)
    assert cls.requires_grad and loc.requires_grad
    assert float(cls.detach()) == 0 and float(loc.detach()) == 0
    (cls + loc).backward()
    assert torch.equal(logits.grad, torch.zeros(100))
    assert e.grad is not None and e.grad.numel() == 0


def test_rpn_weight_scales_loss_and_gradient_only():
    gen = torch.Generator().manual_seed(3)
    logits, targets, e = _random_case(gen, 10, 200, 0, "normal")
    base = _run(logits.numpy(), targets.numpy(), e.numpy(), torch.float64, True)
    scaled = _run(logits.numpy(), targets.numpy(), e.numpy(), torch.float64, True, weight=0.2)
    assert torch.allclose(scaled[0], 0.2 * base[0], rtol=1e-12)
    assert torch.allclose(scaled[3], 0.2 * base[3], rtol=1e-12, atol=1e-300)
    assert torch.equal(scaled[1], base[1]) and torch.allclose(scaled[4], base[4], rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32_and_return_input_dtype(dtype):
    gen = torch.Generator().manual_seed(5)
    logits, targets, e = _random_case(gen, 30, 1000, 20, "init")
    x = logits.to(dtype)
    lg = x.clone().requires_grad_(True)
    cls, loc = alrp_loss(lg, targets, e.float())
    cls.backward()
    assert lg.grad.dtype == dtype and cls.dtype == torch.float32 and loc.dtype == torch.float32
    ref = alrp_oracle(x.double(), targets, e)  # the same (rounded) logits in float64
    assert torch.allclose(cls.double(), ref["cls_loss"], rtol=1e-5)
    ulp = 1e-3 if dtype == torch.float16 else 8e-3
    assert (lg.grad.double() - ref["grad"]).abs().max() <= ulp * ref["grad"].abs().max()


def test_autocast_bfloat16_on_cpu():
    gen = torch.Generator().manual_seed(6)
    layer = torch.nn.Linear(8, 4)
    feats = torch.randn(250, 8, generator=gen)
    targets = torch.zeros(1000, dtype=torch.long)
    targets[torch.randperm(1000, generator=gen)[:12]] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(feats).reshape(-1)  # (1000,) bfloat16
        assert logits.dtype == torch.bfloat16
        cls, loc = alrp_loss(logits, targets, torch.rand(12, generator=gen))
    cls.backward()
    assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="loc_errors"):
        alrp_loss(torch.zeros(5), torch.tensor([1, 0, 0, 1, 0]), torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        alrp_loss(torch.zeros(5), torch.zeros(4), torch.zeros(0))
    with pytest.raises(ValueError, match="1-D"):
        alrp_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(0))

"""AP Loss (interpolated, docs/REPRODUCTION.md §3.1): reference cases, balance, ignored entries, zero positives, the oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from detector.losses import APLossFunction, ap_loss
from loss_oracle import ap_oracle
from test_alrp_loss import CASES, _random_case

TOL = {torch.float64: dict(loss=(1e-9, 1e-12), grad=(1e-9, 1e-12)),
       torch.float32: dict(loss=(1e-6, 1e-8), grad=(1e-5, 1e-8))}


def _run(logits, targets, dtype: torch.dtype, use_grid: bool | None):
    lg = torch.as_tensor(logits).detach().to(dtype).clone().requires_grad_(True)
    loss = APLossFunction.apply(lg, torch.as_tensor(targets), 1.0, use_grid)
    loss.backward()
    return loss.detach().double(), lg.grad.double()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("use_grid", [True, False])
def test_reference_cases(reference_dir, dtype, use_grid):
    data = np.load(reference_dir / "alrp_cases.npz")
    for case in (str(c) for c in data["case_names"]):
        targets = data[f"{case}__targets"]
        loss, grad = _run(data[f"{case}__logits"], targets, dtype, use_grid)
        np.testing.assert_allclose(loss.numpy(), data[f"{case}__ap_loss"], *TOL[dtype]["loss"], err_msg=case)
        np.testing.assert_allclose(grad.numpy(), data[f"{case}__ap_grad"], *TOL[dtype]["grad"], err_msg=case)
        assert torch.all(grad[torch.as_tensor(targets == -1)] == 0), case


def test_figure1_value_is_036(reference_dir):
    data = np.load(reference_dir / "alrp_cases.npz")
    loss, _ = _run(data["fig1_R1_logits_x10__logits"], data["fig1_R1_logits_x10__targets"], torch.float64, None)
    assert abs(float(loss) - (1 - np.mean([1, 2 / 3, 3 / 6, 4 / 10]))) < 1e-12  # paper Fig. 1: 0.36


@pytest.mark.parametrize("P,N,I,dist", CASES)
def test_random_against_oracle(P, N, I, dist):
    gen = torch.Generator().manual_seed(P + N)
    logits, targets, _ = _random_case(gen, P, N, I, dist)
    for dtype, rtol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        want = ap_oracle(logits.to(dtype).double(), targets)
        for use_grid in (True, False):
            loss, grad = _run(logits, targets, dtype, use_grid)
            assert torch.allclose(loss, want["loss"], rtol=rtol, atol=1e-12), (dtype, use_grid)
            assert (grad - want["grad"]).abs().max() <= rtol * want["grad"].abs().max(), (dtype, use_grid)


@pytest.mark.parametrize("seed", range(3))
def test_balance_and_ignored(seed):
    gen = torch.Generator().manual_seed(10 + seed)
    logits, targets, _ = _random_case(gen, 50, 4000, 200, ["init", "trained", "ties"][seed])
    lg = logits.clone().requires_grad_(True)
    ap_loss(lg, targets).backward()
    g = lg.grad
    assert abs(float(g[targets == 1].sum() + g[targets == 0].sum())) <= 1e-12 * float(g.abs().sum())
    assert torch.all(g[targets == -1] == 0)
    assert torch.all(g[targets == 1] <= 0)
    assert torch.all(g[targets == 0] >= -1e-15 * g.abs().max())  # >= 0 up to round-off at the knots


def test_zero_positives():
    lg = torch.randn(50, requires_grad=True)
    loss = ap_loss(lg, torch.zeros(50))
    assert loss.requires_grad and float(loss.detach()) == 0
    loss.backward()
    assert torch.equal(lg.grad, torch.zeros(50))

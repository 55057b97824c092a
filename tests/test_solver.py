"""Warmup + step schedule against hand-computed learning rates; lr scaling rule."""
from __future__ import annotations

import logging

import pytest
import torch

from detector.config import SolverCfg
from detector.errors import ConfigError
from detector.solver import (build_optimizer, build_scheduler, effective_lr, resolve_schedule,
                             schedule_summary)


def lrs_at(cfg: SolverCfg, iters_per_epoch: int, wanted: list[int]) -> dict[int, float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg, cfg.base_lr)
    sched = build_scheduler(opt, cfg, iters_per_epoch)
    out = {}
    for it in range(max(wanted) + 1):
        if it in wanted:
            out[it] = opt.param_groups[0]["lr"]  # the lr used by step `it`
        opt.step()
        sched.step()
    return out


def test_paper_schedule_hand_values():
    cfg = SolverCfg(base_lr=0.008, warmup_iters=500, warmup_ratio=0.001, lr_steps=[75, 95], gamma=0.1)
    got = lrs_at(cfg, 100, [0, 250, 499, 500, 7499, 7500, 9499, 9500])
    expected = {
        0: 0.008 * 0.001,                      # warmup starts at ratio * lr
        250: 0.008 * (1 - 0.5 * 0.999),        # halfway: 0.004004
        499: 0.008 * (1 - (1 / 500) * 0.999),  # 0.007984016
        500: 0.008,
        7499: 0.008,                           # last iteration of epoch 75 (1-based)
        7500: 0.0008,                          # first iteration of epoch 76: x0.1
        9499: 0.0008,
        9500: 0.00008,                         # after the second step: x0.01
    }
    for it, lr in expected.items():
        assert got[it] == pytest.approx(lr, rel=1e-12), it


def test_warmup_overlapping_a_step():
    # warmup longer than an epoch with a step at epoch 1: both factors multiply
    cfg = SolverCfg(base_lr=1.0, warmup_iters=20, warmup_ratio=0.0, lr_steps=[1], gamma=0.5)
    got = lrs_at(cfg, 10, [5, 15, 20])
    assert got[5] == pytest.approx(0.25)        # 5/20 warmup, epoch 0
    assert got[15] == pytest.approx(0.375)      # 15/20 warmup x 0.5 (epoch 1)
    assert got[20] == pytest.approx(0.5)


def test_optimizer_is_paper_sgd():
    cfg = SolverCfg()
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].weight.requires_grad_(False)
    opt = build_optimizer(model, cfg, 0.008)
    g = opt.param_groups[0]
    assert g["momentum"] == 0.9 and g["weight_decay"] == 1e-4
    assert sum(p.numel() for p in g["params"]) == 2 + 4 + 2  # frozen weight excluded


def test_lr_scaling_only_when_asked(caplog):
    cfg = SolverCfg(base_lr=0.008, reference_batch=32)
    with caplog.at_level(logging.WARNING):
        assert effective_lr(cfg, 16) == 0.008
    assert "auto_scale_lr" in caplog.text
    cfg.auto_scale_lr = True
    assert effective_lr(cfg, 16) == pytest.approx(0.004)
    assert effective_lr(cfg, 32) == 0.008


def test_resolve_schedule_hand_values():
    # 10 iterations/epoch, 2.5 epochs' worth of iterations: the third epoch is partial
    s = resolve_schedule(SolverCfg(epochs=None, max_iters=25, lr_steps=[1, 2], warmup_iters=None,
                                   warmup_epochs=0.25), 10)
    assert (s.total_iters, s.epochs, s.step_iters, s.warmup_iters) == (25, 3, [10, 20], 3)  # 2.5 -> 3 (half up)
    assert s.warmup_share == pytest.approx(3 / 25)
    s = resolve_schedule(SolverCfg(epochs=4, lr_steps=None, lr_step_iters=[30, 7], warmup_iters=0), 9)
    assert (s.total_iters, s.epochs, s.step_iters, s.warmup_iters) == (36, 4, [7, 30], 0)  # steps sorted
    empty = resolve_schedule(SolverCfg(epochs=None, max_iters=0), 5)  # a zero-length run (weights check)
    assert (empty.total_iters, empty.epochs, empty.warmup_share) == (0, 0, 1.0)


@pytest.mark.parametrize("kwargs, words", [
    (dict(max_iters=10), ["solver.epochs", "solver.max_iters", "not both"]),  # epochs=100 is still set
    (dict(epochs=None), ["solver.epochs", "solver.max_iters", "both are null"]),
    (dict(warmup_iters=None), ["solver.warmup_iters", "solver.warmup_epochs"]),
    (dict(lr_step_iters=[5]), ["solver.lr_steps", "solver.lr_step_iters", "not both"]),
    (dict(epochs=-1), ["solver.epochs", ">= 0"]),
    (dict(warmup_iters=None, warmup_epochs=-0.5), ["solver.warmup_epochs"]),
    (dict(lr_steps=[3, -1]), ["solver.lr_steps", "negative"]),
])
def test_resolve_schedule_refuses_bad_pairs(kwargs, words):
    with pytest.raises(ConfigError) as e:
        resolve_schedule(SolverCfg(**kwargs), 10)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_schedule_summary_line():
    s = resolve_schedule(SolverCfg(epochs=24, lr_steps=[19, 22], warmup_iters=100), 25)
    line = schedule_summary(s, 25)
    assert "\n" not in line
    for part in ("25 iterations/epoch", "600 iterations in all = 24 epochs (solver.epochs)",
                 "warmup 100 iterations = 17% of training (solver.warmup_iters)",
                 "lr steps at iterations 475, 550 (solver.lr_steps)", "self-balance period 25 iterations (1 epoch)"):
        assert part in line, part
    assert "no self-balance" in schedule_summary(s, None)

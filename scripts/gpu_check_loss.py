#!/usr/bin/env python
"""CUDA vs CPU agreement of the aLRP and AP losses (values and gradients), fp32 and fp16/bf16 logits.

    python -m scripts.gpu_check_loss [--cases CASES.npz]

Uses the given reference cases of the authors' code (an npz of logits/targets/e per case, the layout the test
suite's reference cases have) when a file is given, else random cases of the same kinds
(fresh-head and trained-like logits, ignored entries). The CPU float64 result is the yardstick: it is the one
the test suite checks against the reference. Prints one row per (case kind, dtype) with the largest relative
differences. Exits 1 if a float32 difference exceeds 1e-4 (half precision is reported, not judged).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from detector.losses import alrp_loss, ap_loss


def _cases(path: Path | None) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    if path is not None and path.is_file():
        d = np.load(path)
        return [(str(c), d[f"{c}__logits"], d[f"{c}__targets"], d[f"{c}__e"]) for c in d["case_names"]]
    rng = np.random.default_rng(0)
    out = []
    for name, mu, sd, p, n, ign in (("init_P50_N1e4", -4.6, 0.5, 50, 10_000, 0), ("normal_P200_N1e5", 0, 1, 200, 100_000, 0),
                                    ("ign_P100_N1e5", -2, 1.5, 100, 100_000, 3000)):
        logits = rng.normal(mu, sd, p + n + ign)
        targets = np.concatenate([np.ones(p), np.zeros(n), -np.ones(ign)]).astype(np.int8)
        perm = rng.permutation(len(logits))
        out.append((name, logits[perm], targets[perm], rng.uniform(0, 1, p)))
    return out


def _run(logits: np.ndarray, targets: np.ndarray, e: np.ndarray, device: str, dtype: torch.dtype):
    lg = torch.tensor(logits, dtype=dtype, device=device, requires_grad=True)
    tg = torch.tensor(targets, dtype=torch.int8, device=device)
    ee = torch.tensor(e, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device,
                      requires_grad=True)
    cls, loc = alrp_loss(lg, tg, ee)
    (cls + loc).backward()
    lg2 = torch.tensor(logits, dtype=dtype, device=device, requires_grad=True)
    ap = ap_loss(lg2, tg)
    ap.backward()
    f = lambda t: t.detach().double().cpu()  # noqa: E731
    return {"cls": f(cls), "loc": f(loc), "grad": f(lg.grad), "grad_e": f(ee.grad), "ap": f(ap), "ap_grad": f(lg2.grad)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().clamp_min(1e-12)
    return float((a - b).abs().max() / scale)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", type=Path, default=None, help="npz of reference cases (default: random cases)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check_loss: no CUDA device; nothing to check")
        return 0
    cases = _cases(args.cases)
    print(f"{len(cases)} cases ({'reference' if args.cases and args.cases.is_file() else 'random'}); max relative difference "
          f"vs CPU float64")
    print(f"{'dtype':9} {'cls':>9} {'loc':>9} {'grad':>9} {'grad_e':>9} {'ap':>9} {'ap_grad':>9}")
    worst_fp32 = 0.0
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        worst = dict.fromkeys(("cls", "loc", "grad", "grad_e", "ap", "ap_grad"), 0.0)
        for _, logits, targets, e in cases:
            ref = _run(logits, targets, e, "cpu", torch.float64)
            if dtype != torch.float32:  # half-precision logits: compare with CPU on the same rounded logits
                logits = torch.tensor(logits).to(dtype).double().numpy()
                ref = _run(logits, targets, e, "cpu", torch.float64)
            got = _run(logits, targets, e, "cuda", dtype)
            for k in worst:
                worst[k] = max(worst[k], _rel(got[k], ref[k]))
        if dtype == torch.float32:
            worst_fp32 = max(worst.values())
        print(f"{str(dtype).split('.')[1]:9} " + " ".join(f"{worst[k]:9.1e}" for k in worst))
    ok = worst_fp32 <= 1e-4
    print(f"float32 agreement {'OK' if ok else 'FAILED'} (max {worst_fp32:.1e}, limit 1e-4)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

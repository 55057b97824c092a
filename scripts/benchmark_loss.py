"""Time forward+backward of the loop-free aLRP Loss against the per-positive loop oracle (tests/loss_oracle.py).

For each (P, N), logit distribution and intra-op thread count it prints the best-of-k wall time of both, the
speed-up, and the largest relative difference of the loss, of the logits' gradient (max |diff| / max |oracle
grad|) and of the localisation loss. Then the peak extra memory of one call of each: the growth of the kernel's
resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) over the pre-call RSS, measured in a
fresh subprocess started with MALLOC_MMAP_THRESHOLD_=65536 so that every buffer of 64 KiB or more is its own
mapping and freed memory leaves the RSS (tracemalloc does not see torch's allocator). It includes the returned
gradient (1 float32 word per logit). Everything runs in float32 on the CPU.

    python scripts/benchmark_loss.py                 # (100, 1e6), (600, 7e6), (2000, 7e6); minutes on 2 cores
    python scripts/benchmark_loss.py --quick         # small sizes, seconds
    python scripts/benchmark_loss.py --threads 1,2   # intra-op thread counts to compare
"""
from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from detector.losses.alrp import ALRPClassification, alrp_loc_loss  # noqa: E402
from loss_oracle import alrp_oracle  # noqa: E402

def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


class PeakRSS:
    """Context manager: peak RSS growth (bytes) over the entry level while the block runs.

    Resets the kernel's high-water mark (``echo 5 > /proc/self/clear_refs``) and reads ``VmHWM`` afterwards, so
    no sampling is needed."""

    def __enter__(self):
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.base = _status("VmRSS")
        return self

    def __exit__(self, *exc):
        self.extra = _status("VmHWM") - self.base


def make_inputs(P: int, N: int, dist: str, seed: int = 0):
    """Flat float32 logits with P positives scattered among N negatives, int8 targets, E ~ U(0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    if dist == "fresh":  # a freshly initialised head: prior 0.01 -> N(-4.6, 0.5) for everything
        pos = torch.randn(P, generator=gen) * 0.5 - 4.6
        neg = torch.randn(N, generator=gen) * 0.5 - 4.6
    else:  # trained-like: confident positives, most negatives far below, a 5% tail of hard negatives
        pos = torch.randn(P, generator=gen) * 2.0 + 1.0
        hard = N // 20
        neg = torch.cat([torch.randn(N - hard, generator=gen) - 8.0, torch.randn(hard, generator=gen) * 2.0 - 1.0])
    logits = torch.cat([pos, neg])
    targets = torch.cat([torch.ones(P, dtype=torch.int8), torch.zeros(N, dtype=torch.int8)])
    perm = torch.randperm(P + N, generator=gen)
    return logits[perm].contiguous(), targets[perm].contiguous(), torch.rand(P, generator=gen)


def run_fast(logits, targets, e, use_grid: bool | None = None):
    lg = logits.detach().requires_grad_(True)
    err = e.clone().requires_grad_(True)
    cls, rank, order = ALRPClassification.apply(lg, targets, err.detach(), 1.0, 1e-5, 1.0, use_grid)
    loc = alrp_loc_loss(err, rank, order)
    (cls + loc).backward()
    return cls.detach(), lg.grad, loc.detach()


def run_oracle(logits, targets, e):
    out = alrp_oracle(logits, targets, e)
    return out["cls_loss"], out["grad"], out["loc"]


def best_time(fn, repeats: int, warmup: bool = True):
    """Best wall time over ``repeats`` calls (after an optional unmeasured warm-up call) and the last result."""
    if warmup:
        fn()
    best, result = float("inf"), None
    for _ in range(repeats):
        result = None
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def peak_memory(which: str, dist: str, P: int, N: int, threads: int) -> int:
    """Peak RSS growth (bytes) of one call (after a warm-up call), measured in a fresh subprocess."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, __file__, "--memory-child", f"{which},{dist},{P},{N},{threads}"]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return int(out.strip().splitlines()[-1])


def _memory_child(spec: str) -> None:
    which, dist, P, N, threads = spec.split(",")
    torch.set_num_threads(int(threads))
    logits, targets, e = make_inputs(int(P), int(N), dist)
    fn = (lambda: run_fast(logits, targets, e)) if which == "alrp" else (lambda: run_oracle(logits, targets, e))
    fn()
    with PeakRSS() as m:
        fn()
    print(m.extra)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--repeats", type=int, default=5, help="timings of alrp_loss per row (the best is kept)")
    ap.add_argument("--oracle-repeats", type=int, default=1, help="timings of the oracle per row")
    ap.add_argument("--dists", default="fresh,trained", help="comma list of fresh,trained")
    ap.add_argument("--threads", default=str(torch.get_num_threads()), help="comma list of intra-op thread counts")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory pass")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        return _memory_child(args.memory_child)
    sizes = [(50, 100_000), (200, 500_000)] if args.quick else [(100, 1_000_000), (600, 7_000_000), (2000, 7_000_000)]
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, float32 on CPU, time = best of "
          f"{args.repeats} (alrp) / {args.oracle_repeats} (oracle)")
    head = (f"{'dist':7} {'P':>5} {'N':>9} {'thr':>3} | {'oracle s':>9} {'alrp s':>8} {'speed-up':>8} "
            f"{'search s':>8} | {'rel d loss':>10} {'rel d grad':>10} {'rel d loc':>10}")
    print(head)
    print("-" * len(head))
    for dist in args.dists.split(","):
        for P, N in sizes:
            logits, targets, e = make_inputs(P, N, dist)
            for th in threads:
                torch.set_num_threads(th)
                t_fast, (cls, grad, loc) = best_time(lambda: run_fast(logits, targets, e), args.repeats)
                t_search, _ = best_time(lambda: run_fast(logits, targets, e, use_grid=False),
                                        max(1, args.repeats // 2))
                t_or, (cls_o, grad_o, loc_o) = best_time(lambda: run_oracle(logits, targets, e), args.oracle_repeats,
                                                         warmup=False)
                d_loss = abs(float(cls) - float(cls_o)) / max(abs(float(cls_o)), 1e-30)
                d_grad = float((grad.double() - grad_o.double()).abs().max() / grad_o.double().abs().max())
                d_loc = abs(float(loc) - float(loc_o)) / max(abs(float(loc_o)), 1e-30)
                print(f"{dist:7} {P:5d} {N:9d} {th:3d} | {t_or:9.3f} {t_fast:8.3f} {t_or / t_fast:7.1f}x "
                      f"{t_search:8.3f} | {d_loss:10.1e} {d_grad:10.1e} {d_loc:10.1e}", flush=True)
                del grad, grad_o
            rows.append((dist, P, N))
            del logits, targets, e
    if not args.no_memory:
        print(f"\npeak extra memory of one call ({threads[0]} thread(s); w = float32 words per logit)")
        print(f"{'dist':7} {'P':>5} {'N':>9} | {'oracle':>15} {'alrp':>15}")
        for dist, P, N in rows:
            m_or = peak_memory("oracle", dist, P, N, threads[0])
            m_fast = peak_memory("alrp", dist, P, N, threads[0])
            words = lambda b: f"{b / 2**20:6.0f} MB {b / 4 / (P + N):4.1f}w"  # noqa: E731
            print(f"{dist:7} {P:5d} {N:9d} | {words(m_or):>15} {words(m_fast):>15}", flush=True)
    print("\nalrp keeps one int32 interval index per logit and returns the float32 gradient: 2 words per logit, plus "
          "O(P + #ignored) and 32767-entry chunk buffers. 'search s' = torch.searchsorted instead of the grid.")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Training curves (loss and validation AP over time) of one or more runs, and a markdown table of their last
evaluation, read from each run's metrics.jsonl.

    python -m scripts.plot_curves checkpoints/bccd_alrp_r18 checkpoints/bccd_focal_r18 --out docs/bccd_curves.png
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} not found: is {run} a training output directory?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m scripts.plot_curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="training output directories")
    p.add_argument("--out", type=Path, default=Path("curves.png"), help="PNG to write")
    args = p.parse_args()

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    print("| run | AP | AP50 | AP75 | oLRP | ρ | iterations | wall time |")
    print("|---|---|---|---|---|---|---|---|")
    for i, run in enumerate(args.runs):
        color = f"C{i}"  # one colour per run: solid = classification / AP50, dashed = box / AP
        rows = read_rows(run)
        train = [r for r in rows if r["type"] == "train"]
        evals = [r for r in rows if r["type"] == "eval"]
        if not train:
            raise SystemExit(f"{run}: no training rows in metrics.jsonl")
        t0 = train[0]["time"]
        minutes = [(r["time"] - t0) / 60 for r in train]
        ax_loss.plot(minutes, [r["loss_cls"] for r in train], color=color, label=f"{run.name} cls")
        sb = "sb_weight" in train[0]  # aLRP: show the localisation component without the self-balance weight
        ax_loss.plot(minutes, [r["loss_box"] / r.get("sb_weight", 1.0) for r in train], "--", color=color,
                     label=f"{run.name} box" + (" / SB weight" if sb else ""))
        if evals:
            eval_minutes = [(r["time"] - t0) / 60 for r in evals]
            ax_ap.plot(eval_minutes, [r["AP50"] for r in evals], "o-", color=color, label=f"{run.name} AP50")
            ax_ap.plot(eval_minutes, [r["AP"] for r in evals], "s--", color=color, label=f"{run.name} AP")
            last = evals[-1]
            fmt = lambda k: "n/a" if last.get(k) is None else f"{last[k]:.3f}"  # noqa: E731
            wall = (last["time"] - t0) / 60
            print(f"| {run.name} | {fmt('AP')} | {fmt('AP50')} | {fmt('AP75')} | {fmt('oLRP')} | {fmt('rho')} | "
                  f"{last['global_iter']} | {wall:.1f} min |")
    ax_loss.set(xlabel="minutes", ylabel="loss", title="training losses")
    ax_ap.set(xlabel="minutes", ylabel="COCO AP / AP50 (val)", title="validation")
    for ax in (ax_loss, ax_ap):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"curves written to {args.out}")


if __name__ == "__main__":
    main()

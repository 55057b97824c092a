#!/usr/bin/env python
"""Train a detector from a YAML config (single process, or DDP under torchrun).

    python train.py                                   # the built-in default: small aLRP detector on 'shapes'
    torchrun --nproc_per_node=4 train.py --config configs/alrp_retinanet_r50_atss_500.yaml --resume

Exit codes: 0 finished, 75 stopped by SIGTERM/SIGINT after saving last.pth (resume with --resume), 2 config or
command line, 3 data, 4 checkpoint, 5 disk/permission, 6 non-finite loss, 1 crash (see log.txt).
"""
from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from detector import distributed as du
from detector.cli import debug_enabled, run_cli
from detector.config import load_config
from detector.errors import EXIT_OK, EXIT_PREEMPTED, ConfigError
from detector.checkpoint import load_model_weights, unwrap
from detector.logger import setup_logging
from detector.runs import log_environment, prepare_output_dir, split_resume
from detector.trainer import Trainer

log = logging.getLogger("train")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: configs/default.yaml)")
    p.add_argument("--output-dir", default=None, help="run directory (default: checkpoints/<config name>/)")
    p.add_argument("--resume", nargs="?", metavar="CKPT", help="continue from CKPT, or from OUTPUT_DIR/last.pth "
                   "when given no path (a fresh start, logged, if there is none yet); never takes a key=value")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run directory that holds a run (old files moved to OUTPUT_DIR/previous_*/)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate (needs --resume or model.weights=PATH)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides runtime.seed)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="overrides runtime.device")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (autocast + GradScaler)")
    p.add_argument("--debug", action="store_true", help="print tracebacks on the terminal too (also LOG_LEVEL=DEBUG)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. solver.base_lr=0.004")
    argv, resume = split_resume(argv)
    args = p.parse_intermixed_args(argv)
    args.resume = resume
    args.cfg = load_config(args.config, list(args.overrides) + [f"runtime.seed={args.seed}"] * (args.seed is not None)
                           + [f"runtime.device={args.device}"] * bool(args.device) + ["runtime.amp=true"] * args.amp)
    if args.eval_only and not (args.resume or args.cfg.model.weights):
        raise ConfigError("--eval-only needs weights: pass --resume [CKPT] or model.weights=PATH")
    return args


def run(argv: list[str] | None = None):
    """Train (or evaluate) as the command line says; returns (exit code, the unwrapped model, the train state)."""
    args = parse_args(argv)
    cfg = args.cfg
    du.init_distributed(cfg.runtime.device)
    try:
        device = du.resolve_device(cfg.runtime.device, int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise ConfigError(str(e)) from e
    out_dir = Path(args.output_dir or Path("checkpoints") / cfg.name)
    resume_from = prepare_output_dir(out_dir, args.resume, args.overwrite, args.eval_only)  # agreed by all ranks
    setup_logging(out_dir, du.is_main_process(), debug=debug_enabled(argv))
    if cfg.runtime.amp and device.type != "cuda":
        log.warning("runtime.amp is ignored on CPU")
    amp = cfg.runtime.amp and device.type == "cuda"
    log_environment(cfg, args.config, out_dir, device)
    try:
        trainer = Trainer(cfg, out_dir, device=device, amp=amp, resume_from=None if args.eval_only else resume_from,
                          eval_only=args.eval_only)
        if args.eval_only:
            if resume_from is not None:
                load_model_weights(trainer.model, resume_from)
            m = trainer.evaluate()
            log.info("AP %.4f  AP50 %.4f  oLRP %.4f", m["AP"], m["AP50"], m["oLRP"])
            return EXIT_OK, unwrap(trainer.model), trainer.state
        status = trainer.train()
        m = trainer.last_metrics
        if status == "finished" and m is not None and du.is_main_process():
            print(f"COCO AP {m['AP']:.4f}  AP50 {m['AP50']:.4f}  AP75 {m['AP75']:.4f}  oLRP {m['oLRP']:.4f}  "
                  f"(validation, after {trainer.state.global_iter} iterations)")
        if status == "preempted":
            log.warning("stopped at iteration %d, last.pth saved: exit code %d (resumable; run again with --resume)",
                        trainer.state.global_iter, EXIT_PREEMPTED)
        return (EXIT_OK if status == "finished" else EXIT_PREEMPTED), unwrap(trainer.model), trainer.state
    finally:
        du.cleanup()


if __name__ == "__main__":
    run_cli(lambda: run()[0])

#!/usr/bin/env python
"""Train a detector from a YAML config (single process, or DDP under torchrun).

    python train.py                                   # the built-in default: small aLRP detector on 'shapes'
    python train.py --config configs/alrp_retinanet_r50_atss_500.yaml data.root=/data/coco
    torchrun --nproc_per_node=4 train.py --config CONFIG          # 4 GPUs, one node
    python train.py --config CONFIG --resume                       # continue from OUTPUT_DIR/last.pth
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

import torch

from detector import distributed as du
from detector.checkpoint import atomic_save, load_model_weights, make_checkpoint, resume, unwrap
from detector.config import Config, ConfigError, dump_config, load_config
from detector.fuse import fuse_for_inference
from detector.engine import NonFiniteLossError, TrainState, run_inference, train_one_epoch
from detector.logger import MetricsWriter, setup_logging
from detector.solver import build_optimizer, build_scheduler, effective_lr

log = logging.getLogger("train")
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "default.yaml"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="YAML config file (default: configs/default.yaml, the built-in shapes dataset)")
    p.add_argument("--output-dir", default=None,
                   help="where checkpoints, logs, metrics and the resolved config go (default: checkpoints/<name>/)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="resume everything (weights, optimiser, schedule, RNG, data position) from CKPT, "
                        "or from OUTPUT_DIR/last.pth when no path is given")
    p.add_argument("--eval-only", action="store_true",
                   help="only evaluate on the validation split (use with --resume or model.weights=PATH)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides runtime.seed)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="device (overrides runtime.device; default: cuda when available)")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (autocast + GradScaler)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. solver.base_lr=0.004 data.batch_size=4 (values parsed as YAML)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"runtime.seed={args.seed}")
    if args.device is not None:
        overrides.append(f"runtime.device={args.device}")
    if args.amp:
        overrides.append("runtime.amp=true")
    return load_config(args.config, overrides)


def evaluate_model(model, cfg: Config, val_ds, device, amp: bool) -> dict | None:
    """Detections on the validation split and their metrics (rank 0; None elsewhere)."""
    from data.build import build_test_loader
    from detector.metrics import evaluate_detections

    loader = build_test_loader(cfg.data, val_ds, du.get_world_size(), du.get_rank(),
                               limit=cfg.runtime.eval_max_images)
    results = run_inference(fuse_for_inference(unwrap(model)), loader, device, val_ds.label_to_cat_id, amp=amp)
    if not du.is_main_process():
        return None
    n = cfg.runtime.eval_max_images
    img_ids = list(val_ds.ids)[:n] if n is not None else None
    return evaluate_detections(val_ds.coco, results, lrp="grid", class_names=val_ds.class_names, img_ids=img_ids)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code."""
    code, _model, _state = run(argv)
    return code


def run(argv: list[str] | None = None) -> tuple[int, torch.nn.Module, TrainState]:
    """Train as the command line says; returns (exit code, the unwrapped model, the final train state)."""
    args = parse_args(argv)
    cfg = build_config(args)
    rank, world_size, local_rank = du.init_distributed(cfg.runtime.device)
    try:
        device = du.resolve_device(cfg.runtime.device, local_rank)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    out_dir = Path(args.output_dir or Path("checkpoints") / cfg.name)
    is_main = du.is_main_process()
    setup_logging(out_dir, is_main)
    amp = cfg.runtime.amp and device.type == "cuda"
    if cfg.runtime.amp and not amp:
        log.warning("runtime.amp is ignored on CPU")
    if is_main:
        dump_config(cfg, out_dir / "config.yaml")
    log.info("config %s -> %s (world size %d, device %s)", args.config, out_dir, world_size, device)

    from data.build import build_dataset, build_train_loader
    from detector.build import build_model

    torch.manual_seed(cfg.runtime.seed)
    if cfg.runtime.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = build_model(cfg).to(device)
    if cfg.runtime.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if cfg.model.weights:
        load_model_weights(model, cfg.model.weights)
    val_ds = build_dataset(cfg.data, "val") if (cfg.runtime.eval_interval > 0 or args.eval_only) else None

    if args.eval_only:
        if args.resume:
            load_model_weights(model, out_dir / "last.pth" if args.resume == "auto" else args.resume)
        metrics = evaluate_model(model, cfg, val_ds, device, amp)
        if is_main:
            log.info("AP %.4f  AP50 %.4f  oLRP %.4f", metrics["AP"], metrics["AP50"], metrics["oLRP"])
        du.cleanup()
        return 0, model, TrainState()

    train_ds = build_dataset(cfg.data, "train")
    loader, sampler = build_train_loader(cfg.data, train_ds, cfg.runtime.seed, world_size, rank)
    iters_per_epoch = len(loader)
    crit = getattr(model, "criterion", None)
    if crit is not None and hasattr(crit, "set_period"):
        crit.set_period(iters_per_epoch)
    total_batch = world_size * cfg.data.batch_size
    optimizer = build_optimizer(model, cfg.solver, effective_lr(cfg.solver, total_batch))
    scheduler = build_scheduler(optimizer, cfg.solver, iters_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    state = TrainState()
    if args.resume:
        ckpt = resume(out_dir / "last.pth" if args.resume == "auto" else args.resume, model, optimizer, scheduler,
                      scaler, cfg)
        state = TrainState(epoch=ckpt["epoch"], iter_in_epoch=ckpt["iter_in_epoch"],
                           global_iter=ckpt["global_iter"], best_ap=ckpt["best_ap"])
    if world_size > 1:
        # broadcast_buffers=False: the self-balance running sums are per-rank buffers, all-reduced at each update
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[local_rank] if device.type == "cuda" else None, broadcast_buffers=False)

    writer = MetricsWriter(out_dir, enabled=is_main)

    sbs = [m for m in unwrap(model).modules() if hasattr(m, "consolidate")]

    last_saved = None  # (name, global_iter) of the latest checkpoint written

    def save(name: str) -> None:
        """Called on every rank at the same points (the self-balance sums are gathered collectively)."""
        nonlocal last_saved
        last_saved = (name, state.global_iter)
        for m in sbs:
            m.consolidate()
        if is_main:
            atomic_save(make_checkpoint(model, optimizer, scheduler, scaler, cfg, epoch=state.epoch,
                                        iter_in_epoch=state.iter_in_epoch, global_iter=state.global_iter,
                                        best_ap=state.best_ap), out_dir / name)

    def on_signal(signum, _frame) -> None:
        log.warning("received signal %d: saving last.pth after this iteration and stopping", signum)
        state.stop_requested = True

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_log(stats: dict) -> None:
        writer.write("train", state.global_iter, stats)
        log.info("epoch %d iter %d/%d  %s", state.epoch + 1, state.iter_in_epoch, iters_per_epoch,
                 "  ".join(f"{k} {v:.4g}" for k, v in stats.items() if k not in ("epoch", "iter")))

    def on_iter_end(st: TrainState) -> None:
        n = cfg.runtime.checkpoint_iters
        if n > 0 and st.global_iter % n == 0 and st.iter_in_epoch < iters_per_epoch:
            save("last.pth")

    max_iters = cfg.solver.max_iters
    metrics = None
    try:
        while state.epoch < cfg.solver.epochs:
            if max_iters is not None and state.global_iter >= max_iters:
                break
            sampler.set_epoch(state.epoch, state.iter_in_epoch)
            train_one_epoch(model, loader, optimizer, scheduler, scaler, state, device=device, amp=amp,
                            grad_clip=cfg.solver.grad_clip, log_interval=cfg.runtime.log_interval,
                            max_iters=max_iters, iters_per_epoch=iters_per_epoch, total_batch=total_batch,
                            channels_last=cfg.runtime.channels_last and device.type == "cuda",
                            on_log=on_log, on_iter_end=on_iter_end, dump_dir=out_dir if is_main else None,
                            show_progress=is_main)
            if state.iter_in_epoch < iters_per_epoch:  # stopped mid-epoch (signal or max_iters)
                if last_saved != ("last.pth", state.global_iter):  # not just written by on_iter_end
                    save("last.pth")
                break
            state.epoch, state.iter_in_epoch = state.epoch + 1, 0
            save("last.pth")
            if state.epoch in cfg.solver.lr_steps or state.epoch % cfg.runtime.checkpoint_interval == 0:
                save(f"epoch_{state.epoch:03d}.pth")
            last_epoch = state.epoch == cfg.solver.epochs or (max_iters is not None and state.global_iter >= max_iters)
            if val_ds is not None and (state.epoch % cfg.runtime.eval_interval == 0 or last_epoch):
                metrics = evaluate_model(model, cfg, val_ds, device, amp)
                if is_main:
                    writer.write("eval", state.global_iter, {"epoch": state.epoch, **{
                        k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
                    log.info("epoch %d: AP %.4f AP50 %.4f AP75 %.4f oLRP %.4f", state.epoch, metrics["AP"],
                             metrics["AP50"], metrics["AP75"], metrics["oLRP"])
                    if metrics["AP"] > state.best_ap:
                        state.best_ap = metrics["AP"]
                        save("best.pth")
            if du.max_over_ranks(torch.tensor([float(state.stop_requested)], device=device))[0]:  # all ranks agree
                state.stop_requested = True
                break
    except NonFiniteLossError as e:
        log.error("%s", e)
        du.cleanup()
        return 2, unwrap(model), state
    finally:
        writer.close()
        for signum, handler in old_handlers.items():
            signal.signal(signum, handler)
    if is_main and metrics is not None:
        print(f"COCO AP {metrics['AP']:.4f}  AP50 {metrics['AP50']:.4f}  AP75 {metrics['AP75']:.4f}  "
              f"oLRP {metrics['oLRP']:.4f}  (validation, after {state.global_iter} iterations)")
    du.cleanup()
    return 0, unwrap(model), state


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        sys.exit(2)

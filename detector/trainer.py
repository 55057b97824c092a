"""The trainer: a small loop that calls hooks (in the spirit of detectron2's ``TrainerBase``, much smaller).

One rule keeps multi-process runs from deadlocking, by construction: **every collective runs on every rank**
(the per-step stop/non-finite agreement, the self-balance consolidation before a checkpoint, the gathering and
broadcast of evaluation metrics, hence the "best" decision); the only rank-0 work is writing files, done in
:meth:`Trainer.write_checkpoint` and the writers of the logging hook.

The loop (:meth:`Trainer.train`)::

    before_train hooks
    until the schedule is done:
        for each batch of the epoch:   step(); after_step hooks; stop if a signal came (all ranks agree)
        at the end of an epoch (or of the schedule): after_epoch hooks (evaluate, then checkpoint)
    after_train hooks

A SIGTERM/SIGINT (to the process or its whole group, DataLoader workers included: they ignore it) saves
``last.pth`` at the next iteration boundary and returns ``"preempted"``; ``train.py`` then exits with
:data:`~detector.errors.EXIT_PREEMPTED`.
"""
from __future__ import annotations

import functools
import logging
import math
import resource
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from . import distributed as du
from .checkpoint import (atomic_save, load_model_weights, make_checkpoint, prune_epoch_checkpoints,
                         remove_stale_temp_files, resume, unwrap)
from .config import Config, config_to_dict
from .engine import move_targets, run_inference, scalar_stats
from .errors import EXIT_OK, EXIT_PREEMPTED, DataError, NonFiniteLossError
from .fuse import fuse_for_inference
from .inference import Detector
from .logger import MetricsWriter, progress_enabled
from .losses import CriterionHooks, ddp_loss_scale
from .solver import (build_optimizer, build_scheduler, effective_lr, resolve_schedule, schedule_summary,
                     schedule_warnings)

log = logging.getLogger("train")
EXIT_STATUS_FILE = "exit_status"  # "<code> <status>" once a run stops cleanly; read by scripts/slurm_train.sh


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""
    epoch: int = 0  # completed epochs
    iter_in_epoch: int = 0  # iterations done in the current epoch
    global_iter: int = 0  # iterations done in all
    best_ap: float = -1.0
    stop_requested: bool = False  # set by the SIGTERM/SIGINT handler


class Hook:
    """Called by :class:`Trainer` at fixed points; every hook method runs on every rank."""

    def before_train(self, trainer: "Trainer") -> None:
        pass

    def after_step(self, trainer: "Trainer", stats: dict[str, Any]) -> None:
        pass

    def after_epoch(self, trainer: "Trainer", final: bool) -> None:
        pass

    def after_train(self, trainer: "Trainer", status: str) -> None:
        pass

    def seconds_left(self, trainer: "Trainer") -> float:
        """Time this hook still expects to spend outside the training steps (validation); added to the ETA."""
        return 0.0


def _ignore_stop_signals(worker_id: int, inner=None) -> None:
    """DataLoader worker init: leave SIGTERM/SIGINT to the main process, which saves and stops."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if inner is not None:
        inner(worker_id)


def _criterion_of(model: nn.Module) -> CriterionHooks:
    """The detector's criterion: every model of :func:`detector.build.build_model` has one (see CriterionHooks)."""
    return unwrap(model).criterion


class Trainer:
    """Builds a run from its config and trains it; ``train()`` returns ``"finished"`` or ``"preempted"``."""

    def __init__(self, cfg: Config, out_dir: Path, *, device: torch.device, amp: bool, resume_from: Path | None,
                 eval_only: bool = False):
        from data.build import build_dataset, build_train_loader
        from data.summary import dataset_summary

        self.cfg, self.out_dir, self.device, self.amp = cfg, Path(out_dir), device, amp
        self.world_size, self.rank = du.get_world_size(), du.get_rank()
        self.is_main = self.rank == 0
        self.state = TrainState()
        self.last_written: tuple[str, int] | None = None  # (name, global_iter) of the latest checkpoint
        self.last_metrics: dict[str, Any] | None = None  # of the latest evaluation
        torch.manual_seed(cfg.runtime.seed)
        if cfg.runtime.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        model = _build_model(cfg).to(device)
        if cfg.runtime.channels_last and device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        if cfg.model.weights:
            load_model_weights(model, cfg.model.weights, strict=cfg.model.weights_strict)
        self.model = model
        self.val_ds = (build_dataset(cfg.data, "val", num_classes=cfg.model.num_classes)
                       if (cfg.runtime.eval_interval > 0 or eval_only) else None)
        if eval_only:
            return
        self.train_ds = build_dataset(cfg.data, "train", num_classes=cfg.model.num_classes)
        self.loader, self.sampler = build_train_loader(cfg.data, self.train_ds, cfg.runtime.seed, self.world_size,
                                                       self.rank)
        self.loader.worker_init_fn = functools.partial(_ignore_stop_signals, inner=self.loader.worker_init_fn)
        self.iters_per_epoch = self.sampler.batches_per_epoch
        if self.iters_per_epoch == 0:
            raise DataError(f"{cfg.data.train_ann}: {len(self.train_ds)} training images (after filtering) are fewer "
                            f"than one batch of {self.world_size} x {cfg.data.batch_size}; lower data.batch_size")
        self.schedule = resolve_schedule(cfg.solver, self.iters_per_epoch)
        crit = _criterion_of(model)
        self.sb_period = (cfg.loss.sb_period or self.iters_per_epoch) if crit.has_self_balance else None
        for line in dataset_summary(self.train_ds, cfg.data.batch_size, self.world_size, split="train") + (
                dataset_summary(self.val_ds, cfg.data.test_batch_size, self.world_size, drop_last=False, split="val")
                if self.val_ds is not None else []):
            log.info("%s", line)
        log.info("%s", schedule_summary(self.schedule, self.sb_period))
        for line in schedule_warnings(self.schedule, self.sb_period):
            log.warning("%s", line)
        crit.set_period(self.iters_per_epoch)
        self.total_batch = self.world_size * cfg.data.batch_size
        self.optimizer = build_optimizer(model, cfg.solver, effective_lr(cfg.solver, self.total_batch))
        self.scheduler = build_scheduler(self.optimizer, cfg.solver, self.iters_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp)
        # DDP averages gradients over ranks; with a batch-global ranking every rank's loss already is the global
        # loss (its gradient reaching only local inputs), so the sum over ranks is what one big process computes.
        self.loss_scale = ddp_loss_scale(cfg.loss.rank_scope)
        if resume_from is not None:
            ckpt = resume(resume_from, model, self.optimizer, self.scheduler, self.scaler, cfg, self.world_size)
            self.state = TrainState(epoch=ckpt["epoch"], iter_in_epoch=ckpt["iter_in_epoch"],
                                    global_iter=ckpt["global_iter"], best_ap=ckpt["best_ap"])
            if self.state.iter_in_epoch > self.iters_per_epoch:
                raise DataError(f"{resume_from}: it stopped at iteration {self.state.iter_in_epoch} of an epoch, "
                                f"but an epoch now has {self.iters_per_epoch}: the training set changed")
        if self.world_size > 1:
            # broadcast_buffers=False: the self-balance running sums are per-rank buffers, all-reduced at each update
            # (newer torch calls it deprecated but says to keep it for rank-local buffers until a replacement lands)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*broadcast_buffers.*", category=FutureWarning)
                self.model = nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
        self.mutable_buffers: list[tuple[str, torch.Tensor]] = []  # set once the model is in training mode
        self.hooks: list[Hook] = [SignalHook(), LoggingHook(), EvalHook(), CheckpointHook()]

    # ------------------------------------------------------------------ the loop
    def train(self) -> str:
        """Train to the end of the schedule; ``"finished"``, or ``"preempted"`` after a stop signal."""
        s = self.state
        status = "finished"
        for h in self.hooks:
            h.before_train(self)
        try:
            while s.global_iter < self.schedule.total_iters and status == "finished":
                self.sampler.set_epoch(s.epoch, s.iter_in_epoch)
                self.model.train()  # frozen stages and norm_eval BatchNorm stay in eval mode (backbone.train)
                self.mutable_buffers = _buffers_the_forward_updates(unwrap(self.model))
                for batch in self._timed(self.loader):
                    if self._agree_stop(batch):
                        status = "preempted"
                        break
                    if batch is not None:
                        stats = self.step(*batch)
                        for h in self.hooks:
                            h.after_step(self, stats)
                    if s.iter_in_epoch >= self.iters_per_epoch or s.global_iter >= self.schedule.total_iters:
                        break
                if status == "preempted":
                    self.save_last()
                    break
                if s.iter_in_epoch >= self.iters_per_epoch:
                    s.epoch, s.iter_in_epoch = s.epoch + 1, 0
                final = s.global_iter >= self.schedule.total_iters
                for h in self.hooks:
                    h.after_epoch(self, final)
                if du.any_over_ranks([s.stop_requested], self.device)[0] and not final:  # a signal during eval
                    status = "preempted"
        finally:
            for h in self.hooks:
                h.after_train(self, status)
        return status

    def _timed(self, loader):
        """Yield the loader's batches, recording the time spent waiting for each in ``self.data_time``."""
        it = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.data_time = time.perf_counter() - t0
            yield batch

    def _agree_stop(self, batch) -> bool:
        """Before a step: do all ranks go on? Agrees on pending signals and on empty batches (one all-reduce)."""
        empty = batch is None or len(batch[1]) == 0
        stop, any_empty = du.any_over_ranks([self.state.stop_requested, empty], self.device)
        self.state.stop_requested = self.state.stop_requested or stop
        if any_empty and not stop:
            log.warning("iteration %d: a batch whose images were all skipped as bad; the step is skipped on every "
                        "rank", self.state.global_iter + 1)
            self.state.iter_in_epoch += 1  # the position in the epoch moves on; the schedule does not
        return stop

    def step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, Any]:
        """One iteration: forward, agree on finiteness across ranks, backward, optimiser and lr step."""
        s, model, crit = self.state, self.model, _criterion_of(self.model)
        t0 = time.perf_counter()
        log_now = (s.global_iter + 1) % self.cfg.runtime.log_interval == 0
        crit.track_balance = log_now
        # The forward updates some buffers (BN statistics in training mode, self-balance sums): keep those for a
        # non-finite dump, so that it holds the state before the step.
        buffers_before = {k: b.detach().clone() for k, b in self.mutable_buffers}
        cpu_targets = targets
        images = images.to(self.device, non_blocking=True)
        if self.cfg.runtime.channels_last and self.device.type == "cuda":
            images = images.contiguous(memory_format=torch.channels_last)
        targets = move_targets(targets, self.device)
        amp_dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        with torch.autocast(device_type=self.device.type, dtype=amp_dtype, enabled=self.amp):
            loss_dict = model(images, targets)
        total = sum(v for k, v in loss_dict.items() if k.startswith("loss_"))
        non_finite = (~torch.isfinite(total.detach())).float().reshape(1)
        if du.any_over_ranks(non_finite)[0]:  # one sync; every rank stops at the same step
            self._dump_non_finite(loss_dict, images, cpu_targets, buffers_before)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total * self.loss_scale if self.loss_scale != 1.0 else total).backward()
        grad_norm = None
        if self.cfg.solver.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), self.cfg.solver.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        s.iter_in_epoch += 1
        s.global_iter += 1
        stats: dict[str, Any] = {"log": log_now, "lr": lr, "time": time.perf_counter() - t0 + self.data_time,
                                 "data_time": self.data_time}
        if log_now:
            extra = {} if grad_norm is None else {"grad_norm": grad_norm}  # before clipping: a divergence sign
            balance = crit.last_balance
            if balance is not None:
                extra.update(_balance_pos=balance[0], _balance_neg=balance[1])
            values = scalar_stats({"loss": total, **loss_dict, **extra})  # one host sync for all of them
            if balance is not None:
                pos, neg = values.pop("_balance_pos"), values.pop("_balance_neg")
                values["grad_balance"] = pos / neg if neg != 0 else float("nan")
            stats["values"] = values
        return stats

    def _dump_non_finite(self, loss_dict, images, targets, buffers_before) -> None:
        s = self.state
        failing = s.global_iter + 1  # as printed: the iteration that failed, counted from 1
        parts = {k: float(v.detach().float()) for k, v in loss_dict.items()}
        path = self.out_dir / "nan_dump.pth"
        if self.is_main:
            state = unwrap(self.model).state_dict()
            state.update({k: v for k, v in buffers_before.items() if k in state})
            atomic_save({"kind": "nan_dump", "global_iter": failing, "epoch": s.epoch + 1,
                         "iter_in_epoch": s.iter_in_epoch + 1, "losses": parts, "images": images.detach().cpu(),
                         "image_ids": [int(t["image_id"]) for t in targets],
                         "targets": [{k: v for k, v in t.items() if torch.is_tensor(v)} for t in targets],
                         "model": state, "config": config_to_dict(self.cfg), "amp": self.amp}, path)
        raise NonFiniteLossError(
            f"non-finite loss at iteration {failing} (epoch {s.epoch + 1}, iteration {s.iter_in_epoch + 1} of the "
            f"epoch): " + ", ".join(f"{k}={v:.6g}" for k, v in parts.items())
            + f"; inputs and the state before the step saved to {path} "
              f"(python -m scripts.replay_nan {path} shows what went non-finite first)")

    # ------------------------------------------------------------------ checkpoints and evaluation
    def write_checkpoint(self, name: str, lean: bool) -> None:
        """Consolidate the self-balance sums (collective, every rank), then write ``name`` (rank 0 only)."""
        _criterion_of(self.model).consolidate()
        s = self.state
        ckpt = make_checkpoint(self.model, self.optimizer, self.scheduler, self.scaler, self.cfg, epoch=s.epoch,
                               iter_in_epoch=s.iter_in_epoch, global_iter=s.global_iter, best_ap=s.best_ap,
                               world_size=self.world_size, class_names=self.train_ds.class_names,
                               category_ids=self.train_ds.label_to_cat_id, lean=lean) if self.is_main else None
        if self.is_main:
            atomic_save(ckpt, self.out_dir / name)
        self.last_written = (name, s.global_iter)

    def save_last(self) -> None:
        if self.last_written != ("last.pth", self.state.global_iter):
            self.write_checkpoint("last.pth", lean=False)

    def evaluate(self) -> dict[str, Any]:
        """Validation metrics on every rank: inference is sharded, scoring runs on rank 0 and is broadcast."""
        from detector.metrics import evaluate_detections

        cfg, ds = self.cfg, self.val_ds
        detector = Detector.from_config(fuse_for_inference(unwrap(self.model)), cfg, ds.class_names,
                                        ds.label_to_cat_id, amp=self.amp)
        results, ran = run_inference(detector, ds, cfg.data.test_batch_size, cfg.data.num_workers, self.world_size,
                                     self.rank, limit=cfg.runtime.eval_max_images)
        n = min(cfg.runtime.eval_max_images or len(ds), len(ds))
        img_ids = None if len(ran) == len(ds) else ran  # images skipped as bad are not scored as missed
        if len(ran) < n:
            log.warning("validation: %d of %d images were skipped as bad and are left out of the scores", n - len(ran), n)
        metrics = evaluate_detections(ds.coco, results, lrp="grid", class_names=ds.class_names,
                                      img_ids=img_ids) if self.is_main else None
        return du.broadcast_object(metrics)


def _buffers_the_forward_updates(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, buffer) of what a training forward can change: BatchNorm statistics of BN layers in training mode
    (frozen BN and ``norm_eval`` layers never change) and the criterion's state (self-balance sums)."""
    out = []
    for prefix, m in model.named_modules():
        if prefix == "criterion" or prefix.startswith("criterion.") or (
                isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats):
            out.extend((f"{prefix}.{n}" if prefix else n, b) for n, b in m.named_buffers(recurse=False))
    return out


def _build_model(cfg: Config) -> nn.Module:
    from detector.build import build_model
    return build_model(cfg)


# ---------------------------------------------------------------------------------------------------- hooks
class SignalHook(Hook):
    """SIGTERM/SIGINT set ``stop_requested``; the loop saves ``last.pth`` at the next iteration boundary."""

    def before_train(self, trainer: Trainer) -> None:
        def on_signal(signum, _frame) -> None:
            if not trainer.state.stop_requested:
                log.warning("received %s: saving last.pth after this iteration and stopping (resumable)",
                            signal.Signals(signum).name)
            trainer.state.stop_requested = True

        self.old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def after_train(self, trainer: Trainer, status: str) -> None:
        for signum, handler in self.old.items():
            signal.signal(signum, handler)


def _max_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    return (f"{d}d " if d else "") + f"{h}:{m:02d}:{sec:02d}"


class LoggingHook(Hook):
    """metrics.jsonl + TensorBoard rows, a tqdm bar on a terminal, and short log lines with ETA.

    Off a terminal (a file, a pipe, a cluster log) there is no bar: one line every ``runtime.log_interval``
    iterations with ETA, iteration time, data time and peak memory, a few hundred bytes at most.
    """

    SHOWN = (("loss", "loss"), ("loss_cls", "cls"), ("loss_box", "box"), ("sb_weight", "sb"))

    def before_train(self, trainer: Trainer) -> None:
        self.writer = MetricsWriter(trainer.out_dir, enabled=trainer.is_main)
        self.bar = None
        if progress_enabled(trainer.is_main):
            self.bar = tqdm(total=trainer.schedule.total_iters, initial=trainer.state.global_iter, dynamic_ncols=True,
                            desc="train", leave=False)
        self.times: list[float] = []
        self.data_times: list[float] = []

    def after_step(self, trainer: Trainer, stats: dict[str, Any]) -> None:
        s = trainer.state
        self.times.append(stats["time"])
        self.data_times.append(stats["data_time"])
        if self.bar is not None:
            self.bar.update(1)
        if "values" not in stats:
            return
        values = stats["values"]
        n = len(self.times)
        it_time, data_time = sum(self.times) / n, sum(self.data_times) / n
        self.times, self.data_times = [], []
        eta = it_time * (trainer.schedule.total_iters - s.global_iter) + sum(h.seconds_left(trainer)
                                                                             for h in trainer.hooks)
        mem = _max_memory_mb(trainer.device)
        row = {**values, "lr": stats["lr"], "imgs_per_s": trainer.total_batch / max(it_time, 1e-9),
               "iter_time": it_time, "data_time": data_time, "eta_s": eta, "max_mem_mb": mem,
               "epoch": s.epoch + 1, "iter": s.iter_in_epoch}
        self.writer.write("train", s.global_iter, row)
        shown = "  ".join(f"{short} {values[k]:.4g}" for k, short in self.SHOWN if k in values)
        log.info("epoch %d/%d  iter %d/%d  eta %s  %s  lr %.3g  time %.3fs  data %.3fs  mem %.0fM", s.epoch + 1,
                 trainer.schedule.epochs, s.iter_in_epoch, trainer.iters_per_epoch, _fmt_eta(eta), shown,
                 stats["lr"], it_time, data_time, mem)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{shown}  lr {stats['lr']:.3g}", refresh=False)

    def after_train(self, trainer: Trainer, status: str) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()


def evals_left(global_iter: int, iters_per_epoch: int, total_iters: int, every: int) -> int:
    """Validations still to come once iteration ``global_iter`` has run: the one after each epoch that is a
    multiple of ``every`` (pending at that epoch's last iteration too) and the one at the end of the schedule,
    unless that end is such an epoch."""
    if every <= 0 or global_iter > total_iters:
        return 0
    full_epochs = total_iters // iters_per_epoch
    current = max(-(-global_iter // iters_per_epoch), 1)  # the epoch that iteration global_iter belongs to
    n = full_epochs // every - (current - 1) // every
    return n + (total_iters % iters_per_epoch != 0 or full_epochs % every != 0)


class EvalHook(Hook):
    """Validation every ``runtime.eval_interval`` epochs and at the end; ``best.pth`` on a new best AP.

    Runs before the checkpoint hook, so ``last.pth`` of an epoch already knows the best AP. Times each validation
    so that the logged ETA includes the ones still to come.
    """

    def before_train(self, trainer: Trainer) -> None:
        self.seconds: list[float] = []

    def seconds_left(self, trainer: Trainer) -> float:
        if trainer.val_ds is None or not self.seconds:
            return 0.0
        n = evals_left(trainer.state.global_iter, trainer.iters_per_epoch, trainer.schedule.total_iters,
                       trainer.cfg.runtime.eval_interval)
        return n * sum(self.seconds) / len(self.seconds)

    def after_epoch(self, trainer: Trainer, final: bool) -> None:
        cfg, s = trainer.cfg, trainer.state
        every = cfg.runtime.eval_interval
        if trainer.val_ds is None or every <= 0 or not (final or (s.iter_in_epoch == 0 and s.epoch % every == 0)):
            return
        t0 = time.perf_counter()
        metrics = trainer.evaluate()  # identical on every rank
        self.seconds.append(time.perf_counter() - t0)
        trainer.last_metrics = metrics
        epoch = s.epoch + (s.iter_in_epoch > 0)  # a schedule may end inside an epoch
        log.info("epoch %d (iteration %d): AP %.4f AP50 %.4f AP75 %.4f oLRP %.4f", epoch, s.global_iter,
                 metrics["AP"], metrics["AP50"], metrics["AP75"], metrics["oLRP"])
        hook = next(h for h in trainer.hooks if isinstance(h, LoggingHook))
        hook.writer.write("eval", s.global_iter, {"epoch": epoch, **{
            k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
        if metrics["AP"] > s.best_ap:
            s.best_ap = metrics["AP"]
            trainer.write_checkpoint("best.pth", lean=True)


class CheckpointHook(Hook):
    """``last.pth`` every epoch (and every ``runtime.checkpoint_iters``); lean ``epoch_XXX.pth`` at lr drops and
    every ``runtime.checkpoint_interval`` epochs, at most ``runtime.keep_last`` of them kept."""

    def before_train(self, trainer: Trainer) -> None:
        if trainer.is_main:
            remove_stale_temp_files(trainer.out_dir)
            (trainer.out_dir / EXIT_STATUS_FILE).unlink(missing_ok=True)

    def after_train(self, trainer: Trainer, status: str) -> None:
        """Record how the run ended (for launchers such as torchrun that do not pass exit codes on)."""
        if trainer.is_main and status in ("finished", "preempted"):
            code = EXIT_OK if status == "finished" else EXIT_PREEMPTED
            (trainer.out_dir / EXIT_STATUS_FILE).write_text(f"{code} {status}\n")

    def after_step(self, trainer: Trainer, stats: dict[str, Any]) -> None:
        n, s = trainer.cfg.runtime.checkpoint_iters, trainer.state
        if n > 0 and s.global_iter % n == 0 and 0 < s.iter_in_epoch < trainer.iters_per_epoch:
            trainer.save_last()

    def after_epoch(self, trainer: Trainer, final: bool) -> None:
        s, rt = trainer.state, trainer.cfg.runtime
        trainer.save_last()
        if s.iter_in_epoch != 0:  # the schedule ended inside an epoch
            return
        end, start = s.epoch * trainer.iters_per_epoch, (s.epoch - 1) * trainer.iters_per_epoch
        lr_drop = any(start < it <= end for it in trainer.schedule.step_iters)
        if lr_drop or s.epoch % rt.checkpoint_interval == 0:
            trainer.write_checkpoint(f"epoch_{s.epoch:03d}.pth", lean=True)
            if rt.keep_last > 0 and trainer.is_main:
                old = prune_epoch_checkpoints(trainer.out_dir, rt.keep_last)
                if old:
                    log.info("runtime.keep_last=%d: removed %s", rt.keep_last, ", ".join(p.name for p in old))

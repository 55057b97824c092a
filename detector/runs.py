"""Run directories: the ``--resume`` argument, refusing to clobber a run, and the environment header of a log."""
from __future__ import annotations

import logging
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import torchvision

from . import distributed as du
from .config import Config
from .errors import ConfigError

log = logging.getLogger("train")

# Files whose presence means a directory already holds a run.
RUN_FILES = ("last.pth", "best.pth", "metrics.jsonl", "log.txt", "config.yaml", "nan_dump.pth")


def split_resume(argv: list[str] | None) -> tuple[list[str], str | None]:
    """Take ``--resume [CKPT]`` out of ``argv``: (the other arguments, CKPT / "auto" / None).

    A following token is the checkpoint only if it is neither an option nor a ``key=value`` override, so
    ``--resume solver.epochs=120`` resumes from OUTPUT_DIR/last.pth and extends the schedule.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, resume = [], None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--resume":
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if nxt is not None and not nxt.startswith("-") and "=" not in nxt:
                resume, i = nxt, i + 2
            else:
                resume, i = "auto", i + 1
            continue
        if a.startswith("--resume="):
            resume = a.split("=", 1)[1] or "auto"
        else:
            rest.append(a)
        i += 1
    return rest, resume


def _existing_run_files(out_dir: Path) -> list[Path]:
    if not out_dir.is_dir():
        return []
    found = [out_dir / n for n in RUN_FILES if (out_dir / n).exists()]
    return found + sorted(out_dir.glob("epoch_[0-9]*.pth")) + ([out_dir / "tb"] if (out_dir / "tb").is_dir() else [])


def _move_aside(out_dir: Path, files: list[Path]) -> Path:
    dest = out_dir / f"previous_{time.strftime('%Y%m%d-%H%M%S')}"
    n = 0
    while dest.exists():
        n += 1
        dest = out_dir / f"previous_{time.strftime('%Y%m%d-%H%M%S')}_{n}"
    dest.mkdir(parents=True)
    for f in files:
        shutil.move(str(f), str(dest / f.name))
    return dest


def _decide(out_dir: Path, resume: str | None, overwrite: bool, eval_only: bool) -> tuple[str | None, str, str]:
    """Rank 0's decision: (checkpoint to resume from or None, error message or "", note to log)."""
    if resume not in (None, "auto"):
        return resume, "", ""
    last = out_dir / "last.pth"
    if resume == "auto":
        if last.is_file():
            return str(last), "", ""
        if eval_only:
            return None, f"--resume: {last} does not exist, nothing to evaluate", ""
        files = _existing_run_files(out_dir)
        note = f"--resume: no {last} yet, starting a fresh run"
        if files:
            dest = _move_aside(out_dir, files)
            note += f" (the files of the earlier attempt were moved to {dest})"
        return None, "", note
    if eval_only:
        return None, "", ""
    files = _existing_run_files(out_dir)
    if files and not overwrite:
        names = ", ".join(f.name for f in files[:6])
        return None, (f"{out_dir} already holds a run ({names}); pass --resume to continue it or --overwrite to "
                      f"start over (the old files are then moved to {out_dir}/previous_<time>/)"), ""
    if files:
        dest = _move_aside(out_dir, files)
        return None, "", f"--overwrite: the earlier run's files were moved to {dest}"
    return None, "", ""


def prepare_output_dir(out_dir: Path, resume: str | None, overwrite: bool, eval_only: bool) -> Path | None:
    """Check (and with --overwrite clear) the run directory; returns the checkpoint to resume from, if any.

    Rank 0 looks at the directory and moves files; every rank receives the same decision (a collective).
    """
    decision = _decide(out_dir, resume, overwrite, eval_only) if du.is_main_process() else None
    ckpt, error, note = du.broadcast_object(decision)
    if error:
        raise ConfigError(error)
    if note:
        logging.getLogger("train").info(note)
        prepare_output_dir.note = note  # logged again once log.txt exists
    return Path(ckpt) if ckpt else None


def log_environment(cfg: Config, config_path: str, out_dir: Path, device: torch.device) -> None:
    """The first lines of log.txt: versions, devices, world size, the config and where the run writes."""
    note = getattr(prepare_output_dir, "note", "")
    if note:
        log.info(note)
    cuda = torch.version.cuda or "none"
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    log.info("environment: python %s, torch %s, torchvision %s, CUDA %s, %s", platform.python_version(),
             torch.__version__, torchvision.__version__, cuda,
             f"{len(gpus)} GPU(s): {', '.join(sorted(set(gpus)))}" if gpus else "no GPU")
    log.info("run: config %s (name %s) -> %s; world size %d, device %s, %d CPU thread(s)", config_path, cfg.name,
             out_dir, du.get_world_size(), device, torch.get_num_threads())
    if du.is_main_process():
        from .config import dump_config
        dump_config(cfg, out_dir / "config.yaml")

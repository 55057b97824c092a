"""Run logging: console + ``log.txt``, ``metrics.jsonl`` and TensorBoard scalars (rank 0 only).

On a terminal the console goes through tqdm so progress bars stay intact; when stderr is a file or a pipe
(``> run.log 2>&1``, Slurm, Kubernetes) there are no bars (:func:`progress_enabled` is false) and the trainer
writes plain log lines with ETA instead. Tracebacks of fatal errors go to ``log.txt`` only, unless ``--debug``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


def is_terminal() -> bool:
    """Whether stderr is an interactive terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_enabled(is_main: bool = True) -> bool:
    """Progress bars only on rank 0, on a terminal, and unless ``TQDM_DISABLE`` is set to a true value."""
    disabled = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")
    return is_main and not disabled and is_terminal()


class _ConsoleHandler(logging.StreamHandler):
    """Console handler: through tqdm on a terminal (bars stay intact), plain lines otherwise.

    Fatal errors (logger ``fatal``) are printed as their one line; their traceback only with ``debug``.
    """
    prints_fatal = True

    def __init__(self, debug: bool = False):
        super().__init__(sys.stderr)
        self.debug = debug
        self.tty = is_terminal()

    @property
    def stream(self):  # the current sys.stderr, also when it was replaced after set-up (captured, redirected)
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        if record.name == "fatal":
            line = record.getMessage()
            if self.debug and record.exc_info:
                line += "\n" + logging.Formatter().formatException(record.exc_info)
            return line
        if record.exc_info and not self.debug:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self.tty:
                tqdm.write(self.format(record), file=sys.stderr)
            else:
                super().emit(record)
        except Exception:  # noqa: BLE001 - logging must never crash the run
            self.handleError(record)


def setup_logging(output_dir: str | Path | None, is_main: bool, debug: bool = False) -> None:
    """Configure the root logger: INFO to the console (and ``output_dir/log.txt``) on rank 0, WARNING elsewhere.

    ``log.txt`` is appended to (a resumed run continues its log) and receives the tracebacks of fatal errors.
    """
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    console = _ConsoleHandler(debug)
    console.setFormatter(fmt)
    root.addHandler(console)
    root.setLevel(logging.DEBUG if debug else logging.INFO if is_main else logging.WARNING)
    if is_main and output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(Path(output_dir) / "log.txt")
        fh.setFormatter(fmt)
        root.addHandler(fh)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


class MetricsWriter:
    """Appends one JSON object per line to ``metrics.jsonl`` and mirrors numeric fields to TensorBoard.

    Every row has ``type`` ("train" or "eval"), ``epoch``, ``global_iter`` and ``time`` (unix seconds).
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(log_dir=str(Path(output_dir) / "tb"))

    def write(self, row_type: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"type": row_type, **values, "global_iter": step, "time": round(time.time(), 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(_clean(row)) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch", "iter"):
                    self.tb.add_scalar(f"{row_type}/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()

"""Run logging: console + ``log.txt``, ``metrics.jsonl`` and TensorBoard scalars (rank 0 only)."""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm


class _TqdmHandler(logging.StreamHandler):
    """Console handler that prints through tqdm so progress bars are not broken up."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never crash the run
            self.handleError(record)


def setup_logging(output_dir: str | Path | None, is_main: bool) -> None:
    """Configure the root logger: INFO to the console (and ``output_dir/log.txt``) on rank 0, WARNING elsewhere."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    console = _TqdmHandler()
    console.setFormatter(fmt)
    root.addHandler(console)
    root.setLevel(logging.INFO if is_main else logging.WARNING)
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

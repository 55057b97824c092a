"""Distributed helpers around ``torch.distributed`` for ``torchrun`` launches.

The process group is configured from the environment that ``torchrun`` sets (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT): NCCL when the process uses a GPU, gloo on CPU. Without
those variables everything runs as a single process and the helpers below are no-ops.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def init_distributed(device: str = "auto") -> tuple[int, int, int]:
    """Initialise the default process group if launched by torchrun; return (rank, world_size, local_rank)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world_size == 1 or dist.is_initialized():
        return rank, world_size, local_rank
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return rank, world_size, local_rank


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' | 'cpu' | 'cuda' (``runtime.device`` / ``--device``) -> torch.device; cuda:LOCAL_RANK under torchrun."""
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"runtime.device (--device) must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("runtime.device (--device) is cuda but no CUDA device is available")
    if name != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather_object(obj: Any) -> list[Any]:
    """Gather a picklable object from every rank (a one-element list without a process group)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (a collective: every rank calls it; the others pass anything)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def any_over_ranks(flags: list[bool] | torch.Tensor, device: torch.device | str = "cpu") -> list[bool]:
    """Element-wise OR over the ranks of a few booleans, or of a small float tensor of 0/1 flags already on the
    device (one all-reduce and one host sync; in a single process just the sync)."""
    t = flags if torch.is_tensor(flags) else torch.tensor([float(f) for f in flags], device=device)
    if is_dist():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()

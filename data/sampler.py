"""Samplers: a resumable, distributed-aware training sampler and an in-order sharded test sampler.

The training sampler yields ``(dataset_index, sample_seed)`` pairs. The permutation depends only on
``(seed, epoch)`` and the sample seed only on ``(seed, epoch, position in the epoch's global order)``,
so every rank, any number of loader workers and a run resumed mid-epoch see exactly the same samples
with exactly the same augmentation.
"""
from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["TrainSampler", "InferenceSampler", "sample_seed"]


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for one sample, a pure function of (seed, epoch, position)."""
    entropy = [seed % 2**63, epoch % 2**63, position % 2**63]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


class TrainSampler(Sampler):
    """Shuffles per epoch from (seed, epoch) and deals one global order out to the ranks.

    An epoch is ``dataset_size // (world_size * batch_size)`` iterations (the last partial global batch is
    dropped). Iteration ``i`` consumes the global positions ``[i*T, (i+1)*T)`` with ``T = world_size *
    batch_size``; rank ``r`` takes the positions ``i*T + r + world_size*k`` (k < batch_size). So which samples
    an iteration sees, and their augmentation seeds, depend only on the total batch ``T``: a run resumed on
    another number of ranks with the same total batch continues with exactly the next unseen samples.

    Args:
        dataset_size: number of samples in the dataset.
        batch_size: images per batch on this rank.
        world_size, rank: the process group layout (1, 0 for a single process).
        seed: the run's seed.
        shuffle: False keeps dataset order.
    """

    def __init__(self, dataset_size: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True):
        if dataset_size <= 0:
            raise ValueError("TrainSampler needs a non-empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.total_batch = batch_size * world_size
        self.epoch = 0
        self.start_iter = 0

    @property
    def batches_per_epoch(self) -> int:
        """Iterations per epoch (full global batches)."""
        return self.dataset_size // self.total_batch

    def set_epoch(self, epoch: int, start_iter: int = 0) -> None:
        """Select the epoch; skip its first ``start_iter`` iterations (resume)."""
        if start_iter < 0 or start_iter > self.batches_per_epoch:
            raise ValueError(f"start_iter {start_iter} is outside 0..{self.batches_per_epoch}")
        self.epoch = epoch
        self.start_iter = start_iter

    def global_order(self) -> np.ndarray:
        """The epoch's order over all ranks, (dataset_size,) dataset indices."""
        if self.shuffle:
            return np.random.default_rng([self.seed % 2**63, self.epoch]).permutation(self.dataset_size)
        return np.arange(self.dataset_size)

    def positions(self) -> np.ndarray:
        """The global positions this rank reads from ``start_iter`` to the end of the epoch, in order."""
        its = np.arange(self.start_iter, self.batches_per_epoch)[:, None]
        k = np.arange(self.batch_size)[None, :]
        return (its * self.total_batch + self.rank + self.world_size * k).reshape(-1)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.global_order()
        for pos in self.positions():
            yield int(order[pos]), sample_seed(self.seed, self.epoch, int(pos))

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_iter) * self.batch_size


class InferenceSampler(Sampler):
    """Contiguous, in-order shard of ``range(size)`` for ``rank``; no padding, so no image is seen twice."""

    def __init__(self, size: int, world_size: int = 1, rank: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        per, extra = divmod(size, world_size)
        self.start = rank * per + min(rank, extra)
        self.stop = self.start + per + (1 if rank < extra else 0)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start

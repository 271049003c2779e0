"""Deterministic, resumable, distributed batch sampling for training.

Every epoch is one permutation drawn from (seed, epoch) only. It is cut into
global batches of `batch_size * world_size` clips; rank r takes slice r of each
global batch. So N processes see exactly the samples one process with an N times
larger batch would see, and a run resumed at micro-batch k of an epoch continues
with exactly the batches an uninterrupted run would have drawn.

The order does not depend on the number of processes, so a position in the epoch is a
count of clips: a run resumed with another layout (fewer processes, more accumulation,
the same global batch) continues at the same clip. `epoch_clips` fixes how many clips an
epoch takes (the run's first layout decides it), so the epoch keeps its clips under any
micro-batch that divides it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from tokshift.errors import BadInput


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the n training clips in `epoch` (depends only on seed and epoch)."""
    entropy = np.random.SeedSequence([int(seed), int(epoch), 0x70C5]).generate_state(2, dtype=np.uint32)
    g = torch.Generator()
    g.manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
    return torch.randperm(n, generator=g)


class ResumableBatchSampler(Sampler[list[int]]):
    """Per-rank batches of a shuffled epoch; drops the last incomplete global batch.

    `epoch_clips` (default: all `n`) is the part of each epoch's order that is used, cut into
    as many whole global batches as fit.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        epoch_clips: int | None = None,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler geometry: batch_size={batch_size}, rank={rank}/{world_size}")
        global_batch = batch_size * world_size
        if n < global_batch:
            raise BadInput(
                f"the training set has {n} clips, fewer than one global batch of {global_batch} "
                f"(batch_size={batch_size} x {world_size} processes); lower batch_size "
                "(--override batch_size=...) or use fewer processes"
            )
        if epoch_clips is not None and not global_batch <= epoch_clips <= n:
            raise ValueError(f"epoch_clips={epoch_clips} outside {global_batch}..{n}")
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.epoch_clips = n if epoch_clips is None else int(epoch_clips)
        self.seed, self.shuffle = seed, shuffle
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.epoch_clips // (self.batch_size * self.world_size)

    @property
    def clips_per_epoch(self) -> int:
        """The clips an epoch trains on: its whole global batches."""
        return self.batches_per_epoch * self.batch_size * self.world_size

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and skip its first `start_batch` batches (a mid-epoch resume)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch={start_batch} outside 0..{self.batches_per_epoch}")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)
        g = self.batch_size * self.world_size
        for k in range(self.start_batch, self.batches_per_epoch):
            lo = k * g + self.rank * self.batch_size
            yield order[lo : lo + self.batch_size].tolist()

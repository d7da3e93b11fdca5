"""A shuffling sampler whose order depends only on (seed, epoch), resumable mid-epoch.

torch's RandomSampler draws its order from the global RNG, which a Lightning checkpoint does not restore;
this one is re-seeded by Lightning's `set_epoch` call at the start of every epoch. `resume(epoch, skip)`
makes the next pass leave out the first `skip` samples of that epoch's order (what a run stopped mid-epoch
had trained on: vtlab.train.callbacks.SamplerResume saves and restores it), so a resumed run sees exactly
the batches the uninterrupted one would. `len()` stays the whole epoch: Lightning counts the skipped
batches as done. Under DDP Lightning wraps it in a DistributedSamplerWrapper, which forwards `set_epoch`
and shards the same permutation (a mid-epoch resume is then exact only at epoch ends).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochShuffleSampler(Sampler[int]):
    def __init__(self, length: int, seed: int = 0) -> None:
        self.length = length
        self.seed = seed
        self.epoch = 0
        self.skip = 0  # samples to leave out at the start of the next pass (a mid-epoch resume), then 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume(self, epoch: int, skip: int) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:  # the whole epoch: Lightning counts the skipped batches as already trained on
        return self.length

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.length, generator=g).tolist()
        skip, self.skip = self.skip, 0
        return iter(order[skip:])

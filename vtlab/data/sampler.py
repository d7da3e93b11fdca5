"""A shuffling sampler whose order depends only on (seed, epoch), so a resumed run sees the same batches.

torch's RandomSampler draws its order from the global RNG, which a Lightning checkpoint does not restore;
this one is re-seeded by Lightning's `set_epoch` call at the start of every epoch. Under DDP Lightning wraps
it in a DistributedSamplerWrapper, which forwards `set_epoch` and shards the same permutation.
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())

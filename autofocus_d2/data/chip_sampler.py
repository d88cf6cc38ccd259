"""ChipEpochSampler: which SNIPER chip records a training epoch visits."""
import itertools
import math
from typing import Iterator, Optional

import torch
from detectron2.utils import comm
from torch.utils.data import Sampler

__all__ = ["ChipEpochSampler"]


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


class ChipEpochSampler(Sampler):
    """
    Infinite stream of chip record indices, epoch after epoch: every positive index
    ``[0, num_positive)`` once, plus ``round(negatives_per_epoch * num_positive)`` negative
    indices ``num_positive + j`` (at most ``num_negative``) drawn anew each epoch without
    replacement; the epoch is shuffled (or positives in order, then the sorted negatives).
    Sharded across ranks as ``detectron2.data.samplers.TrainingSampler``: rank r takes items
    ``r, r + world_size, ...`` of the global stream.
    """

    def __init__(self, num_positive: int, num_negative: int, negatives_per_epoch: float,
                 shuffle: bool = True, seed: Optional[int] = None):
        if int(num_positive) != num_positive or num_positive < 1:
            raise ValueError(f"num_positive must be an integer >= 1, got {num_positive}")
        if int(num_negative) != num_negative or num_negative < 0:
            raise ValueError(f"num_negative must be an integer >= 0, got {num_negative}")
        if not (negatives_per_epoch >= 0 and math.isfinite(negatives_per_epoch)):
            raise ValueError(f"negatives_per_epoch must be >= 0, got {negatives_per_epoch}")
        self.num_positive, self.num_negative = int(num_positive), int(num_negative)
        self.negatives_in_epoch = min(_round_half_up(negatives_per_epoch * num_positive), self.num_negative)
        self._shuffle = shuffle
        self._seed = int(comm.shared_random_seed() if seed is None else seed)
        self._rank, self._world_size = comm.get_rank(), comm.get_world_size()

    def __iter__(self) -> Iterator[int]:
        yield from itertools.islice(self._infinite_indices(), self._rank, None, self._world_size)

    def _infinite_indices(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self._seed)
        while True:
            neg = torch.randperm(self.num_negative, generator=g)[: self.negatives_in_epoch]
            neg = neg + self.num_positive
            if self._shuffle:
                epoch = torch.cat([torch.arange(self.num_positive), neg])
                yield from epoch[torch.randperm(epoch.numel(), generator=g)].tolist()
            else:
                yield from range(self.num_positive)
                yield from torch.sort(neg).values.tolist()

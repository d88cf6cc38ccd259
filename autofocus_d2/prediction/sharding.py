"""How the images of a prediction run are split among processes, and each process's data loader.

Every process computes the same list of pending inputs (in the same order) and takes its own
shard of it: input ``i`` goes to process ``i % world_size``. Interleaving keeps the shards' sizes
within one image of each other, and neighbouring images (often of similar size) spread over the
processes.
"""
from typing import Iterator, List, Sequence

from detectron2.data.build import trivial_batch_collator
from torch.utils.data import DataLoader, Dataset, Sampler

from .inputs import PredictionInput, PredictionMapper

__all__ = ["shard_indices", "ShardSampler", "MappedInputs", "build_prediction_loader"]


def shard_indices(num_items: int, world_size: int, rank: int) -> List[int]:
    """The indices of ``num_items`` items that process ``rank`` of ``world_size`` handles:
    ``rank, rank + world_size, ...``. Over all ranks each index appears exactly once."""
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return list(range(rank, num_items, world_size))


class ShardSampler(Sampler):
    """Yields the given indices once, in order (a process's shard; Detectron2's
    ``InferenceSampler`` shards by the global rank, without a way to give the shard itself)."""

    def __init__(self, indices: Sequence[int]):
        self.indices = list(indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class MappedInputs(Dataset):
    """The inputs, each mapped by ``mapper`` when loaded (Detectron2's ``MapDataset`` retries
    another item when the mapper returns None; here an unreadable image is a record, not None)."""

    def __init__(self, inputs: Sequence[PredictionInput], mapper: PredictionMapper):
        self.inputs = list(inputs)
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int):
        return self.mapper(self.inputs[index])


def build_prediction_loader(
    inputs: Sequence[PredictionInput],
    mapper: PredictionMapper,
    indices: Sequence[int],
    *,
    batch_size: int = 1,
    num_workers: int = 0,
) -> DataLoader:
    """
    A data loader over ``inputs[i]`` for ``i`` in ``indices`` (in that order), in batches of
    ``batch_size`` mapped records (lists of dicts, Detectron2's trivial collator), read by
    ``num_workers`` worker processes (0: in this process).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    return DataLoader(
        MappedInputs(inputs, mapper),
        batch_size=batch_size,
        sampler=ShardSampler(indices),
        num_workers=num_workers,
        collate_fn=trivial_batch_collator,
        pin_memory=False,
    )

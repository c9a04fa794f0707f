"""Distributed evaluation sampling that keeps DDP in step and still counts every image once."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data.distributed import DistributedSampler


class PaddedEvalSampler(DistributedSampler):
    """In-order shards of equal length whose padding repeats are flagged.

    Ranks must run the same number of evaluation steps: inside ``fit`` the DDP-wrapped model
    broadcasts buffers on every forward, so uneven shards deadlock. Like DistributedSampler,
    the last shards are padded with repeats of the first images; unlike it, each index comes as
    ``(index, is_padding)`` so the metric can skip the repeats (``LabeledDataset`` unpacks it).
    """

    def __init__(
        self, dataset: object, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False
        )  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, bool]]:  # type: ignore[override]
        size = len(self.dataset)  # type: ignore[arg-type]
        for position in range(self.rank, self.total_size, self.num_replicas):
            yield position % size, position >= size


def split_global_batch(global_batch_size: int, world_size: int) -> list[int]:
    """Per-rank batch sizes that add up to ``global_batch_size``: the first
    ``global_batch_size % world_size`` ranks take one image more (10 on 3 ranks: [4, 3, 3];
    on 8: [2, 2, 1, 1, 1, 1, 1, 1])."""
    if global_batch_size < world_size:
        raise ValueError(
            f"data.global_batch_size {global_batch_size} is smaller than the {world_size} "
            "training processes (devices x nodes): every rank needs at least one image per step; "
            "use fewer devices or a larger data.global_batch_size"
        )
    base, extra = divmod(global_batch_size, world_size)
    return [base + (rank < extra) for rank in range(world_size)]


class GlobalBatchSampler(DistributedSampler):
    """Rank ``rank``'s slice of every global batch of one shuffled stream shared by all ranks.

    Every rank draws the same permutation of the dataset per epoch (``seed + epoch``), wraps it
    around to whole global batches (the last one is completed with the epoch's first images, as
    Caffe's data layer cycles through its list), and cuts step ``s``'s batch, stream positions
    ``s * G .. s * G + G - 1``, into the per-rank sizes of ``split_global_batch``. So each
    optimiser step sees the same ``G`` images in the same order on any number of ranks.

    Yields ``(index, False, aug_seed, position)``: the dataset index, "not padding" (as
    ``PaddedEvalSampler``'s flag), a seed for the sample's augmentation that depends only on
    the seed, the epoch and its stream position, and its position 0..G-1 in the global batch.
    ``len()`` is this rank's number of samples per epoch: steps per epoch x its batch size.
    """

    def __init__(
        self,
        dataset: object,
        global_batch_size: int,
        num_replicas: int,
        rank: int,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]
        self.global_batch_size = global_batch_size
        self.rank_sizes = split_global_batch(global_batch_size, num_replicas)
        self.offset = sum(self.rank_sizes[:rank])
        size = len(self.dataset)  # type: ignore[arg-type]
        self.steps = -(-size // global_batch_size)

    @property
    def batch_size(self) -> int:
        """This rank's images per step."""
        return self.rank_sizes[self.rank]

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, bool, int, int]]:  # type: ignore[override]
        import torch

        size = len(self.dataset)  # type: ignore[arg-type]
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(size, generator=generator).tolist()
        total = self.steps * self.global_batch_size
        stream = (order * -(-total // size))[:total]
        for step in range(self.steps):
            for j in range(self.batch_size):
                position = step * self.global_batch_size + self.offset + j
                yield stream[position], False, self.aug_seed(position), self.offset + j

    def aug_seed(self, position: int) -> int:
        """The augmentation seed of stream position ``position`` of this epoch."""
        return (self.seed * 1_000_003 + self.epoch * 7_919 * 2**24 + position) % 2**62

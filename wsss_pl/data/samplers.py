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

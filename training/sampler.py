"""Two-stream batches: every step takes labeled volumes (first) and unlabeled volumes.

As the reference's TwoStreamBatchSampler: an epoch is one shuffled pass over the labeled cases;
the unlabeled stream is an endless chain of shuffles. The order is a pure function of
(seed, epoch), so a resumed run draws exactly the batches the uninterrupted one would, and every
process of a distributed run agrees on it (each takes its own slice of each global batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ceds_deploy.errors import ConfigError


@dataclass(frozen=True)
class BatchIndices:
    """One process's part of one step: the indices of its labeled and of its unlabeled volumes."""

    labeled: tuple[int, ...]
    unlabeled: tuple[int, ...]


@dataclass(frozen=True)
class TwoStreamSampler:
    """The batch order of a run for process `rank` of `world_size` (see the module docstring).

    `ConfigError` when the cases cannot fill a step: `labeled_per_batch` below 1, fewer labeled cases than one
    global batch takes, or fewer unlabeled cases than `unlabeled_per_batch`.
    """

    n_labeled: int
    n_unlabeled: int
    labeled_per_batch: int
    unlabeled_per_batch: int
    seed: int
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        if self.labeled_per_batch < 1:
            raise ConfigError(f"labeled_per_batch must be >= 1, got {self.labeled_per_batch}")
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"{self.n_labeled} labeled cases cannot fill a step of {self.labeled_per_batch} "
                f"x {self.world_size} processes"
            )
        if self.unlabeled_per_batch and self.n_unlabeled < self.unlabeled_per_batch:
            raise ConfigError(f"{self.n_unlabeled} unlabeled cases cannot fill {self.unlabeled_per_batch} per batch")

    @property
    def steps_per_epoch(self) -> int:
        """Steps in one epoch: the labeled cases over the labeled volumes of a global batch
        (the remainder is left out)."""
        return self.n_labeled // (self.labeled_per_batch * self.world_size)

    def epoch(self, epoch: int) -> list[BatchIndices]:
        """This process's batches of `epoch`, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        steps, world = self.steps_per_epoch, self.world_size
        labeled = rng.permutation(self.n_labeled)
        n_unlabeled = steps * world * self.unlabeled_per_batch
        unlabeled = np.zeros(0, dtype=np.int64)
        while unlabeled.size < n_unlabeled:
            unlabeled = np.concatenate([unlabeled, rng.permutation(self.n_unlabeled)])
        out = []
        for step in range(steps):
            slot = step * world + self.rank  # global batch `step`, this process's part of it
            a = slot * self.labeled_per_batch
            b = slot * self.unlabeled_per_batch
            out.append(
                BatchIndices(
                    tuple(int(i) for i in labeled[a : a + self.labeled_per_batch]),
                    tuple(int(i) for i in unlabeled[b : b + self.unlabeled_per_batch]),
                )
            )
        return out

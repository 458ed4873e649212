"""Turn a step's volume indices into tensors: patches of the labeled volumes first, then unlabeled."""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

import numpy as np
import torch

from ceds_deploy.training.cache import PreparedData
from ceds_deploy.training.sampler import BatchIndices

Job = TypeVar("Job")
Made = TypeVar("Made")


@dataclass
class Batch:
    """One step's tensors: `images` (N, 1, *patch) float32, the labeled patches first, their `labels`
    (n_labeled, 1, *patch) uint8, and `n_labeled`, the number of labeled patches."""

    images: torch.Tensor  # (N, 1, *patch) float32: labeled patches first
    labels: torch.Tensor  # (n_labeled, 1, *patch) uint8
    n_labeled: int

    def to(self, device: torch.device | str) -> Batch:
        """The batch on `device` (asynchronous copies from pinned host memory)."""
        return Batch(
            self.images.to(device, non_blocking=True), self.labels.to(device, non_blocking=True), self.n_labeled
        )

    @property
    def labeled_images(self) -> torch.Tensor:
        """The images that have labels: the first `n_labeled`, (n_labeled, 1, *patch)."""
        return self.images[: self.n_labeled]


def _plain(t) -> torch.Tensor:
    # MONAI returns MetaTensors; the network and the losses need no metadata.
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


def step_seeds(seed: int, rank: int, step: int) -> tuple[int, int]:
    """(torch seed, MONAI transform seed) of one step of one process: randomness is a function of the
    step, so resuming needs no hidden generator state."""
    words = np.random.SeedSequence([seed, rank, step]).generate_state(3, dtype=np.uint32)
    return int(words[0]) << 32 | int(words[1]), int(words[2])


class BatchMaker:
    """Makes a step's `Batch` from the prepared volumes with the labeled and the unlabeled patch transforms."""

    def __init__(self, data: PreparedData, labeled_transform, unlabeled_transform) -> None:
        self.data = data
        self.labeled_transform = labeled_transform
        self.unlabeled_transform = unlabeled_transform

    def make(self, indices: BatchIndices, transform_seed: int, device: torch.device | str) -> Batch:
        """The patches of the volumes `indices` names (labeled first), the transforms seeded from
        `transform_seed`, as a `Batch` on `device`."""
        return self.make_host(indices, transform_seed, pin=torch.device(device).type == "cuda").to(device)

    def make_host(self, indices: BatchIndices, transform_seed: int, pin: bool = False) -> Batch:
        """`make`'s batch in host memory (page-locked with `pin`, for asynchronous copies to a GPU). Uses
        no torch random generator (MONAI's own, seeded here), so it may run in another thread."""
        self.labeled_transform.set_random_state(seed=transform_seed)
        self.unlabeled_transform.set_random_state(seed=(transform_seed + 1) % 2**32)
        images, labels = [], []
        for i in indices.labeled:
            with warnings.catch_warnings():
                # A label without tumour voxels makes MONAI warn at every crop; the trainer says it once.
                warnings.filterwarnings("ignore", message="Num foregrounds 0")
                patches = self.labeled_transform(self.data.labeled[i])
            for patch in patches:
                images.append(_plain(patch["image"]))
                labels.append(_plain(patch["label"]))
        for j in indices.unlabeled:
            for patch in self.unlabeled_transform(self.data.unlabeled[j]):
                images.append(_plain(patch["image"]))
        images_t, labels_t = torch.stack(images).float(), torch.stack(labels)
        if pin:
            images_t, labels_t = images_t.pin_memory(), labels_t.pin_memory()
        return Batch(images_t, labels_t, len(labels))


def prefetched(jobs: Iterable[Job], make: Callable[[Job], Made], depth: int) -> Generator[Made, None, None]:
    """`make(job)` for each job, in the jobs' order, with up to `depth` made ahead in one background
    thread while the caller works on the current one (`depth` 0: each made when asked for).

    One thread makes them one after another, so what each makes does not depend on the timing.
    Leaving the loop early (break, an error) cancels what was not started and waits for the one
    being made; an error in `make` is raised where its result is asked for.
    """
    if depth <= 0:
        yield from map(make, jobs)
        return
    todo = iter(jobs)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ceds-batches")
    try:
        pending: deque[Future[Made]] = deque(pool.submit(make, job) for job in islice(todo, depth))
        while pending:
            current = pending.popleft()
            for job in islice(todo, 1):
                pending.append(pool.submit(make, job))
            yield current.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

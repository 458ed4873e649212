"""Turn a step's volume indices into tensors: patches of the labeled volumes first, then unlabeled."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ceds_deploy.training.cache import PreparedData
from ceds_deploy.training.sampler import BatchIndices


@dataclass
class Batch:
    """One step's tensors: `images` (N, 1, *patch) float32, the labeled patches first, their `labels`
    (n_labeled, 1, *patch) uint8, and `n_labeled`, the number of labeled patches."""

    images: torch.Tensor  # (N, 1, *patch) float32: labeled patches first
    labels: torch.Tensor  # (n_labeled, 1, *patch) uint8
    n_labeled: int

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
        return Batch(torch.stack(images).float().to(device), torch.stack(labels).to(device), len(labels))

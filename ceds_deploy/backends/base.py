"""The backend contract (after Polygraphy's runners): activate -> infer(batch) ... -> deactivate.

The base class checks state, shapes and dtypes once for every backend; subclasses implement
`_activate`, `_infer` and `_deactivate`, and import their heavy packages inside `_activate` so a
missing optional package is a clear `BackendUnavailableError`. No backend changes process-wide
state (torch flags, threads): what a backend needs it sets around its own calls and restores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch

from ceds_deploy.checkpoint import FileDigest
from ceds_deploy.errors import BackendError, ConfigError, ModelInputError, UsageError
from ceds_deploy.spec import ModelSpec


class WindowOutputs(NamedTuple):
    """What a backend returns for a batch of windows."""

    seg_logits: torch.Tensor  # (B, C, *roi) float32
    confidence: torch.Tensor  # (B, 1, *roi) float32, probability that the segmentation is right


Predictor = Callable[[torch.Tensor], WindowOutputs]

# On a CPU, windows are batched up to about this many voxels (4 windows of 32^3, 1 of 112x112x80):
# the batch that ran fastest per window in benchmarks/window_throughput.py (RESULTS.md).
CPU_BATCH_VOXELS = 131_072


def is_cuda(device: str) -> bool:
    """True for 'cuda' and 'cuda:N'."""
    return str(device) == "cuda" or str(device).startswith("cuda:")


class Backend(ABC):
    """One model artifact on one device; a context manager (activate on enter, deactivate on exit)."""

    name: ClassVar[str]
    # On a GPU: 4 windows of 112x112x80 ran 1.8x faster per window than 2 on an H200
    # (benchmarks/results/gpu_check_h200_baseline.json, cold_floor); a batch that runs out of memory is
    # retried in halves (scheduler), so a smaller card still works.
    default_batch_size: ClassVar[int] = 4

    def __init__(
        self, artifact: Path | None, spec: ModelSpec, *, device: str = "cpu", max_batch_size: int | None = None
    ) -> None:
        self.artifact = Path(artifact) if artifact is not None else None
        self.spec = spec
        self.device = device
        self.max_batch_size = int(max_batch_size or self.default_batch_size_for(spec, device))
        if self.max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        self.active = False
        self.description = self.name  # what actually runs (provider, precision), for the report
        self._digest = FileDigest(self.artifact) if self.artifact is not None else None

    @classmethod
    def default_batch_size_for(cls, spec: ModelSpec, device: str) -> int:
        """Windows per call when none is asked for: on a CPU by window size, else the backend's."""
        if device == "cpu":
            voxels = spec.roi_size[0] * spec.roi_size[1] * spec.roi_size[2]
            return max(1, min(4, CPU_BATCH_VOXELS // voxels))
        return cls.default_batch_size

    def activate(self) -> None:
        """Load the model (session, engine) and allocate what `infer` needs."""
        if not self.active:
            if self._digest is not None:
                self._digest.start()  # hashed while the model loads
            self._activate()
            self.active = True

    def artifact_digest(self) -> str | None:
        """SHA-256 of the model file (None for an in-memory network or a missing file), computed once
        per state of the file."""
        if self._digest is None or not self._digest.path.is_file():
            return None
        return self._digest.value()

    def deactivate(self) -> None:
        """Release the model; the backend may be activated again."""
        if self.active:
            self._deactivate()
            self.active = False

    def __enter__(self) -> Backend:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def __call__(self, batch: torch.Tensor) -> WindowOutputs:
        return self.infer(batch)

    def infer(self, batch: torch.Tensor) -> WindowOutputs:
        """(B, 1, *roi) float32 -> seg logits (B, C, *roi) and confidence (B, 1, *roi), float32.

        Raises `ModelInputError` for a wrong batch, `BackendError` for a backend used before
        `activate()` or one that returns wrongly shaped outputs.
        """
        if not self.active:
            raise UsageError(f"{self.name} backend used before activate()")
        if batch.ndim != 5 or batch.shape[1] != 1:
            raise ModelInputError(f"{self.name}: expected a (batch, 1, x, y, z) tensor, got {tuple(batch.shape)}")
        if batch.dtype != torch.float32:
            raise ModelInputError(f"{self.name}: expected float32 windows, got {batch.dtype}")
        if batch.shape[0] > self.max_batch_size:
            raise ModelInputError(
                f"{self.name}: batch of {batch.shape[0]} exceeds max_batch_size {self.max_batch_size}"
            )
        if any(int(n) % 16 for n in batch.shape[2:]):
            raise ModelInputError(f"{self.name}: window {tuple(batch.shape[2:])} must be multiples of 16")
        seg, conf = self._infer(batch)
        b, spatial = batch.shape[0], tuple(batch.shape[2:])
        if seg.shape[0] != b or tuple(seg.shape[2:]) != spatial or tuple(conf.shape) != (b, 1, *spatial):
            where = self.artifact or self.name
            raise BackendError(
                f"{where}: the model returned shapes {tuple(seg.shape)}, {tuple(conf.shape)} "
                f"for input {tuple(batch.shape)}; expected (B, C, *window) and (B, 1, *window)"
            )
        return WindowOutputs(seg.float(), conf.float())

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, batch: torch.Tensor) -> WindowOutputs: ...

    def _deactivate(self) -> None:
        return None

"""The backend contract (after Polygraphy's runners): activate -> infer(batch) ... -> deactivate.

The base class checks state, shapes and dtypes once for every backend and times each call;
subclasses implement `_activate`, `_infer` and `_deactivate`, and import their heavy packages
inside `_activate` so a missing optional package is a clear `BackendUnavailableError`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import torch

from ceds_deploy.errors import ModelInputError
from ceds_deploy.spec import ModelSpec
from ceds_deploy.stitch import WindowOutputs


# On a CPU, windows are batched up to about this many voxels: 32^3 windows ran 16% faster four at a
# time than one at a time, 112x112x80 windows 15% faster one at a time (benchmarks/RESULTS.md).
CPU_BATCH_VOXELS = 131_072


class Backend(ABC):
    name: ClassVar[str]
    default_batch_size: ClassVar[int] = 2  # on a GPU

    def __init__(self, artifact: Path | None, spec: ModelSpec, *, device: str = "cpu",
                 max_batch_size: int | None = None) -> None:
        self.artifact = Path(artifact) if artifact is not None else None
        self.spec = spec
        self.device = device
        self.max_batch_size = int(max_batch_size or self.default_batch_size_for(spec, device))
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        self.active = False
        self.call_seconds: list[float] = []
        self.description = self.name  # what actually runs (provider, precision), for the report

    @classmethod
    def default_batch_size_for(cls, spec: ModelSpec, device: str) -> int:
        if device == "cpu":
            voxels = spec.roi_size[0] * spec.roi_size[1] * spec.roi_size[2]
            return max(1, min(4, CPU_BATCH_VOXELS // voxels))
        return cls.default_batch_size

    def activate(self) -> None:
        if not self.active:
            self._activate()
            self.active = True

    def deactivate(self) -> None:
        if self.active:
            self._deactivate()
            self.active = False

    def __enter__(self) -> "Backend":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def __call__(self, batch: torch.Tensor) -> WindowOutputs:
        return self.infer(batch)

    def infer(self, batch: torch.Tensor) -> WindowOutputs:
        """(B, 1, *roi) float32 -> seg logits (B, C, *roi) and confidence (B, 1, *roi), float32."""
        if not self.active:
            raise RuntimeError(f"{self.name} backend used before activate()")
        if batch.ndim != 5 or batch.shape[1] != 1:
            raise ModelInputError(f"{self.name}: expected a (batch, 1, x, y, z) tensor, got {tuple(batch.shape)}")
        if batch.dtype != torch.float32:
            raise ModelInputError(f"{self.name}: expected float32 windows, got {batch.dtype}")
        if batch.shape[0] > self.max_batch_size:
            raise ModelInputError(f"{self.name}: batch of {batch.shape[0]} exceeds max_batch_size "
                                  f"{self.max_batch_size}")
        if any(int(n) % 16 for n in batch.shape[2:]):
            raise ModelInputError(f"{self.name}: window {tuple(batch.shape[2:])} must be multiples of 16")
        start = time.perf_counter()
        out = self._infer(batch)
        self.call_seconds.append(time.perf_counter() - start)
        b, spatial = batch.shape[0], tuple(batch.shape[2:])
        seg, conf = out
        if seg.shape[0] != b or tuple(seg.shape[2:]) != spatial or tuple(conf.shape) != (b, 1, *spatial):
            raise RuntimeError(f"{self.name} returned shapes {tuple(seg.shape)}, {tuple(conf.shape)} "
                               f"for input {tuple(batch.shape)}")
        return WindowOutputs(seg.float(), conf.float())

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, batch: torch.Tensor) -> WindowOutputs: ...

    def _deactivate(self) -> None:
        pass

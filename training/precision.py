"""The arithmetic of training steps: fp32, or mixed precision under `torch.autocast`.

`auto` (the default) is mixed precision on a GPU and fp32 on the CPU: bf16 where the GPU supports
it (no loss scaling needed: bf16 has fp32's range), else fp16 with a `GradScaler`. Only the
network's forward passes run under autocast; the losses (Dice, cross-entropy, confidence,
consistency) are computed in float32 outside it, and the weights, their gradients, the optimizer
state and the EMA teacher stay float32 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ceds_deploy.backends.base import is_cuda
from ceds_deploy.errors import CedsError, ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# PyTorch's oneDNN bf16 3D-convolution gradients were seen wrong now and then (garbage, NaN) on an AMD
# EPYC CPU with avx512_bf16 (torch 2.13; pytorch/pytorch#163347 is of that kind): said once per run.
CPU_BF16_NOTE = (
    "bf16 training on the CPU: PyTorch's oneDNN bf16 3D-convolution gradients were seen to come out "
    "wrong on some CPUs; fp32 is the CPU default, and a non-finite loss stops the run"
)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainPrecision:
    """A resolved training precision (`fp32`, `bf16` or `fp16`) on one device type."""

    name: str
    device_type: str  # "cuda" or "cpu"

    @property
    def mixed(self) -> bool:
        """True when forward passes run under autocast."""
        return self.name in _DTYPES

    @property
    def scaled(self) -> bool:
        """True when losses are scaled (fp16 gradients underflow without it)."""
        return self.name == "fp16"

    def autocast(self) -> AbstractContextManager:
        """The context of a forward pass: autocast to the precision's dtype, or nothing for fp32."""
        if not self.mixed:
            return nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=_DTYPES[self.name])

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A `GradScaler`, enabled for fp16 only (disabled, its calls pass losses and steps through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


def check_precision(precision: str, device: str) -> None:
    """`ConfigError` for an unknown precision, or fp16 asked for on the CPU."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and not is_cuda(device):
        raise ConfigError(
            "precision fp16 needs a CUDA device (fp16 training relies on GPU loss scaling); "
            "on the CPU use bf16 (mixed precision) or fp32"
        )


def resolve_precision(precision: str, device: str) -> TrainPrecision:
    """What `precision` means on `device`: auto -> fp32 on the CPU, bf16 on a GPU that supports it,
    else fp16 (with loss scaling). `ConfigError` as `check_precision`."""
    check_precision(precision, device)
    cuda = is_cuda(device)
    if precision == "auto":
        if not cuda:
            precision = "fp32"
        else:
            with torch.cuda.device(torch.device(device)):
                precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return TrainPrecision(precision, "cuda" if cuda else "cpu")


@contextmanager
def training_cuda_flags(device: str) -> Iterator[None]:
    """cuDNN autotuning while a run trains on a GPU (every step has the same patch shape), put back
    as it was afterwards; nothing on the CPU. TF32 is left as the process has it."""
    if not is_cuda(device):
        yield
        return
    saved = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def check_finite_losses(losses: dict[str, float], step: int, precision: TrainPrecision) -> None:
    """`CedsError` when a step's total loss is not finite: the weights it updated are lost, so the run
    stops there (its last checkpoint is the previous epoch's). With fp16 the `GradScaler` skips such
    steps itself, so nothing is checked then."""
    total = losses.get("loss_total", 0.0)
    if precision.scaled or math.isfinite(total):
        return
    hint = CPU_BF16_NOTE if (precision.name, precision.device_type) == ("bf16", "cpu") else "try a lower --lr"
    raise CedsError(f"training step {step}: the loss is {total} in {precision.name}; stopping ({hint})")

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
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from ceds_deploy.backends.base import is_cuda
from ceds_deploy.errors import CedsError, ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# oneDNN's low-precision 3D-convolution weight gradients come out as garbage or NaN (different in
# repeated identical passes) when an input side is smaller than the kernel: 3-4 voxels under a
# 5-kernel, 2 under a 3-kernel, 16+ channels (torch 2.13, AMD EPYC with avx512_bf16;
# pytorch/pytorch#163347 is of that kind). Those convolutions (the deepest levels of small patches,
# little of the work) run in float32 on the CPU; a non-finite loss still stops the run.
CPU_BF16_NOTE = (
    "bf16 training on the CPU: convolutions whose input is smaller than their kernel run in float32 "
    "(oneDNN computes their bf16 gradients wrong); a non-finite loss stops the run"
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

    def guard_convolutions(self, *nets: nn.Module) -> list[RemovableHandle]:
        """On the CPU under autocast: hooks on `nets`' 3D convolutions that run those with an input
        side smaller than the kernel in float32 (see `CPU_BF16_NOTE`); none otherwise. The hooks act
        only while CPU autocast is on, so the same networks validate in fp32 untouched."""
        if not self.mixed or self.device_type != "cpu":
            return []
        handles = []
        for net in nets:
            for conv in net.modules():
                if isinstance(conv, nn.Conv3d):
                    handles.append(conv.register_forward_pre_hook(_float32_when_smaller_than_kernel))
                    handles.append(conv.register_forward_hook(_end_float32, always_call=True))
        return handles

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A `GradScaler`, enabled for fp16 only (disabled, its calls pass losses and steps through)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.scaled)


_FLOAT32_SCOPE = "_ceds_float32_scope"


def _float32_when_smaller_than_kernel(conv: nn.Conv3d, args: tuple) -> tuple | None:
    (x,) = args
    if not torch.is_autocast_enabled("cpu") or all(s >= k for s, k in zip(x.shape[2:], conv.kernel_size)):
        return None
    scope = ExitStack()
    scope.enter_context(torch.autocast("cpu", enabled=False))
    setattr(conv, _FLOAT32_SCOPE, scope)
    return (x.float(),)


def _end_float32(conv: nn.Conv3d, args: tuple, output: torch.Tensor) -> None:
    scope = conv.__dict__.pop(_FLOAT32_SCOPE, None)
    if scope is not None:
        scope.close()


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
    hint = "try a lower --lr or --precision fp32" if precision.mixed else "try a lower --lr"
    raise CedsError(f"training step {step}: the loss is {total} in {precision.name}; stopping ({hint})")

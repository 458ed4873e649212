"""PyTorch backend: a training checkpoint (or an in-memory network) on CPU or CUDA."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from ceds_deploy.backends.base import Backend
from ceds_deploy.errors import BackendUnavailableError, ConfigError
from ceds_deploy.spec import ModelSpec
from ceds_deploy.stitch import WindowOutputs

PRECISIONS = ("fp32", "bf16", "fp16")


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, artifact: Path | None, spec: ModelSpec, *, device: str = "cpu",
                 max_batch_size: int | None = None, precision: str | None = None,
                 weights: str = "teacher", module: torch.nn.Module | None = None) -> None:
        super().__init__(artifact, spec, device=device, max_batch_size=max_batch_size)
        # fp16 autocast on CUDA by default; on the CPU fp32 unless bf16 is asked for (it is a lossy lever).
        self.precision = precision or ("fp16" if device.startswith("cuda") else "fp32")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "fp16" and not device.startswith("cuda"):
            raise ConfigError("fp16 needs a CUDA device; use bf16 on the CPU")
        self.weights = weights
        self._module = module
        self._net: torch.nn.Module | None = None

    @classmethod
    def from_module(cls, net: torch.nn.Module, spec: ModelSpec, device: str = "cpu",
                    max_batch_size: int | None = None, precision: str | None = None) -> "TorchBackend":
        """Wrap a network in memory (training validation uses this: the same code path as segment)."""
        return cls(None, spec, device=device, max_batch_size=max_batch_size, precision=precision, module=net)

    def _activate(self) -> None:
        from ceds_deploy.network import CedsInference

        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailableError("torch backend: --device cuda asked for, but this PyTorch "
                                          "has no CUDA GPU (torch.cuda.is_available() is False)")
        if self._module is None:
            from ceds_deploy.checkpoint import load_network

            net, _ = load_network(self.artifact, self.weights)
        else:
            net = self._module
        self._was_training = net.training
        wrapper = CedsInference(net).eval().to(self.device)
        if self.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
            if self._module is None:  # never change the memory format of a network being trained
                wrapper = wrapper.to(memory_format=torch.channels_last_3d)
        self._net = wrapper
        self.description = f"torch {self.precision} on {self.device}"

    def _autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type="cuda" if self.device.startswith("cuda") else "cpu", dtype=dtype)

    def _infer(self, batch: torch.Tensor) -> WindowOutputs:
        x = batch.to(self.device, non_blocking=True)
        if self.device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), self._autocast():
            seg, conf = self._net(x)
        return WindowOutputs(seg.float(), conf.float())

    def _deactivate(self) -> None:
        if self._module is not None and self._was_training:
            self._module.train()  # give a training network back in the mode we found it
        self._net = None

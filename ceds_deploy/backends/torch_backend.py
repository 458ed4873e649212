"""PyTorch backend: a training checkpoint (or an in-memory network) on CPU or CUDA.

Channels-last 3D on CUDA, and on the CPU for narrow networks where it pays. On the CPU a checkpoint's
network runs in its CPU form (`network.cpu_form`: BatchNorms folded, narrow convolutions reshaped;
the same outputs up to float32 rounding), unless `cpu_form=False`. On CUDA: pinned host
memory with asynchronous copies, cuDNN autotuning when asked (`cudnn_benchmark`: it costs seconds per
new window shape in a fresh process and gains about a tenth of the network's time, so it pays in
long-lived runs only; benchmarks/results/gpu_check_h200_baseline.json), and optionally the
fixed-shape call captured once per window shape as a CUDA graph and replayed (a short batch is padded
to the full batch so every call has the captured shape). The cuDNN and TF32 settings apply around
this backend's own calls only and are restored after each (`_cuda_flags`): nothing process-wide is
left changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ceds_deploy.backends.base import Backend, WindowOutputs, is_cuda
from ceds_deploy.errors import BackendUnavailableError, ConfigError, UsageError
from ceds_deploy.spec import ModelSpec

if TYPE_CHECKING:
    from ceds_deploy.network import CedsNet

# fp32 is strict IEEE fp32 on CUDA too; tf32 lets cuDNN/cuBLAS use TF32 tensor cores (PyTorch's own
# default for convolutions), on CUDA only.
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
CPU_CHANNELS_LAST_MAX_WIDTH = 8


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self,
        artifact: Path | None,
        spec: ModelSpec,
        *,
        device: str = "cpu",
        max_batch_size: int | None = None,
        precision: str | None = None,
        weights: str = "teacher",
        module: CedsNet | None = None,
        cuda_graph: bool = False,
        channels_last: bool | None = None,
        cudnn_benchmark: bool = False,
        cpu_form: bool = True,
    ) -> None:
        super().__init__(artifact, spec, device=device, max_batch_size=max_batch_size)
        # fp16 autocast on CUDA by default; on the CPU fp32 unless bf16 is asked for (it is a lossy lever).
        self.precision = precision or ("fp16" if is_cuda(device) else "fp32")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.precision == "fp16" and not is_cuda(device):
            raise ConfigError("fp16 needs a CUDA device; use bf16 on the CPU")
        if self.precision == "tf32" and not is_cuda(device):
            raise ConfigError("tf32 needs a CUDA device; on the CPU use fp32 or bf16")
        if cuda_graph and not is_cuda(device):
            raise ConfigError("CUDA graphs need --device cuda")
        self.cuda_graph = cuda_graph
        self.cudnn_benchmark = cudnn_benchmark
        self.channels_last = channels_last
        self.cpu_form = cpu_form
        self._graphs: dict[tuple[int, ...], tuple] = {}
        self.weights = weights
        self._module = module
        self._net: torch.nn.Module | None = None

    @classmethod
    def from_module(
        cls,
        net: CedsNet,
        spec: ModelSpec,
        device: str = "cpu",
        max_batch_size: int | None = None,
        precision: str | None = None,
    ) -> TorchBackend:
        """Wrap a network in memory (training validation uses this: the same code path as segment)."""
        return cls(None, spec, device=device, max_batch_size=max_batch_size, precision=precision, module=net)

    def _activate(self) -> None:
        from ceds_deploy.network import CedsInference
        from ceds_deploy.network.cpu_form import CpuInference

        if is_cuda(self.device) and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "torch backend: --device cuda asked for, but this PyTorch "
                "has no CUDA GPU (torch.cuda.is_available() is False)"
            )
        if self._module is not None:
            net = self._module
        elif self.artifact is not None:
            from ceds_deploy.checkpoint import load_network

            net, _ = load_network(self.artifact, self.weights, map_location=self.device)  # straight to the device
        else:
            raise ConfigError("torch backend needs a checkpoint or a network (from_module)")
        self._was_training = net.training
        # Never for a network being trained (validation wraps it): its memory format stays.
        rewritten = self.cpu_form and self._module is None and not is_cuda(self.device)
        wrapper = CpuInference(net.eval(), in_place=True) if rewritten else CedsInference(net).eval().to(self.device)
        self._channels_last = self._module is None and self._channels_last_pays()
        if self._channels_last:
            wrapper = wrapper.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]  # stubs lack it
        self._net = wrapper
        graph = ", CUDA graph" if self.cuda_graph else ""
        layout = (", CPU form" if rewritten else "") + (", channels-last" if self._channels_last else "")
        tuned = ", cuDNN autotuned" if self.cudnn_benchmark and is_cuda(self.device) else ""
        self.description = f"torch {self.precision} on {self.device}{layout}{graph}{tuned}"

    def _channels_last_pays(self) -> bool:
        """Channels-last 3D: asked for, else on the GPU always; on the CPU for narrow networks only
        (benchmarks/window_throughput.py: faster there up to width 8, slower at the paper's 16)."""
        if self.channels_last is not None:
            return self.channels_last
        return is_cuda(self.device) or self.spec.width <= CPU_CHANNELS_LAST_MAX_WIDTH

    def _autocast(self, cache_enabled: bool = True):
        if self.precision in ("fp32", "tf32"):
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        # Graph capture needs the autocast weight cache off (cast weights are recorded in the graph).
        return torch.autocast(
            device_type="cuda" if is_cuda(self.device) else "cpu", dtype=dtype, cache_enabled=cache_enabled
        )

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if is_cuda(self.device):
            host = batch if batch.is_cuda else batch.pin_memory()  # pinned: the copy runs asynchronously
            batch = host.to(self.device, non_blocking=True)
        return batch.contiguous(memory_format=torch.channels_last_3d) if self._channels_last else batch

    @contextmanager
    def _cuda_flags(self) -> Iterator[None]:
        """cuDNN autotuning as asked and TF32 as the precision asks, for the duration of one call on
        this backend's device; the previous values come back after."""
        if not is_cuda(self.device):
            yield
            return
        tf32 = self.precision == "tf32"
        saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        try:
            torch.backends.cudnn.benchmark = self.cudnn_benchmark
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            with torch.cuda.device(torch.device(self.device)):
                yield
        finally:
            (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = (
                saved
            )

    def _infer(self, batch: torch.Tensor) -> WindowOutputs:
        with self._cuda_flags():
            if self.cuda_graph:
                return self._infer_graph(batch)
            x = self._to_device(batch)
            with torch.inference_mode(), self._autocast():
                seg, conf = self._network()(x)
            return WindowOutputs(seg.float(), conf.float())

    def _infer_graph(self, batch: torch.Tensor) -> WindowOutputs:
        """Replay the call captured for this window shape (captured on first use)."""
        b = batch.shape[0]
        shape = (self.max_batch_size, *batch.shape[1:])
        if shape not in self._graphs:
            self._graphs[shape] = self._capture(shape)
        graph, static_in, static_seg, static_conf = self._graphs[shape]
        static_in[:b].copy_(self._to_device(batch), non_blocking=True)
        if b < shape[0]:
            static_in[b:].zero_()
        graph.replay()
        # Copies: the static outputs are overwritten by the next replay.
        return WindowOutputs(static_seg[:b].float().clone(), static_conf[:b].float().clone())

    def _capture(self, shape: tuple[int, ...]) -> tuple:
        static_in = torch.zeros(shape, device=self.device).contiguous(memory_format=torch.channels_last_3d)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad(), self._autocast(cache_enabled=False):
            for _ in range(3):  # warm-up on a side stream: cuDNN autotuning and allocations happen here
                self._network()(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a pipeline's readers and writers may allocate and synchronise on their own
        # streams meanwhile (inference/side_streams.py); only this thread's calls would break the capture.
        capture = torch.cuda.graph(graph, capture_error_mode="thread_local")
        with capture, torch.no_grad(), self._autocast(cache_enabled=False):
            seg, conf = self._network()(static_in)
        return graph, static_in, seg, conf

    def _network(self) -> torch.nn.Module:
        if self._net is None:
            raise UsageError("torch backend used before activate()")
        return self._net

    def _deactivate(self) -> None:
        if self._module is not None and self._was_training:
            self._module.train()  # give a training network back in the mode we found it
        self._net = None
        self._graphs.clear()

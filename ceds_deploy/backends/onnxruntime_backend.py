"""ONNX Runtime backend: an exported ONNX file with the TensorRT, CUDA or CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ceds_deploy.backends.base import Backend, WindowOutputs, is_cuda
from ceds_deploy.errors import ArtifactError, BackendUnavailableError
from ceds_deploy.machine import usable_cores
from ceds_deploy.spec import INPUT_NAME, OUTPUT_NAMES


def physical_cores() -> int:
    """Physical cores this process may use (hyper-threads share one core's convolution units)."""
    allowed = usable_cores()
    try:
        cores, current = set(), {}
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("physical id", "core id"):
                    current[key] = value.strip()
                elif not line.strip() and current:
                    cores.add((current.get("physical id"), current.get("core id")))
                    current = {}
        if current:
            cores.add((current.get("physical id"), current.get("core id")))
        if cores and None not in {c for pair in cores for c in pair}:
            return max(1, min(allowed, len(cores)))
    except OSError:
        pass
    return max(1, allowed)


def providers_for(
    device: str, available: list[str], cudnn_benchmark: bool = False
) -> list[str | tuple[str, dict[str, str]]]:
    """Execution providers for `device` ('cpu', 'cuda' or 'cuda:N'), best first; raises
    `BackendUnavailableError` when the device's provider is missing. The CUDA provider's own default
    is an exhaustive cuDNN search per shape (seconds in a fresh process); it runs only when asked."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if is_cuda(device):
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailableError(
                "onnxruntime backend: --device cuda needs onnxruntime-gpu with the CUDA execution "
                f"provider; this onnxruntime offers {available}"
            )
        # Not the TensorRT EP: it builds engines on first use (minutes); the native tensorrt backend
        # with its engine cache is the way to TensorRT.
        index = device.partition(":")[2] or "0"
        search = "EXHAUSTIVE" if cudnn_benchmark else "HEURISTIC"
        return [
            ("CUDAExecutionProvider", {"device_id": index, "cudnn_conv_algo_search": search}),
            "CPUExecutionProvider",
        ]
    raise BackendUnavailableError(f"onnxruntime backend: unknown device {device!r} (use cpu, cuda or cuda:N)")


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        artifact: Path,
        spec,
        *,
        device: str = "cpu",
        max_batch_size: int | None = None,
        threads: int | None = None,
        cudnn_benchmark: bool = False,
    ) -> None:
        super().__init__(artifact, spec, device=device, max_batch_size=max_batch_size)
        self.threads = threads
        self.cudnn_benchmark = cudnn_benchmark

    def _activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailableError(
                f"onnxruntime backend: onnxruntime is not installed ({err}); "
                "pip install onnxruntime (or onnxruntime-gpu)"
            ) from None
        providers = providers_for(self.device, ort.get_available_providers(), self.cudnn_benchmark)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads or physical_cores()
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(str(self.artifact), sess_options=options, providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise ArtifactError(f"{self.artifact}: ONNX Runtime cannot load it: {str(err).splitlines()[0]}") from None
        used = self._session.get_providers()
        if is_cuda(self.device) and "CUDAExecutionProvider" not in used:
            raise BackendUnavailableError(f"onnxruntime backend: CUDA provider failed to start (got {used})")
        self._outputs = [o.name for o in self._session.get_outputs()]
        if tuple(self._outputs[:2]) != OUTPUT_NAMES:
            raise ArtifactError(f"{self.artifact}: outputs are {self._outputs}, expected {', '.join(OUTPUT_NAMES)}")
        self.description = f"onnxruntime {ort.__version__} ({used[0]}, {options.intra_op_num_threads} threads)"

    def _infer(self, batch: torch.Tensor) -> WindowOutputs:
        feed = {INPUT_NAME: np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)}
        seg, conf = self._session.run(list(OUTPUT_NAMES), feed)
        return WindowOutputs(torch.from_numpy(seg), torch.from_numpy(conf))

    def _deactivate(self) -> None:
        self._session = None

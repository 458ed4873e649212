"""Open a model artifact as a ready-to-activate backend: read its spec, choose the backend, and for an
ONNX file on TensorRT hand the backend the engine cache (engines are built on first use on each
machine, as ONNX Runtime's TensorRT provider does). The composition point of `backends` (running)
and `export` (building); `ceds segment`, the demo and the benchmarks call it."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from ceds_deploy.backends import create_backend, resolve_backend
from ceds_deploy.backends.base import Backend
from ceds_deploy.backends.tensorrt_runtime import BatchProfile, RuntimeInfo
from ceds_deploy.spec import ModelSpec


def open_backend(
    model: Path,
    *,
    backend: str = "auto",
    device: str = "cpu",
    max_batch_size: int | None = None,
    precision: str | None = None,
    cuda_graph: bool = False,
    cudnn_benchmark: bool = False,
) -> tuple[Backend, str]:
    """(an inactive backend for the model artifact `model`, why that backend was chosen).

    The artifact's own `ModelSpec` says how to pre-process; `precision` and `cuda_graph` are checked
    against what the chosen backend supports; `cudnn_benchmark` (cuDNN autotuning on CUDA) applies
    to torch and onnxruntime (TensorRT chooses its tactics when the engine is built). Raises
    `ArtifactError`, `BackendUnavailableError` or `ConfigError` with one line naming the problem.
    """
    from ceds_deploy.artifacts import artifact_kind, read_spec
    from ceds_deploy.errors import ConfigError

    kind = artifact_kind(model)
    spec = read_spec(model)
    name, why = resolve_backend(backend, kind, device)
    options: dict[str, Any] = {}
    if name == "tensorrt" and kind == "onnx":
        options["engine_for_onnx"] = partial(_cached_engine, Path(model), spec, device)
    if precision is not None:
        if name == "onnxruntime":
            raise ConfigError(
                "--precision applies to the torch and tensorrt backends; the onnxruntime backend "
                "runs the ONNX file's own precision"
            )
        options["precision"] = precision
    if cuda_graph:
        if name not in ("torch", "tensorrt"):
            raise ConfigError(f"--cuda-graph applies to the torch and tensorrt backends; the {name} backend was chosen")
        options["cuda_graph"] = True
    if cudnn_benchmark and name in ("torch", "onnxruntime"):
        options["cudnn_benchmark"] = True
    return create_backend(name, model, spec, device=device, max_batch_size=max_batch_size, **options), why


def _cached_engine(onnx: Path, spec: ModelSpec, device: str, runtime: RuntimeInfo, profile: BatchProfile) -> Path:
    """The engine cache's engine of `onnx` for this machine and profile, built (and checked) on first use."""
    from ceds_deploy.export.engine_cache import get_or_build

    return get_or_build(onnx, spec, runtime, profile=profile, device=device)

"""Backends behind one contract, created by name; heavy packages are imported on activation."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ceds_deploy.errors import BackendUnavailableError

if TYPE_CHECKING:
    from ceds_deploy.backends.base import Backend
    from ceds_deploy.spec import ModelSpec

BACKEND_CLASSES = {
    "torch": "ceds_deploy.backends.torch_backend:TorchBackend",
    "onnxruntime": "ceds_deploy.backends.onnxruntime_backend:OnnxRuntimeBackend",
    "tensorrt": "ceds_deploy.backends.tensorrt_backend:TensorRTBackend",
}
BACKEND_NAMES = ("auto", *BACKEND_CLASSES)
# Which backends can run each artifact kind, fastest first.
BACKENDS_FOR_KIND = {
    "checkpoint": ("torch",),
    "onnx": ("tensorrt", "onnxruntime"),
    "engine": ("tensorrt",),
}


def backend_class(name: str) -> type[Backend]:
    """The class of a named backend; `BackendUnavailableError` when unknown or not installed."""
    if name not in BACKEND_CLASSES:
        raise BackendUnavailableError(f"unknown backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    module_name, _, cls_name = BACKEND_CLASSES[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise BackendUnavailableError(f"{name} backend is not available in this install ({err})") from None
    return getattr(module, cls_name)


def _installed(name: str, device: str) -> bool:
    from ceds_deploy.backends.base import is_cuda

    if name == "tensorrt":
        if not is_cuda(device) or importlib.util.find_spec("tensorrt") is None:
            return False
        import torch

        return torch.cuda.is_available()
    if name == "onnxruntime":
        return importlib.util.find_spec("onnxruntime") is not None
    return True


def resolve_backend(requested: str, artifact_kind: str, device: str) -> tuple[str, str]:
    """(backend name, why) for a request; 'auto' picks the fastest installed backend for the
    artifact and device. A named backend that cannot run the artifact is an error, never a fallback."""
    candidates = BACKENDS_FOR_KIND[artifact_kind]
    if requested == "auto":
        for name in candidates:
            if _installed(name, device):
                return name, f"auto: fastest installed backend for a {artifact_kind} on {device}"
        raise BackendUnavailableError(
            f"no installed backend can run a {artifact_kind} on {device} (needs one of {', '.join(candidates)})"
        )
    if requested not in BACKEND_CLASSES:
        raise BackendUnavailableError(f"unknown backend {requested!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if requested not in candidates:
        raise BackendUnavailableError(
            f"the {requested} backend cannot run a {artifact_kind}; "
            f"use {' or '.join(candidates)}"
            + (" (export the checkpoint first: ceds export)" if artifact_kind == "checkpoint" else "")
        )
    return requested, "requested"


def create_backend(
    name: str,
    artifact: Path,
    spec: ModelSpec,
    *,
    device: str = "cpu",
    max_batch_size: int | None = None,
    **options: Any,
) -> Backend:
    """An inactive backend of class `name` for `artifact`; use it as a context manager.
    `options` are the backend's own (e.g. precision, cuda_graph); an unknown one is a TypeError."""
    cls: Any = backend_class(name)
    backend: Backend = cls(artifact, spec, device=device, max_batch_size=max_batch_size, **options)
    return backend

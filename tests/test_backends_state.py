"""Backends leave the process as they found it: no torch flag, thread count, environment variable
or working folder changed by creating, running and closing one (the library has no global state)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import GEOMETRIES, sphere_scan

from ceds_deploy.backends import create_backend
from ceds_deploy.inference import SegmentOptions, segment_volume


def process_state() -> dict:
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    return {
        "cudnn": (cudnn.enabled, cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32),
        "matmul_tf32": matmul.allow_tf32,
        "mkldnn": torch.backends.mkldnn.enabled,
        "threads": (torch.get_num_threads(), torch.get_num_interop_threads()),
        "grad": torch.is_grad_enabled(),
        "dtype": torch.get_default_dtype(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "float32_matmul": torch.get_float32_matmul_precision(),
        "environment": dict(os.environ),
        "cwd": os.getcwd(),
    }


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_checkpoint):
    from ceds_deploy.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("state") / "tiny.onnx"
    export_checkpoint(tiny_checkpoint, out, validate=False)
    return out


@pytest.mark.parametrize("name", ["torch", "onnxruntime"])
def test_a_backend_leaves_process_state_as_it_was(name, tiny_checkpoint, tiny_onnx, tiny_spec):
    artifact = tiny_checkpoint if name == "torch" else tiny_onnx
    image, _ = sphere_scan(GEOMETRIES["axial_lps"])
    before = process_state()
    backend = create_backend(name, artifact, tiny_spec, device="cpu")
    with backend:
        backend.infer(torch.rand(2, 1, 32, 32, 32))
        result = segment_volume(image, backend, SegmentOptions(overlap=0.5))
    assert np.isfinite(result.confidence).all()
    assert process_state() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "fp16"])
def test_the_torch_backend_on_cuda_restores_cudnn_and_tf32(precision, tiny_checkpoint, tiny_spec):
    """The training slow-down after validation came from these flags: each call sets them and
    puts them back."""
    before = process_state()
    with create_backend("torch", tiny_checkpoint, tiny_spec, device="cuda", precision=precision) as backend:
        backend.infer(torch.rand(2, 1, 32, 32, 32))
        assert process_state() == before  # between calls too
    assert process_state() == before

"""Backends leave the process as they found it: no torch flag, thread count, environment variable
or working folder changed by creating, running and closing one (the library has no global state)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import GEOMETRIES, process_state, sphere_scan

from ceds_deploy.backends import create_backend
from ceds_deploy.inference import SegmentOptions, segment_volume


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory, tiny_checkpoint):
    from ceds_deploy.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("state") / "tiny.onnx"
    export_checkpoint(tiny_checkpoint, out, validate=False)
    return out


@pytest.mark.parametrize("name, precision", [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", None)])
def test_a_backend_leaves_process_state_as_it_was(name, precision, tiny_checkpoint, tiny_onnx, tiny_spec):
    """Every backend (and precision) the CPU runs: created, run, closed, nothing process-wide changed
    (cuDNN, TF32, threads, grad and autocast modes ...)."""
    artifact = tiny_checkpoint if name == "torch" else tiny_onnx
    image, _ = sphere_scan(GEOMETRIES["axial_lps"])
    before = process_state()
    options = {"precision": precision} if precision else {}
    backend = create_backend(name, artifact, tiny_spec, device="cpu", **options)
    with backend:
        backend.infer(torch.rand(2, 1, 32, 32, 32))
        result = segment_volume(image, backend, SegmentOptions(overlap=0.5))
        assert process_state() == before  # between calls too
    assert np.isfinite(result.confidence).all()
    assert process_state() == before


def test_the_torch_backend_refuses_fp16_on_the_cpu(tiny_checkpoint, tiny_spec):
    from ceds_deploy.errors import ConfigError

    before = process_state()
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        create_backend("torch", tiny_checkpoint, tiny_spec, device="cpu", precision="fp16")
    assert process_state() == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("precision", ["fp32", "tf32", "bf16", "fp16"])
def test_the_torch_backend_on_cuda_restores_cudnn_and_tf32(precision, tiny_checkpoint, tiny_spec):
    """The training slow-down after validation came from these flags: each call sets them and
    puts them back."""
    before = process_state()
    with create_backend("torch", tiny_checkpoint, tiny_spec, device="cuda", precision=precision) as backend:
        backend.infer(torch.rand(2, 1, 32, 32, 32))
        assert process_state() == before  # between calls too
    assert process_state() == before

"""GPU paths: CUDA-graph replay against eager, and pre-processing, stitching and resampling on the
GPU against the CPU. Skipped, with the reason, where PyTorch has no CUDA GPU (CI); run on a GPU
machine by `benchmarks/gpu_check.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ceds_deploy.backends import create_backend
from ceds_deploy.inference import SegmentOptions, segment_volume
from ceds_deploy.synthetic import make_case

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)


def test_cuda_graph_replay_matches_eager_and_follows_new_inputs(tiny_checkpoint, tiny_spec):
    torch.manual_seed(3)
    first, second = torch.rand(3, 1, 32, 32, 32), torch.rand(4, 1, 32, 32, 32)
    with (
        create_backend("torch", tiny_checkpoint, tiny_spec, device="cuda", max_batch_size=4, precision="fp16") as eager,
        create_backend(
            "torch", tiny_checkpoint, tiny_spec, device="cuda", max_batch_size=4, precision="fp16", cuda_graph=True
        ) as graph,
    ):
        assert "CUDA graph" in graph.description
        for x in (first, second, first):  # a short batch (padded), a full one, and back
            expected, got = eager.infer(x), graph.infer(x)
            assert got.seg_logits.shape == expected.seg_logits.shape == (x.shape[0], 2, 32, 32, 32)
            assert float((got.seg_logits - expected.seg_logits).abs().max()) < 2e-2
            assert float((got.confidence - expected.confidence).abs().max()) < 5e-3
        a, b = graph.infer(first).seg_logits, graph.infer(second[:3]).seg_logits
        assert float((a - b).abs().max()) > 1e-3  # the replay reads the new input, not the captured one


def test_gpu_preprocessing_stitching_and_restore_match_the_cpu(tiny_checkpoint, tiny_spec):
    image, _ = make_case(0, seed=5, size="small")
    results = {}
    for device in ("cpu", "cuda"):
        with create_backend(
            "torch", tiny_checkpoint, tiny_spec, device=device, max_batch_size=2, precision="fp32"
        ) as b:
            results[device] = segment_volume(image, b, SegmentOptions(save_probabilities=True))
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu.windows == cpu.windows
    assert np.abs(gpu.probabilities - cpu.probabilities).max() < 1e-3
    assert np.abs(gpu.confidence - cpu.confidence).max() < 1e-3
    assert (gpu.mask != cpu.mask).mean() < 1e-4


def test_gpu_masks_thresholded_on_the_device_match_the_cpu(tiny_checkpoint, tiny_spec):
    """Without probabilities the GPU path keeps the model-grid image on the GPU, cuts the windows
    there and thresholds the restored logits there (only a uint8 mask crosses to the host)."""
    image, _ = make_case(1, seed=5, size="small")
    results = {}
    for device in ("cpu", "cuda"):
        with create_backend("torch", tiny_checkpoint, tiny_spec, device=device, precision="fp32") as b:
            results[device] = segment_volume(image, b, SegmentOptions())
    cpu, gpu = results["cpu"], results["cuda"]
    assert gpu.mask.dtype == np.uint8 and gpu.mask.shape == cpu.mask.shape and gpu.windows == cpu.windows
    assert (gpu.mask != cpu.mask).mean() < 1e-4
    assert np.abs(gpu.confidence - cpu.confidence).max() < 1e-3


@pytest.mark.parametrize(
    "options",
    [
        {"precision": "fp16", "cudnn_benchmark": True},
        {"precision": "tf32"},
        {"precision": "fp16", "cuda_graph": True, "cudnn_benchmark": True},
    ],
)
def test_a_cuda_backend_leaves_process_state_as_it_was(options, tiny_checkpoint, tiny_spec):
    from helpers import process_state

    image, _ = make_case(2, seed=5, size="small")
    before = process_state()
    with create_backend("torch", tiny_checkpoint, tiny_spec, device="cuda", max_batch_size=2, **options) as b:
        b.infer(torch.rand(2, 1, 32, 32, 32))
        segment_volume(image, b, SegmentOptions())
        assert process_state() == before  # between calls too
    assert process_state() == before


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_side_streams_give_the_same_outputs_as_one_stream(cuda_graph, tiny_checkpoint, tiny_spec, tmp_path):
    """Readers and writers on their own CUDA streams (inference/side_streams.py), several at once and
    beside a graph capture, write the files one stream writes."""
    from ceds_deploy.inference import segment_folder
    from ceds_deploy.io import read_scan, write_volume

    scans = tmp_path / "scans"
    scans.mkdir()
    for k in range(5):
        image, _ = make_case(10 + k, seed=5, size="small")
        write_volume(scans / f"case{k}.nii.gz", image.array, image.geometry)
    outputs = {}
    for side in (False, True):
        with create_backend(
            "torch",
            tiny_checkpoint,
            tiny_spec,
            device="cuda",
            max_batch_size=2,
            precision="fp16",
            cuda_graph=cuda_graph,
        ) as b:
            run = segment_folder(scans, tmp_path / f"out-{side}", b, SegmentOptions(io_workers=3, side_streams=side))
        assert [r.status for r in run.rows] == ["ok"] * 5
        outputs[side] = {
            p.name: read_scan(p, dtype=None).array for p in sorted((tmp_path / f"out-{side}").glob("*.nii.gz"))
        }
    assert outputs[True].keys() == outputs[False].keys() and len(outputs[True]) == 10
    for name, array in outputs[False].items():  # the same kernels: equal up to a rare tie of fp16 sums
        if name.endswith("_confidence.nii.gz"):
            assert np.abs(outputs[True][name] - array).max() <= 1.5 / 1024, name
        else:
            assert (outputs[True][name] != array).mean() < 1e-4, name

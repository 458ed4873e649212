"""Window planning and stitching: MONAI parity, identity/constant stitching exact to float32
rounding, cross-case batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ceds_deploy.backends.base import WindowOutputs
from ceds_deploy.inference.scheduler import CaseJob, predict_cases, sliding_window_predict
from ceds_deploy.inference.windows import blend_weights, gaussian_importance, plan_windows, windows_with_content


@pytest.mark.parametrize(
    "shape,roi,overlap",
    [
        ((70, 60, 50), (32, 32, 16), 0.25),
        ((224, 224, 160), (112, 112, 80), 0.25),
        ((32, 40, 33), (32, 32, 32), 0.5),
        ((100, 50, 64), (48, 32, 16), 0.0),
    ],
)
def test_window_positions_match_monai(shape, roi, overlap):
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    interval = _get_scan_interval(shape, roi, 3, (overlap,) * 3)
    expected = [tuple(s.start for s in sl) for sl in dense_patch_slices(shape, roi, interval)]
    plan = plan_windows(shape, roi, overlap)
    assert [tuple(int(v) for v in s) for s in plan.starts] == expected


def test_reference_window_count():
    # The numbers: 27 windows for a 224x224x160 volume at overlap 0.25.
    assert len(plan_windows((224, 224, 160), (112, 112, 80), 0.25)) == 27


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.2])
def test_overlap_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match=f"overlap must be >= 0 and < 1, got {bad}"):
        plan_windows((64, 64, 64), (32, 32, 32), bad)


def test_gaussian_weights_match_monai():
    from monai.data.utils import compute_importance_map

    for roi in [(112, 112, 80), (32, 48, 16)]:
        np.testing.assert_allclose(
            gaussian_importance(roi), compute_importance_map(roi, "gaussian").numpy(), rtol=1e-5, atol=1e-7
        )


def _net_predictor(net):
    from ceds_deploy.network import CedsInference

    wrapper = CedsInference(net.eval())

    def predict(batch: torch.Tensor) -> WindowOutputs:
        with torch.inference_mode():
            return WindowOutputs(*wrapper(batch))

    return predict, wrapper


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_stitched_logits_equal_monai_sliding_window_inference(blend):
    from monai.inferers import sliding_window_inference

    from ceds_deploy.network import CedsNet, CedsNetConfig

    torch.manual_seed(0)
    predict, wrapper = _net_predictor(CedsNet(CedsNetConfig(width=4)))
    image = np.random.default_rng(0).random((48, 40, 36), dtype=np.float32)
    plan = plan_windows(image.shape, (32, 32, 32), 0.25)
    seg, conf = sliding_window_predict(image, plan, predict, batch_size=3, blend=blend)
    with torch.inference_mode():
        reference = sliding_window_inference(
            torch.from_numpy(image)[None, None], (32, 32, 32), 4, lambda x: wrapper(x)[0], overlap=0.25, mode=blend
        )
    assert seg.shape == (2, 48, 40, 36) and conf.shape == (1, 48, 40, 36)
    assert float((seg - reference[0]).abs().max()) <= 1e-4


def test_identity_predictor_stitches_exactly():
    image = np.random.default_rng(1).random((50, 41, 37), dtype=np.float32)
    plan = plan_windows(image.shape, (16, 16, 16), 0.5)

    def identity(batch):
        return WindowOutputs(torch.cat([batch, -batch], 1), batch.clone())

    for blend in ("constant", "gaussian"):
        seg, conf = sliding_window_predict(image, plan, identity, batch_size=4, blend=blend)
        np.testing.assert_allclose(seg[0].numpy(), image, atol=1e-6, rtol=0)
        np.testing.assert_allclose(seg[1].numpy(), -image, atol=1e-6, rtol=0)
        np.testing.assert_allclose(conf[0].numpy(), image, atol=1e-6, rtol=0)


def test_unknown_blend_is_refused_before_any_window_runs():
    calls = []
    with pytest.raises(ValueError, match="blend must be one of constant, gaussian, got 'cosine'"):
        sliding_window_predict(
            np.zeros((16, 16, 16), np.float32),
            plan_windows((16, 16, 16), (16, 16, 16), 0.0),
            lambda b: calls.append(b),
            batch_size=1,
            blend="cosine",
        )
    assert not calls
    assert blend_weights((4, 4, 4), "constant").min() == 1.0


def test_window_edges_leave_no_seam_in_the_confidence_map():
    """A confidence head that is unsure at every window's edge (as real ones are): with constant
    blending of the map its overlaps would show as bands; the map is blended with Gaussian weights,
    so inside the volume, where windows overlap, it stays near the windows' centre value."""
    image = np.zeros((64, 64, 64), np.float32)
    plan = plan_windows(image.shape, (32, 32, 32), 0.5)
    edge = np.zeros((32, 32, 32), bool)
    edge[:2], edge[-2:], edge[:, :2], edge[:, -2:], edge[:, :, :2], edge[:, :, -2:] = (True,) * 6
    window_conf = torch.from_numpy(np.where(edge, 0.2, 0.9).astype(np.float32))

    def edgy(batch):
        b = batch.shape[0]
        return WindowOutputs(torch.zeros((b, 2, 32, 32, 32)), window_conf.expand(b, 1, 32, 32, 32).clone())

    _, conf = sliding_window_predict(image, plan, edgy, batch_size=2, blend="constant")
    inner = conf[0, 8:-8, 8:-8, 8:-8].numpy()  # every voxel here is covered by more than one window
    constant_blend = (0.9 * 1 + 0.2 * 1) / 2  # a seam voxel: one window's edge, one window's middle
    assert inner.min() > 0.85 > constant_blend


def test_constant_predictor_stitches_exactly():
    image = np.zeros((40, 40, 40), np.float32)
    plan = plan_windows(image.shape, (16, 16, 16), 0.25)

    def constant(batch):
        b = batch.shape[0]
        return WindowOutputs(torch.full((b, 2, 16, 16, 16), 3.25), torch.full((b, 1, 16, 16, 16), 0.75))

    seg, conf = sliding_window_predict(image, plan, constant, batch_size=5)
    # Exact up to float32 rounding of sum(w * v) / sum(w).
    np.testing.assert_allclose(seg.numpy(), 3.25, rtol=1e-6, atol=0)
    np.testing.assert_allclose(conf.numpy(), 0.75, rtol=1e-6, atol=0)


def test_windows_of_the_next_case_fill_the_batch():
    sizes: list[int] = []

    def record(batch):
        sizes.append(batch.shape[0])
        return WindowOutputs(torch.cat([batch, batch], 1), torch.ones_like(batch))

    rng = np.random.default_rng(2)
    images = [rng.random(s, dtype=np.float32) for s in [(16, 16, 24), (16, 16, 40), (32, 16, 16)]]
    jobs = [CaseJob(key=i, image=im, windows=plan_windows(im.shape, (16, 16, 16), 0.0)) for i, im in enumerate(images)]
    counts = [len(j.windows) for j in jobs]  # 2, 3, 2 windows
    finished = list(predict_cases(iter(jobs), record, batch_size=4, blend="constant"))
    assert sizes == [4, 3] and sum(counts) == 7
    assert [job.key for job, _, _ in finished] == [0, 1, 2]
    for (_, seg, _), image in zip(finished, images):
        np.testing.assert_allclose(seg[0].numpy(), image, atol=1e-6)


def test_a_short_last_batch_is_padded_to_one_shape_and_its_padding_dropped():
    """On CUDA the last batch is padded (one shape: cuDNN autotunes once); results are unchanged."""
    sizes: list[int] = []

    def record(batch):
        sizes.append(batch.shape[0])
        return WindowOutputs(torch.cat([batch, -batch], 1), torch.sigmoid(batch))

    rng = np.random.default_rng(3)
    image = rng.random((16, 16, 40), dtype=np.float32)
    plan = plan_windows(image.shape, (16, 16, 16), 0.25)  # 3 windows: batches of 2 and 1
    plain = sliding_window_predict(image, plan, record, batch_size=2)
    assert sizes == [2, 1]
    sizes.clear()
    padded = sliding_window_predict(image, plan, record, batch_size=2, pad_batches=True)
    assert sizes == [2, 2]
    for a, b in zip(plain, padded):
        assert torch.equal(a, b)


def test_air_windows_are_skipped_and_left_as_background():
    image = np.zeros((64, 32, 32), np.float32)
    image[40:50, 10:20, 10:20] = 0.6  # body only in the far end
    plan = plan_windows(image.shape, (32, 32, 32), 0.0)
    kept = windows_with_content(plan, image)
    assert len(plan) == 2 and len(kept) == 1
    calls = []

    def predict(batch):
        calls.append(batch.shape[0])
        return WindowOutputs(torch.zeros(batch.shape[0], 2, 32, 32, 32), torch.full_like(batch, 0.5))

    seg, conf = sliding_window_predict(image, kept, predict, batch_size=2)
    assert calls == [1]
    assert torch.all(seg[0, :32] > seg[1, :32]) and torch.all(conf[0, :32] == 1.0)
    assert torch.all(conf[0, 32:] == 0.5)


def test_mirroring_tta_of_a_flip_equivariant_predictor_changes_nothing():
    image = np.random.default_rng(3).random((32, 32, 32), dtype=np.float32)
    plan = plan_windows(image.shape, (16, 16, 16), 0.0)

    def square(batch):
        return WindowOutputs(torch.cat([batch**2, batch], 1), batch)

    plain, _ = sliding_window_predict(image, plan, square, batch_size=2)
    mirrored, _ = sliding_window_predict(image, plan, square, batch_size=2, tta=True)
    np.testing.assert_allclose(mirrored.numpy(), plain.numpy(), atol=1e-6)


def test_windows_cut_from_a_tensor_image_stitch_the_same_as_from_an_array():
    """A GPU run keeps the model-grid image on the GPU and cuts its windows there; the scheduler takes
    a tensor image exactly as an array (here both on the CPU), air windows skipped alike."""

    def predict(batch):
        assert isinstance(batch, torch.Tensor) and batch.dtype == torch.float32
        return WindowOutputs(torch.cat([batch, -batch], 1), torch.sigmoid(batch))

    image = np.random.default_rng(5).random((40, 36, 44), dtype=np.float32)
    image[:, :, :20] = 0  # air: its windows are dropped
    plan = plan_windows(image.shape, (16, 16, 16), 0.25)
    kept = windows_with_content(plan, image)
    tensor = torch.from_numpy(image.copy())
    np.testing.assert_array_equal(windows_with_content(plan, tensor).starts, kept.starts)
    assert len(kept) < len(plan)
    from_array = sliding_window_predict(image, kept, predict, batch_size=3, pad_batches=True)
    from_tensor = sliding_window_predict(tensor, kept, predict, batch_size=3, pad_batches=True)
    for a, b in zip(from_array, from_tensor):
        assert torch.equal(a, b)

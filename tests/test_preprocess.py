"""Pre-processing onto the model grid and the exact inverse back to the scan's grid."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import GEOMETRIES, sphere_scan

from ceds_deploy.qa.metrics import dice
from ceds_deploy.spec import ModelSpec
from ceds_deploy.transforms.orientation import (
    canonical_reorientation,
    reorient_array,
    reorient_geometry,
    undo_reorient_array,
)
from ceds_deploy.transforms.preprocess import hu_window, prepare_label, prepare_scan
from ceds_deploy.transforms.restore import restore_to_source
from ceds_deploy.volume import Volume

SPEC = ModelSpec(roi_size=(32, 32, 32), target_spacing=(1.0, 1.0, 1.0), width=4)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_reorientation_keeps_every_voxel_in_place(name):
    g = GEOMETRIES[name]
    r = canonical_reorientation(g)
    canon = reorient_geometry(g, r)
    # The canonical axes point along +x, +y, +z.
    assert np.all(np.diag(canon.direction_matrix) > 0.9)
    array = np.arange(np.prod(g.shape)).reshape(g.shape)
    moved = reorient_array(array, r)
    # A voxel's world position is the same before and after.
    for index in [(0, 0, 0), (3, 5, 7), tuple(n - 1 for n in g.shape)]:
        value = array[index]
        new_index = np.argwhere(moved == value)[0]
        np.testing.assert_allclose(canon.index_to_world(new_index), g.index_to_world(np.asarray(index)), atol=1e-9)
    np.testing.assert_array_equal(undo_reorient_array(moved, r), array)


def test_hu_window_scales_to_unit_range():
    hu = np.array([-1000, -210, 40, 290, 2000], np.float32)
    np.testing.assert_allclose(hu_window(hu, (-210, 290)), [0, 0, 0.5, 1, 1])


def _monai_reference(image_path, label_path, spec):
    """The CEDS code's pre-processing (MONAI), the same as benchmarks/end_to_end.py's reference way,
    with the label resampled (nearest) and cropped alongside, as its training does."""
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    low, high = spec.hu_window
    load = Compose([LoadImaged(keys, reader="NibabelReader", image_only=False), EnsureChannelFirstd(keys)])
    prepare = Compose(
        [
            Orientationd(keys, axcodes="LPS"),
            Spacingd(keys, pixdim=spec.target_spacing, mode=("bilinear", "nearest")),
            ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True),
            CropForegroundd(keys, source_key="image"),
            SpatialPadd(keys, spatial_size=spec.roi_size),
        ]
    )
    return prepare, prepare(load({"image": str(image_path), "label": str(label_path)}))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 2.0, 3.0)])
def test_model_input_and_restore_equal_the_ceds_codes_monai_transforms(tmp_path, name, spacing):
    """prepare_scan gives the array MONAI's Orientation, Spacing, ScaleIntensityRange,
    CropForeground and SpatialPad give, and restore_to_source what Invertd gives back."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    from ceds_deploy.io import read_scan, write_volume

    spec = SPEC.replace(target_spacing=spacing, roi_size=(16, 16, 16))
    image, label = sphere_scan(GEOMETRIES[name], radius_mm=8, body_mm=14)
    path, label_path = tmp_path / "scan.nii.gz", tmp_path / "label.nii.gz"
    write_volume(path, np.round(image.array).astype(np.int16), image.geometry)
    write_volume(label_path, label.array, label.geometry)
    prepare, data = _monai_reference(path, label_path, spec)
    ours, plan = prepare_scan(read_scan(path, dtype=None), spec)
    reference = data["image"][0].numpy()
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() < 1e-5
    # Labels: nearest neighbour, ties up as MONAI; on the centred grid of an oblique scan a few
    # exact ties fall either way by float noise (8 of 4864 voxels at most here).
    ours_label = prepare_label(read_scan(label_path, dtype=np.uint8), plan)
    assert (ours_label == data["label"][0].numpy().astype(np.uint8)).mean() > 0.995
    np.testing.assert_allclose(plan.model_geometry.affine[:3], _lps_affine(data["image"].affine)[:3], atol=1e-4)
    # Back onto the scan's grid: a smooth field of two channels, zero outside the crop as Invertd pads.
    grid = np.indices(ours.shape).astype(np.float32)
    field = np.stack([np.sin(grid.sum(0) * 0.3), np.cos(grid[0] * 0.2)]).astype(np.float32)
    data["pred"] = MetaTensor(
        torch.from_numpy(field), meta=data["image"].meta, applied_operations=data["image"].applied_operations
    )
    inverted = Invertd("pred", transform=prepare, orig_keys="image", nearest_interp=False)(data)["pred"].numpy()
    restored = restore_to_source(field, plan, fill=0.0)
    assert restored.shape == inverted.shape
    assert np.abs(restored - inverted).max() < 1e-5


def _lps_affine(ras_affine) -> np.ndarray:
    """MONAI's affine (nibabel's RAS world) in ITK's LPS world."""
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(ras_affine, dtype=np.float64)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_model_grid_is_at_target_spacing_and_keeps_the_mass_in_place(name):
    image, label = sphere_scan(GEOMETRIES[name], radius_mm=12)
    array, plan = prepare_scan(image, SPEC)
    assert array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1
    assert all(n >= r for n, r in zip(array.shape, SPEC.roi_size))
    np.testing.assert_allclose(plan.model_geometry.spacing, 1.0, atol=1e-9)
    model_label = prepare_label(label, plan)
    centre_model = plan.model_geometry.index_to_world(np.argwhere(model_label > 0).mean(0))
    centre_source = image.geometry.index_to_world(np.argwhere(label.array > 0).mean(0))
    np.testing.assert_allclose(centre_model, centre_source, atol=0.5)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_label_there_and_back_keeps_dice(name):
    image, label = sphere_scan(GEOMETRIES[name], radius_mm=14)
    _, plan = prepare_scan(image, SPEC)
    model_label = prepare_label(label, plan)
    back = restore_to_source(model_label[None].astype(np.float32), plan, fill=0, mode="nearest")[0]
    assert back.shape == label.shape
    assert dice(back > 0.5, label.array > 0) >= 0.95


def test_probabilities_restored_by_linear_resampling_beat_nearest():
    image, label = sphere_scan(GEOMETRIES["axial_lps"], radius_mm=14)
    _, plan = prepare_scan(image, SPEC)
    soft = prepare_label(label, plan).astype(np.float32)
    linear = restore_to_source(soft[None], plan, fill=0, mode="linear")[0] > 0.5
    assert dice(linear, label.array > 0) >= 0.95


def test_restored_outside_the_body_crop_gets_the_fill_value():
    image, _ = sphere_scan(GEOMETRIES["axial_lps"], radius_mm=4, body_mm=8)
    _, plan = prepare_scan(image, SPEC)
    assert plan.crop_stop[0] - plan.crop_start[0] < image.shape[0]  # the crop removed air
    ones = np.ones((1, *plan.model_geometry.shape), np.float32)
    back = restore_to_source(ones, plan, fill=-7.0)[0]
    assert back.min() == -7.0 and back.max() == 1.0


def test_small_scan_is_padded_to_the_roi():
    image, _ = sphere_scan(GEOMETRIES["axial_lps"], body_mm=10)
    big = ModelSpec(roi_size=(64, 64, 64), target_spacing=(1.0, 1.0, 1.0))
    array, plan = prepare_scan(image, big)
    assert array.shape == (64, 64, 64)
    assert sum(plan.pad_before) + sum(plan.pad_after) > 0
    back = restore_to_source(array[None], plan, fill=0.0)[0]
    assert back.shape == image.shape


def test_label_on_another_grid_is_refused():
    image, label = sphere_scan(GEOMETRIES["axial_lps"])
    _, plan = prepare_scan(image, SPEC)
    moved = Volume(label.array, label.geometry.with_(origin=(0.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="label grid"):
        prepare_label(moved, plan)


def test_phantom_label_round_trip_dice():
    phantoms = pytest.importorskip("ceds_deploy.synthetic")
    for index in range(3):
        image, label = phantoms.make_case(index, seed=1, size="small")
        _, plan = prepare_scan(image, SPEC)
        back = restore_to_source(prepare_label(label, plan)[None].astype(np.float32), plan, 0, "nearest")[0]
        assert dice(back > 0.5, label.array > 0) >= 0.98, index


def test_restore_from_a_torch_tensor_equals_restore_from_numpy():
    import torch

    image, _ = sphere_scan(GEOMETRIES["oblique"])
    array, plan = prepare_scan(image, SPEC)
    channels = np.stack([array, 1 - array])
    from_numpy = restore_to_source(channels, plan, fill=(0.0, 1.0))
    from_torch = restore_to_source(torch.from_numpy(channels), plan, fill=(0.0, 1.0))
    assert from_torch.dtype == np.float32 and from_torch.shape == from_numpy.shape
    assert np.abs(from_torch - from_numpy).max() < 1e-6
    assert from_numpy[0].max() > 0.5  # the body came back, not just the fill


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_layout_and_stored_type_do_not_change_the_model_input(name):
    """An int16 scan as stored, laid out x fastest as `read_scan` returns it, gives the model the
    same input as a C-ordered float32 copy (the resampling walks memory order, never rounds)."""
    image, _ = sphere_scan(GEOMETRIES[name])
    hu = np.round(image.array)
    reference, plan = prepare_scan(Volume(np.ascontiguousarray(hu, dtype=np.float32), image.geometry), SPEC)
    stored = Volume(np.asfortranarray(hu.astype(np.int16)), image.geometry)
    array, same_plan = prepare_scan(stored, SPEC)
    assert same_plan == plan and array.dtype == np.float32 and array.flags.c_contiguous
    assert np.abs(array - reference).max() < 1e-6


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_restore_is_laid_out_like_the_scan_and_fills_only_outside_the_body(name):
    """restore_to_source fills the scan's grid in memory order (x fastest, what the NIfTI writer
    takes without a copy); the fill appears only where no grid voxel of the crop is read."""
    image, _ = sphere_scan(GEOMETRIES[name], radius_mm=6, body_mm=14)
    array, plan = prepare_scan(image, SPEC)
    restored = restore_to_source(array[None], plan, fill=-1.0)[0]
    assert restored.T.flags.c_contiguous
    body = image.array > SPEC.crop_threshold_hu
    assert (restored[body] > 0).mean() > 0.95  # the body came back (values in (0, 1])
    assert (restored[~body] == -1.0).any()  # air far from the body keeps the fill


def test_resampling_reads_a_flipped_int16_view_in_place_and_keeps_nearest_types():
    from ceds_deploy.transforms.resample import resample
    from ceds_deploy.transforms.spacing import axis_taps

    base = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    view = base.T[::-1]  # (7, 6, 5), x fastest and flipped, as a reoriented ITK buffer
    taps = [axis_taps(0, n, 1.0, n, "nearest") for n in view.shape]
    same = resample(view, taps, "nearest")
    assert same.dtype == np.int16 and same.flags.c_contiguous
    np.testing.assert_array_equal(same, view)
    halves = [axis_taps(0, 2 * n - 1, 0.5, n, "linear") for n in view.shape]
    upsampled = resample(view, halves, "linear")
    assert upsampled.dtype == np.float32
    np.testing.assert_array_equal(upsampled[::2, ::2, ::2], view)
    np.testing.assert_allclose(upsampled[1, 0, 0], (float(view[0, 0, 0]) + view[1, 0, 0]) / 2)


@pytest.mark.parametrize("name", ["permuted_flipped", "oblique"])
def test_reading_and_filling_the_scan_in_chunks_changes_nothing(monkeypatch, name):
    import ceds_deploy.transforms.resample as resample_module

    image, _ = sphere_scan(GEOMETRIES[name])
    whole, plan = prepare_scan(image, SPEC)
    restored = restore_to_source(np.stack([whole, 1 - whole]), plan, fill=-1.0)
    monkeypatch.setattr(resample_module, "SCAN_CHUNK_VOXELS", 100)  # a few rows a chunk
    chunked, same_plan = prepare_scan(image, SPEC)
    assert same_plan == plan
    np.testing.assert_array_equal(chunked, whole)
    np.testing.assert_array_equal(restore_to_source(np.stack([chunked, 1 - chunked]), plan, fill=-1.0), restored)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_the_model_input_left_as_a_tensor_equals_the_array(name):
    """`prepare_scan_on(as_tensor=True)` (what a GPU run keeps on the GPU) is the numpy input bit for
    bit: the same crop, HU window and padding, done with torch's float32 operations."""
    import torch

    from ceds_deploy.transforms.preprocess import prepare_scan_on

    image, _ = sphere_scan(GEOMETRIES[name], radius_mm=6, body_mm=14)
    array, plan = prepare_scan(image, SPEC)
    tensor, same_plan = prepare_scan_on(image, SPEC, "cpu", as_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32 and tensor.is_contiguous()
    assert same_plan == plan and any(plan.pad_before + plan.pad_after)  # padding exercised too
    np.testing.assert_array_equal(tensor.numpy(), array)


def test_the_mask_thresholded_where_it_is_restored_equals_thresholding_the_restored_logits():
    import torch

    image, _ = sphere_scan(GEOMETRIES["oblique"], radius_mm=6, body_mm=14)
    array, plan = prepare_scan(image, SPEC)
    logits = torch.from_numpy(array[None] - 0.6)
    restored = restore_to_source(logits, plan, fill=-20.0)[0]
    mask = restore_to_source(logits, plan, fill=-20.0, above=0.0)[0]
    assert mask.dtype == np.uint8 and mask.T.flags.c_contiguous
    np.testing.assert_array_equal(mask, (restored > 0).astype(np.uint8))
    assert 0 < mask.mean() < 1
    filled_above = restore_to_source(logits, plan, fill=5.0, above=0.0)[0]  # the fill is thresholded too
    np.testing.assert_array_equal(filled_above, (restore_to_source(logits, plan, fill=5.0)[0] > 0).astype(np.uint8))


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
@pytest.mark.parametrize("where", ["corner", "centre", "nowhere"])
def test_a_thresholded_mask_resamples_only_around_what_is_above_and_equals_the_full_restore(name, where):
    """Only the scan voxels whose taps read a grid voxel above the threshold are resampled (a small
    tumour in a large scan); the mask is the full restore's, thresholded, voxel for voxel."""
    import torch

    image, _ = sphere_scan(GEOMETRIES[name], radius_mm=6, body_mm=14)
    _, plan = prepare_scan(image, SPEC)
    rng = np.random.default_rng(3)
    logits = -rng.uniform(0.1, 3.0, size=(1, *plan.model_geometry.shape)).astype(np.float32)
    if where != "nowhere":  # a few voxels above 0 at one corner of the crop, or in its middle
        start = [b for b in plan.pad_before] if where == "corner" else [n // 2 for n in plan.model_geometry.shape]
        logits[(0, *(slice(b, b + 2) for b in start))] = rng.uniform(0.1, 2.0, size=(2, 2, 2))
    tensor = torch.from_numpy(logits)
    mask = restore_to_source(tensor, plan, fill=-20.0, above=0.0)[0]
    np.testing.assert_array_equal(mask, (restore_to_source(tensor, plan, fill=-20.0)[0] > 0).astype(np.uint8))
    assert (mask.any()) == (where != "nowhere")

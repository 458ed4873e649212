"""Pre-processing onto the model grid and the exact inverse back to the scan's grid."""

from __future__ import annotations

import numpy as np
import pytest

from ceds_deploy.preprocess import (
    canonical_reorientation,
    hu_window,
    prepare_image,
    prepare_label,
    reorient_array,
    reorient_geometry,
    resample_geometry,
    restore_to_source,
    undo_reorient_array,
)
from ceds_deploy.spec import ModelSpec
from ceds_deploy.volume import Volume

from helpers import GEOMETRIES, sphere_scan

SPEC = ModelSpec(roi_size=(32, 32, 32), target_spacing=(1.0, 1.0, 1.0), width=4)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float(np.logical_and(a, b).sum()) / max(1, int(a.sum()) + int(b.sum()))


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


def test_resample_geometry_keeps_the_physical_box():
    g = GEOMETRIES["oblique"]
    new = resample_geometry(g, (20, 17, 44))
    # The outer corners of the voxel boxes coincide.
    for corner in [np.zeros(3), np.asarray(g.shape, float)]:
        old_world = g.index_to_world(corner - 0.5)
        new_corner = corner / np.asarray(g.shape) * np.asarray(new.shape)
        np.testing.assert_allclose(new.index_to_world(new_corner - 0.5), old_world, atol=1e-9)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_model_grid_is_at_target_spacing_and_keeps_the_mass_in_place(name):
    image, label = sphere_scan(GEOMETRIES[name], radius_mm=12)
    array, plan = prepare_image(image, SPEC)
    assert array.dtype == np.float32 and 0 <= array.min() and array.max() <= 1
    assert all(n >= r for n, r in zip(array.shape, SPEC.roi_size))
    np.testing.assert_allclose(plan.model_geometry.spacing, 1.0, atol=0.05)
    model_label = prepare_label(label, plan)
    centre_model = plan.model_geometry.index_to_world(np.argwhere(model_label > 0).mean(0))
    centre_source = image.geometry.index_to_world(np.argwhere(label.array > 0).mean(0))
    np.testing.assert_allclose(centre_model, centre_source, atol=0.5)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_label_there_and_back_keeps_dice(name):
    image, label = sphere_scan(GEOMETRIES[name], radius_mm=14)
    _, plan = prepare_image(image, SPEC)
    model_label = prepare_label(label, plan)
    back = restore_to_source(model_label[None].astype(np.float32), plan, fill=0, mode="nearest")[0]
    assert back.shape == label.shape
    assert dice(back > 0.5, label.array > 0) >= 0.95


def test_probabilities_restored_by_linear_resampling_beat_nearest():
    image, label = sphere_scan(GEOMETRIES["axial_lps"], radius_mm=14)
    _, plan = prepare_image(image, SPEC)
    soft = prepare_label(label, plan).astype(np.float32)
    linear = restore_to_source(soft[None], plan, fill=0, mode="linear")[0] > 0.5
    assert dice(linear, label.array > 0) >= 0.95


def test_restored_outside_the_body_crop_gets_the_fill_value():
    image, _ = sphere_scan(GEOMETRIES["axial_lps"], radius_mm=4, body_mm=8)
    _, plan = prepare_image(image, SPEC)
    assert plan.crop_stop[0] - plan.crop_start[0] < image.shape[0]  # the crop removed air
    ones = np.ones((1, *plan.model_geometry.shape), np.float32)
    back = restore_to_source(ones, plan, fill=-7.0)[0]
    assert back.min() == -7.0 and back.max() == 1.0


def test_small_scan_is_padded_to_the_roi():
    image, _ = sphere_scan(GEOMETRIES["axial_lps"], body_mm=10)
    big = ModelSpec(roi_size=(64, 64, 64), target_spacing=(1.0, 1.0, 1.0))
    array, plan = prepare_image(image, big)
    assert array.shape == (64, 64, 64)
    assert sum(plan.pad_before) + sum(plan.pad_after) > 0
    back = restore_to_source(array[None], plan, fill=0.0)[0]
    assert back.shape == image.shape


def test_label_on_another_grid_is_refused():
    image, label = sphere_scan(GEOMETRIES["axial_lps"])
    _, plan = prepare_image(image, SPEC)
    moved = Volume(label.array, label.geometry.with_(origin=(0.0, 0.0, 0.0)))
    with pytest.raises(ValueError, match="label grid"):
        prepare_label(moved, plan)


def test_phantom_label_round_trip_dice():
    phantoms = pytest.importorskip("ceds_deploy.phantoms")
    for index in range(3):
        image, label = phantoms.make_case(index, seed=1, size="small")
        _, plan = prepare_image(image, SPEC)
        back = restore_to_source(prepare_label(label, plan)[None].astype(np.float32), plan, 0, "nearest")[0]
        assert dice(back > 0.5, label.array > 0) >= 0.98, index


def test_restore_from_a_torch_tensor_equals_restore_from_numpy():
    import torch

    image, _ = sphere_scan(GEOMETRIES["oblique"])
    array, plan = prepare_image(image, SPEC)
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
    reference, plan = prepare_image(Volume(np.ascontiguousarray(hu, dtype=np.float32), image.geometry), SPEC)
    stored = Volume(np.asfortranarray(hu.astype(np.int16)), image.geometry)
    array, same_plan = prepare_image(stored, SPEC)
    assert same_plan == plan and array.dtype == np.float32 and array.flags.c_contiguous
    assert np.abs(array - reference).max() < 1e-6


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_restore_is_laid_out_like_the_scan_and_equals_a_plain_resampling(name):
    """restore_to_source fills the scan's grid in memory order (x fastest, what the NIfTI writer
    takes without a copy) and gives what resampling the crop in array order would."""
    import torch.nn.functional as F
    import torch

    image, _ = sphere_scan(GEOMETRIES[name])
    array, plan = prepare_image(image, SPEC)
    restored = restore_to_source(array[None], plan, fill=-1.0)[0]
    assert restored.T.flags.c_contiguous
    unpadded = array[tuple(slice(b, b + n) for b, n in zip(plan.pad_before, plan.resampled_shape))]
    expected = F.interpolate(torch.from_numpy(np.ascontiguousarray(unpadded))[None, None],
                             size=plan.cropped_geometry.shape, mode="trilinear", align_corners=False)[0, 0].numpy()
    canonical = reorient_array(restored, plan.reorientation)
    box = tuple(slice(a, b) for a, b in zip(plan.crop_start, plan.crop_stop))
    assert np.abs(canonical[box] - expected).max() < 1e-5
    outside = np.ones(canonical.shape, bool)
    outside[box] = False
    assert (canonical[outside] == -1.0).all()


def test_nearest_resampling_of_a_tensor_keeps_its_integer_type():
    import torch

    from ceds_deploy.preprocess import resample_array

    out = resample_array(torch.full((4, 4, 4), -1000, dtype=torch.int16), (2, 2, 2), "nearest")
    assert out.dtype == np.int16 and (out == -1000).all()

"""Preview PNGs: the file, where the planes cut, and the on-screen orientation for any array layout."""

from __future__ import annotations

import struct
import sys

import numpy as np
import pytest
from helpers import GEOMETRIES, sphere_scan

from ceds_deploy.qa.preview import PLANES, display_slice, plane_views, preview_centre, render_preview, write_preview
from ceds_deploy.transforms.orientation import canonical_reorientation
from ceds_deploy.volume import Geometry

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def centroid_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(v) for v in np.rint(np.argwhere(mask).mean(axis=0)))


def world_grids(geometry: Geometry) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij"), -1).reshape(-1, 3)
    return geometry.index_to_world(idx).reshape(*geometry.shape, 3)


def test_write_preview_writes_a_png(tmp_path):
    image, label = sphere_scan(GEOMETRIES["axial_lps"])
    confidence = np.where(label.array > 0, 0.6, 1.0).astype(np.float32)
    path = write_preview(
        tmp_path / "out" / "case_preview.png", image, label.array, confidence, label=label.array, title="case"
    )
    assert path == tmp_path / "out" / "case_preview.png"
    data = path.read_bytes()
    width, height = png_size(data)
    assert 600 <= width <= 2500 and 250 <= height <= 1200
    assert width > height  # three panels side by side
    assert len(data) > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["case_preview.png"]  # no temp file left


def test_preview_without_confidence_or_label_and_with_empty_mask(tmp_path):
    image, _ = sphere_scan(GEOMETRIES["ras_like"])
    empty = np.zeros(image.shape, np.uint8)
    data = render_preview(image, empty, None)
    assert png_size(data)[0] > 0


def test_preview_rejects_arrays_on_another_grid():
    image, label = sphere_scan(GEOMETRIES["axial_lps"])
    with pytest.raises(ValueError, match="confidence shape"):
        render_preview(image, label.array, np.ones((3, 3, 3), np.float32))


def test_preview_does_not_touch_pyplot(tmp_path):
    had_pyplot = "matplotlib.pyplot" in sys.modules
    image, label = sphere_scan(GEOMETRIES["axial_lps"])
    render_preview(image, label.array, None)
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_planes_pass_through_the_mask_centroid(name):
    geometry = GEOMETRIES[name]
    _, label = sphere_scan(geometry, radius_mm=9.0)
    mask = label.array
    centre = preview_centre(mask, spacing=geometry.spacing)
    assert centre == centroid_index(mask)
    marker = np.zeros(geometry.shape, np.uint8)
    marker[centre] = 1
    for plane in PLANES:
        assert display_slice(marker, geometry, plane, centre).sum() == 1, plane  # the cut holds the centroid
        # ... and is the sphere's largest cross-section along that axis.
        cut = display_slice(mask, geometry, plane, centre).sum()
        assert cut > 0
        view = next(v for v in plane_views(geometry, centre) if v.name == plane)
        for step in (-2, 2):
            other = list(centre)
            axis = canonical_reorientation(geometry).perm[view.fixed_axis]
            other[axis] = int(np.clip(other[axis] + step, 0, geometry.shape[axis] - 1))
            assert display_slice(mask, geometry, plane, tuple(other)).sum() <= cut


def test_centre_falls_back_to_label_then_volume_centre_and_stays_inside_a_ring():
    geometry = GEOMETRIES["permuted_flipped"]
    _, label = sphere_scan(geometry, radius_mm=9.0)
    empty = np.zeros(geometry.shape, np.uint8)
    assert preview_centre(empty, label.array) == centroid_index(label.array)
    assert preview_centre(empty, empty) == tuple(n // 2 for n in geometry.shape)
    assert preview_centre(empty) == tuple(n // 2 for n in geometry.shape)
    two_blobs = np.zeros(geometry.shape, np.uint8)
    two_blobs[2:5, 5:10, 5:10] = 1
    two_blobs[10:13, 30:35, 30:35] = 1
    centre = preview_centre(two_blobs, spacing=geometry.spacing)
    assert two_blobs[centre] == 1  # not the empty middle between the blobs


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_display_orientation_is_radiological_for_any_array_layout(name):
    # World LPS coordinates as images: on screen, x (patient left) must grow to the right in axial and
    # coronal, y (posterior) must grow downwards in axial and to the right in sagittal, z (superior)
    # must shrink downwards in coronal and sagittal, and the fixed coordinate is the centre's.
    geometry = GEOMETRIES[name]
    world = world_grids(geometry)
    centre = tuple(n // 2 for n in geometry.shape)
    centre_world = geometry.index_to_world(np.asarray(centre, float))
    oblique = name == "oblique"
    expectations = {  # plane: (world axis along columns, sign), (world axis down rows, sign), fixed axis
        "axial": ((0, +1), (1, +1), 2),
        "coronal": ((0, +1), (2, -1), 1),
        "sagittal": ((1, +1), (2, -1), 0),
    }
    for plane, ((col_axis, col_sign), (row_axis, row_sign), fixed) in expectations.items():
        cols = display_slice(world[..., col_axis], geometry, plane, centre)
        rows = display_slice(world[..., row_axis], geometry, plane, centre)
        fixed_values = display_slice(world[..., fixed], geometry, plane, centre)
        if oblique:  # nearest patient axes: the trend, not every step
            assert np.sign(np.mean(np.diff(cols, axis=1))) == col_sign, plane
            assert np.sign(np.mean(np.diff(rows, axis=0))) == row_sign, plane
            assert abs(fixed_values.mean() - centre_world[fixed]) < 10.0
        else:
            assert np.all(np.sign(np.diff(cols, axis=1)) == col_sign), plane
            assert np.all(np.sign(np.diff(rows, axis=0)) == row_sign), plane
            np.testing.assert_allclose(fixed_values, centre_world[fixed], atol=1e-6)


def test_panels_use_the_physical_spacing_of_the_displayed_axes():
    # permuted_flipped: array axis 0 is world z (3.0 mm), axis 1 world y (0.8 mm), axis 2 world x (0.9 mm).
    geometry = GEOMETRIES["permuted_flipped"]
    views = {v.name: v for v in plane_views(geometry, (0, 0, 0))}
    assert (views["axial"].row_mm, views["axial"].col_mm) == (0.8, 0.9)
    assert (views["coronal"].row_mm, views["coronal"].col_mm) == (3.0, 0.9)
    assert (views["sagittal"].row_mm, views["sagittal"].col_mm) == (3.0, 0.8)
    shapes = {p: display_slice(np.zeros(geometry.shape), geometry, p, (0, 0, 0)).shape for p in PLANES}
    assert shapes == {"axial": (50, 44), "coronal": (16, 44), "sagittal": (16, 50)}


def test_preview_of_a_phantom(tmp_path):
    from ceds_deploy.synthetic import make_case

    image, label = make_case(4, 0, "small")
    confidence = np.where(label.array > 0, 0.7, 1.0).astype(np.float32)
    path = write_preview(tmp_path / "phantom.png", image, label.array, confidence, title="phantom_004")
    width, height = png_size(path.read_bytes())
    assert width > height > 200
    assert label.array[preview_centre(label.array, spacing=image.spacing)] == 1


def decoded(png: bytes) -> np.ndarray:
    import io

    from matplotlib.image import imread

    return imread(io.BytesIO(png))


def test_confidence_overlay_stays_near_the_outlines():
    # Low confidence everywhere, with a grid of window-edge bands: drawn over the whole body crop it
    # changes more than half the picture (measured 56%); near the outlines only, a few percent.
    from ceds_deploy.synthetic import make_case

    image, label = make_case(4, 0, "small")
    seams = np.full(image.shape, 0.3, np.float32)
    seams[::16] = 0.9
    seams[:, ::16] = 0.9
    plain = decoded(render_preview(image, label.array, None, label=label.array))
    tinted = decoded(render_preview(image, label.array, seams, label=label.array))
    changed = np.any(np.abs(plain - tinted) > 0.02, axis=-1).mean()
    assert 0.005 < changed < 0.08


def test_near_outlines_weights_fade_with_distance_in_mm():
    from ceds_deploy.qa.preview import CONFIDENCE_FADE_MM, CONFIDENCE_NEAR_MM, near_outlines

    mask = np.zeros((60, 60), bool)
    mask[30, 30] = True
    weight = near_outlines([mask, None], row_mm=1.0, col_mm=2.0)
    assert weight[30, 30] == 1.0
    assert weight[30 + int(CONFIDENCE_NEAR_MM - CONFIDENCE_FADE_MM) - 1, 30] == 1.0  # rows: 1 mm a pixel
    assert weight[30 + int(CONFIDENCE_NEAR_MM) + 1, 30] == 0.0
    assert weight[30, 30 + int(CONFIDENCE_NEAR_MM / 2) + 1] == 0.0  # columns: 2 mm a pixel
    assert 0.0 < weight[30 + int(CONFIDENCE_NEAR_MM) - 1, 30] < 1.0
    assert not near_outlines([np.zeros((5, 5), bool), None], 1.0, 1.0).any()


def test_panel_titles_count_slices_and_name_the_position():
    geometry = GEOMETRIES["permuted_flipped"]  # array (z, y, x) flipped: canonical shape (44, 50, 16)
    views = {v.name: v for v in plane_views(geometry, (3, 10, 20))}
    assert {name: v.slices for name, v in views.items()} == {"axial": 16, "coronal": 50, "sagittal": 44}
    for view in views.values():
        assert 0 <= view.index < view.slices
    title = views["axial"].title(-790.0)
    assert title.startswith(f"axial slice {views['axial'].index + 1} of 16 (from the feet)")
    assert title.endswith("head-foot position -790.0 mm")

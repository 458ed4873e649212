"""Synthetic chest-CT phantoms (small size only: every case takes well under a second)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull

from ceds_deploy.errors import ConfigError
from ceds_deploy.synthetic import LAYOUTS, SIZES, Tissue, cohort_indices, generate_case, make_case, make_cohort

SMALL = SIZES["small"]
COHORT = range(8)  # the cases most tests look at (seed 0)


@functools.cache
def case(index: int, seed: int = 0, layout: str | None = None):
    return generate_case(index, seed, "small", layout=layout)


def _feret_mm(label, geometry) -> float:
    pts = geometry.index_to_world(np.argwhere(label))
    if len(pts) > 4:
        pts = pts[ConvexHull(pts).vertices]
    return float(np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)).max())


def _slice_axis(geometry) -> int:
    """The array axis that runs (most nearly) head-feet."""
    return int(np.argmax(np.abs(geometry.direction_matrix[2])))


def _inplane_erode(mask, iterations: int = 2):
    """Erode in-plane only (array axes 0, 1 of an LPS-layout case): the blur is in-plane."""
    return ndimage.binary_erosion(mask, np.ones((3, 3, 1), bool), iterations=iterations)


# ---- determinism -------------------------------------------------------------------------


def test_same_seed_same_case_other_seed_other_case():
    a_img, a_lab = make_case(2, 0, "small")
    b_img, b_lab = make_case(2, 0, "small")
    assert a_img.geometry == b_img.geometry
    assert np.array_equal(a_img.array, b_img.array)
    assert np.array_equal(a_lab.array, b_lab.array)
    c_img, _ = make_case(2, 1, "small")
    assert c_img.geometry != a_img.geometry or not np.array_equal(c_img.array, a_img.array)
    d_img, _ = make_case(3, 0, "small")
    assert d_img.geometry != a_img.geometry or not np.array_equal(d_img.array, a_img.array)


def test_image_and_label_arrays():
    for i in COHORT:
        c = case(i)
        assert c.image.array.dtype == np.int16
        assert c.label.array.dtype == np.uint8
        assert c.image.geometry == c.label.geometry == c.tissue.geometry
        assert set(np.unique(c.label.array)) == {0, 1}
        assert np.array_equal(c.label.array == 1, c.tissue.array == Tissue.MASS)
        assert c.image.array.flags.c_contiguous and c.label.array.flags.c_contiguous
        assert c.image.array.min() >= -1024


# ---- anatomy -----------------------------------------------------------------------------


def test_mass_is_one_connected_lump_of_the_right_size():
    lo, hi = SMALL.mass_diameter_mm
    for i in COHORT:
        c = case(i)
        label = c.label.array.astype(bool)
        _, n = ndimage.label(label)
        assert n == 1, f"case {i}: {n} pieces"
        d = _feret_mm(label, c.label.geometry)
        assert 0.8 * lo <= d <= 1.05 * hi, f"case {i}: diameter {d:.1f} mm"


def test_intensities_mass_lung_bone():
    means = []
    for i in COHORT:
        c = case(i, layout="lps")  # same anatomy, array axes x, y, z
        img, tis = c.image.array.astype(np.float64), c.tissue.array
        inner = _inplane_erode(tis == Tissue.MASS)
        if inner.sum() >= 10:
            means.append(img[inner].mean())
            assert 20 <= img[inner].mean() <= 60, f"case {i}: mass mean {img[inner].mean():.0f} HU"
        lung = _inplane_erode(tis == Tissue.LUNG)
        assert -900 <= img[lung].mean() <= -790, f"case {i}: lung mean {img[lung].mean():.0f}"
        assert (img > 300).sum() > 100, f"case {i}: no bone"
        air = tis == Tissue.AIR
        assert -1024 <= img[air].mean() <= -970
    assert len(means) >= 5


def test_mass_touches_heart_or_vessels_in_some_cases():
    touching = 0
    for i in COHORT:
        c = case(i)
        label = c.label.array.astype(bool)
        ring = ndimage.binary_dilation(label, np.ones((3, 3, 3), bool)) & ~label
        near = np.isin(c.tissue.array[ring], [Tissue.HEART, Tissue.BLOOD])
        touching += bool(near.any())
        assert bool(near.any()) == c.info["mass_touches_vessel"]
    assert touching >= 2


def test_mass_intensity_overlaps_heart_and_vessels():
    """Intensity alone cannot separate the mass: non-contrast blood and myocardium are in its range."""
    plain = [i for i in COHORT if not case(i).info["contrast"]]
    assert plain
    c = case(plain[0], layout="lps")
    img, tis = c.image.array.astype(np.float64), c.tissue.array
    mass = img[_inplane_erode(tis == Tissue.MASS, 1)].mean()
    blood = img[_inplane_erode(tis == Tissue.BLOOD)].mean()
    assert abs(mass - blood) < 40


# ---- geometry ----------------------------------------------------------------------------


def test_spacing_and_size_ranges():
    lo, hi = SMALL.inplane_spacing_mm
    for i in COHORT:
        g = case(i).image.geometry
        k = _slice_axis(g)
        inplane = [g.spacing[a] for a in range(3) if a != k]
        assert all(lo <= s <= hi for s in inplane), (i, g.spacing)
        assert inplane[0] == pytest.approx(inplane[1])
        assert min(abs(g.spacing[k] - s) for s in SMALL.slice_spacing_mm) < 1e-9, (i, g.spacing)
        assert g.shape[k] <= SMALL.max_slices
        assert max(g.shape) <= max(SMALL.inplane_voxels)
        assert np.prod(g.shape) <= 128 * 128 * 64
        assert np.allclose(g.direction_matrix.T @ g.direction_matrix, np.eye(3), atol=1e-9)


def test_some_cases_are_stored_permuted_or_flipped():
    layouts = {case(i).info["layout"] for i in COHORT}
    assert layouts - {"lps"}
    assert any(not np.allclose(case(i).image.geometry.direction_matrix, np.eye(3)) for i in COHORT)


@functools.cache
def _oblique_index() -> int:
    for i in (11, *range(40)):  # 11 is the first oblique case of seed 0
        if generate_case(i, 0, "small", tissue=False).info["oblique_degrees"] > 0:
            return i
    raise AssertionError("no oblique case among the first 40")


@pytest.mark.parametrize("layout", ["ras_flipped", "zxy_flipped", "zyx"])
def test_layouts_keep_the_world_anatomy(layout):
    i = _oblique_index()
    ref = case(i, layout="lps")
    other = case(i, layout=layout)
    d = ref.image.geometry.direction_matrix
    assert not np.allclose(np.abs(d), np.eye(3))  # an oblique grid
    g, gr = other.image.geometry, ref.image.geometry
    assert sorted(g.shape) == sorted(gr.shape)
    # every voxel of the other layout maps to the reference voxel at the same world point
    idx = np.argwhere(np.ones(g.shape, bool))[::37]
    world = g.index_to_world(idx)
    back = np.linalg.solve(gr.direction_matrix * np.asarray(gr.spacing), (world - np.asarray(gr.origin)).T).T
    ref_idx = np.rint(back).astype(int)
    assert np.abs(back - ref_idx).max() < 1e-6
    assert np.array_equal(other.image.array[tuple(idx.T)], ref.image.array[tuple(ref_idx.T)])
    assert np.array_equal(other.label.array[tuple(idx.T)], ref.label.array[tuple(ref_idx.T)])


def test_layout_table_is_consistent():
    for flips, perm in LAYOUTS.values():
        assert sorted(perm) == [0, 1, 2] and all(0 <= f <= 2 for f in flips)


# ---- cohorts -----------------------------------------------------------------------------


def test_cohort_layout_and_dataset_json(tmp_path):
    from ceds_deploy.io import read_scan

    out = make_cohort(tmp_path / "ds", cases=3, labeled=2, test=1, seed=0)
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "tumour"}
    assert meta["numTraining"] == len(meta["training"]) == 2
    assert meta["numTest"] == len(meta["test"]) == 1
    assert len(meta["unlabeled"]) == 1
    for pair in meta["training"]:
        assert (out / pair["image"]).is_file() and (out / pair["label"]).is_file()
    for rel in meta["unlabeled"] + meta["test"]:
        assert (out / rel).is_file() and not rel.startswith("/")
    assert len(list((out / "imagesTr").iterdir())) == 3
    assert len(list((out / "labelsTr").iterdir())) == 2
    assert len(list((out / "imagesTs").iterdir())) == 1
    assert len(list((out / "labelsTs").iterdir())) == 1
    assert not list(out.rglob(".*")), "temporary files left behind"
    train, test = cohort_indices(3, 1)
    assert not set(train) & set(test)
    # what was written is exactly the case, geometry included
    img, lab = make_case(1, 0, "small")
    back = read_scan(out / "imagesTr" / "phantom_001.nii.gz", dtype=None)
    assert np.array_equal(back.array, img.array)
    assert back.geometry.same_grid(img.geometry)
    lab_back = read_scan(out / "labelsTr" / "phantom_001.nii.gz", dtype=None)
    assert np.array_equal(lab_back.array, lab.array)

    # case i does not depend on the cohort size
    out2 = make_cohort(tmp_path / "ds2", cases=2, labeled=0, test=1, seed=0)
    for rel in ("imagesTr/phantom_001.nii.gz", f"imagesTs/phantom_{test[0]:03d}.nii.gz"):
        a = read_scan(out / rel, dtype=None)
        b = read_scan(out2 / rel, dtype=None)
        assert np.array_equal(a.array, b.array)
    assert json.loads((out2 / "dataset.json").read_text(encoding="utf-8"))["training"] == []


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"cases": 2, "labeled": 3, "test": 0}, "labeled (3)"),
        ({"cases": -1, "labeled": 0, "test": 0}, "-1"),
        ({"cases": 2, "labeled": 1, "test": -2}, "-2"),
        ({"cases": 2, "labeled": 1, "test": 0, "size": "huge"}, "'huge'"),
        ({"cases": 2, "labeled": 1, "test": 0, "seed": -5}, "-5"),
    ],
)
def test_cohort_arguments_are_checked(tmp_path, kwargs, word):
    with pytest.raises(ConfigError, match=word.replace("(", r"\(").replace(")", r"\)")):
        make_cohort(tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


def test_cli_module_imports_light_and_runs(tmp_path):
    import subprocess
    import sys

    code = (
        "import sys, ceds_deploy.cli.phantoms as m; "
        "bad = [n for n in ('numpy', 'SimpleITK', 'torch', 'ceds_deploy.synthetic') if n in sys.modules]; "
        "print(bad)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True)
    assert res.stdout.strip() == "[]"

    from ceds_deploy.cli.phantoms import phantoms

    phantoms(tmp_path / "cli", cases=1, labeled=1, test=0, seed=0, size="small")
    meta = json.loads((tmp_path / "cli" / "dataset.json").read_text(encoding="utf-8"))
    assert meta["numTraining"] == 1 and meta["numTest"] == 0

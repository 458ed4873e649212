"""Scan I/O: geometry round trips through every format, real files from pip packages, bad inputs."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import GEOMETRIES, sphere_scan, write_dicom_series

from ceds_deploy.errors import ScanError
from ceds_deploy.io import case_id, find_scans, read_scan, write_volume
from ceds_deploy.transforms.orientation import canonical_reorientation, reorient_array, reorient_geometry
from ceds_deploy.volume import Geometry

FORMATS = [".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"]
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_write_read_round_trip_keeps_geometry(tmp_path, suffix, name):
    image, label = sphere_scan(GEOMETRIES[name])
    path = write_volume(tmp_path / f"scan{suffix}", image.array, image.geometry)
    back = read_scan(path)
    assert back.shape == image.shape
    np.testing.assert_allclose(back.geometry.affine, image.geometry.affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, image.array)
    # A result written on the source's grid reproduces the source's geometry exactly.
    mask_path = write_volume(tmp_path / f"mask{suffix}", label.array, back.geometry)
    mask = read_scan(mask_path, dtype=None)
    assert mask.array.dtype == np.uint8
    np.testing.assert_allclose(mask.geometry.affine, image.geometry.affine, atol=1e-5)
    np.testing.assert_array_equal(mask.array, label.array)
    # Nothing half-written or temporary is left next to the outputs.
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["oblique", "permuted_flipped", "ras_like"])
def test_dicom_series_folder_round_trip(tmp_path, name):
    image, _ = sphere_scan(GEOMETRIES[name])
    folder = write_dicom_series(tmp_path / "series", image)
    back = read_scan(folder)
    assert find_scans(tmp_path).scans == [folder]
    if np.linalg.det(image.geometry.direction_matrix) > 0:
        np.testing.assert_allclose(back.geometry.affine, image.geometry.affine, atol=1e-4)
        np.testing.assert_allclose(back.array, np.round(image.array), atol=0.5)
    # DICOM stacks slices along row x column, so a left-handed grid comes back with its slice
    # axis reversed: the same physical image, which the canonical (LPS) orientation shows.
    source_r, back_r = canonical_reorientation(image.geometry), canonical_reorientation(back.geometry)
    canon_source = reorient_geometry(image.geometry, source_r)
    canon_back = reorient_geometry(back.geometry, back_r)
    np.testing.assert_allclose(canon_back.affine, canon_source.affine, atol=1e-4)
    np.testing.assert_allclose(
        reorient_array(back.array, back_r), np.round(reorient_array(image.array, source_r)), atol=0.5
    )


def nibabel_data(name: str) -> Path:
    import nibabel

    return Path(nibabel.__file__).parent / "tests" / "data" / name


def test_real_4d_nifti_is_refused_with_file_name():
    path = nibabel_data("example4d.nii.gz")
    with pytest.raises(ScanError, match=r"example4d\.nii\.gz: is 4D with size \(128, 96, 24, 2\)"):
        read_scan(path)


def test_real_oblique_3d_nifti_round_trips_its_affine(tmp_path):
    import nibabel as nib

    source = nib.load(nibabel_data("example4d.nii.gz"))  # a real oblique acquisition (4D)
    first = nib.Nifti1Image(np.asanyarray(source.dataobj)[..., 0], source.affine, source.header)
    first.header.set_data_shape(first.shape)
    path = tmp_path / "oblique3d.nii.gz"
    nib.save(first, path)
    scan = read_scan(path)
    assert not np.allclose(scan.geometry.direction_matrix, np.diag(np.diag(scan.geometry.direction_matrix)))
    np.testing.assert_allclose(scan.geometry.affine, LPS_FROM_RAS @ source.affine, atol=1e-4)
    out = write_volume(tmp_path / "mask.nii.gz", (scan.array > 0).astype(np.uint8), scan.geometry)
    np.testing.assert_allclose(nib.load(out).affine, nib.load(path).affine, atol=1e-5)


def test_real_ras_nifti_reads_in_lps():
    import nibabel as nib

    path = nibabel_data("anatomical.nii")
    scan = read_scan(path)
    np.testing.assert_allclose(scan.geometry.affine, LPS_FROM_RAS @ nib.load(path).affine, atol=1e-5)
    np.testing.assert_array_equal(scan.array, np.asanyarray(nib.load(path).dataobj).astype(np.float32))


def test_real_single_ct_dicom_slice_is_refused_as_too_few_slices(tmp_path):
    import pydicom.data

    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    with pytest.raises(ScanError, match=r"CT_small\.dcm: DICOM file has 1 slice; a 3D scan needs at least 3"):
        read_scan(ct)
    folder = tmp_path / "one_slice"
    folder.mkdir()
    shutil.copy(ct, folder / "a.dcm")
    with pytest.raises(ScanError, match=r"one_slice: DICOM series has 1 slice"):
        read_scan(folder)


def test_2d_image_is_refused(tmp_path):
    import SimpleITK as sitk

    path = tmp_path / "flat.nii.gz"
    sitk.WriteImage(sitk.Image(20, 30, sitk.sitkInt16), str(path))
    with pytest.raises(ScanError, match=r"flat\.nii\.gz: is 2D"):
        read_scan(path)
    import nibabel

    # a 2D slice of an oblique 3D affine (nibabel's anatomical.nii resliced): ITK refuses its direction
    affine = np.array([[0, 1.43, 0, -89.9], [0, 0, -1.43, 88.4], [2.5, 0, 0, -167.7], [0, 0, 0, 1]])
    nibabel.save(nibabel.Nifti1Image(np.zeros((64, 128), np.int16), affine), tmp_path / "slice.nii.gz")
    with pytest.raises(ScanError, match=r"slice\.nii\.gz: is 2D with size \(64, 128\); expected a 3D scan"):
        read_scan(tmp_path / "slice.nii.gz")


def test_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(ScanError, match=r"empty\.nii\.gz: file is empty \(0 bytes\)"):
        read_scan(path)


def test_truncated_file_is_refused(tmp_path):
    image, _ = sphere_scan(GEOMETRIES["axial_lps"])
    good = write_volume(tmp_path / "good.nii.gz", image.array, image.geometry)
    data = good.read_bytes()
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanError, match=r"truncated\.nii\.gz: is truncated"):
        read_scan(bad)
    raw = tmp_path / "truncated_raw.nii"
    raw.write_bytes(gzip.decompress(data)[:1000])
    with pytest.raises(ScanError, match=r"truncated_raw\.nii: (is truncated|cannot be read)"):
        read_scan(raw)


def test_non_image_is_refused(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image")
    with pytest.raises(ScanError, match=r"notes\.nii\.gz: cannot be read as an image"):
        read_scan(path)


def test_nan_filled_image_is_refused(tmp_path):
    g = GEOMETRIES["axial_lps"]
    path = write_volume(tmp_path / "nan.nrrd", np.full(g.shape, np.nan, np.float32), g)
    with pytest.raises(ScanError, match=r"nan\.nrrd: every voxel is NaN"):
        read_scan(path)
    some = np.zeros(g.shape, np.float32)
    some[0, 0, :3] = np.inf
    path = write_volume(tmp_path / "inf.mha", some, g)
    with pytest.raises(ScanError, match=r"inf\.mha: 3 of \d+ voxels are NaN or infinite"):
        read_scan(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ScanError, match=r"nope\.nii\.gz: file does not exist"):
        read_scan(tmp_path / "nope.nii.gz")


def test_find_scans_lists_images_and_skips_the_rest(tmp_path):
    g = GEOMETRIES["axial_lps"]
    arr = np.zeros(g.shape, np.float32)
    for name in ["b.nii.gz", "a_0000.nii.gz", "c.mha", "d.nrrd"]:
        write_volume(tmp_path / name, arr, g)
    (tmp_path / "readme.txt").write_text("hello")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / ".hidden").write_text("x")
    listing = find_scans(tmp_path)
    assert [p.name for p in listing.scans] == ["a_0000.nii.gz", "b.nii.gz", "c.mha", "d.nrrd"]
    assert sorted(p.name for p, _ in listing.skipped) == ["empty_dir", "readme.txt"]
    assert [case_id(p) for p in listing.scans] == ["a", "b", "c", "d"]


@pytest.mark.parametrize("name", ["out.nii.gz", "out.mha"])
def test_write_is_atomic_when_interrupted(tmp_path, monkeypatch, name):
    import SimpleITK as sitk

    import ceds_deploy.io.write as io_write

    g = GEOMETRIES["axial_lps"]

    def broken_write(image, path, *args):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(sitk, "WriteImage", broken_write)  # .mha
    monkeypatch.setattr(io_write, "write_nifti", lambda path, array, geometry, *_: broken_write(None, path))  # .nii.gz
    with pytest.raises(KeyboardInterrupt):
        write_volume(tmp_path / name, np.zeros(g.shape, np.float32), g)
    assert os.listdir(tmp_path) == []


def test_geometry_from_affine_round_trip():
    g = GEOMETRIES["oblique"]
    back = Geometry.from_affine(g.affine, g.shape)
    assert back.same_grid(g, atol=1e-12)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_fast_nifti_writer_matches_itk(tmp_path, name):
    """The ISA-L writer's file reads back as ITK's own does: same voxels and geometry in ITK and
    nibabel, and the voxels go out without a transposing copy when laid out x fastest."""
    import nibabel as nib
    import SimpleITK as sitk

    from ceds_deploy.io import to_sitk
    from ceds_deploy.io.nifti import write_nifti

    image, _ = sphere_scan(GEOMETRIES[name])
    array = np.asfortranarray(image.array)  # the layout read_scan and restore_to_source return
    write_nifti(tmp_path / "fast.nii.gz", array, image.geometry)
    sitk.WriteImage(to_sitk(image.array, image.geometry), str(tmp_path / "itk.nii.gz"), True)
    fast, itk = read_scan(tmp_path / "fast.nii.gz"), read_scan(tmp_path / "itk.nii.gz")
    np.testing.assert_array_equal(fast.array, itk.array)
    np.testing.assert_allclose(fast.geometry.affine, itk.geometry.affine, atol=1e-6)
    fast_nib, itk_nib = nib.load(tmp_path / "fast.nii.gz"), nib.load(tmp_path / "itk.nii.gz")
    np.testing.assert_allclose(fast_nib.affine, itk_nib.affine, atol=1e-6)
    assert fast_nib.header.get_xyzt_units() == ("mm", "sec")
    assert int(fast_nib.header["qform_code"]) == int(fast_nib.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asanyarray(fast_nib.dataobj), np.asanyarray(itk_nib.dataobj))


def test_read_scan_keeps_itk_layout_without_transposing():
    """read_scan returns (x, y, z) arrays laid out as ITK holds them (x fastest), so neither reading
    nor writing transposes a full-size scan."""
    import nibabel as nib

    path = nibabel_data("anatomical.nii")
    scan = read_scan(path)
    assert scan.array.flags.f_contiguous and not scan.array.flags.c_contiguous
    np.testing.assert_array_equal(scan.array, np.asanyarray(nib.load(path).dataobj).astype(np.float32))


def test_gzip_that_ends_early_in_any_member_is_refused(tmp_path):
    """Truncation hidden from the quick trailer check: a complete gzip of too few bytes, a
    multi-member file cut inside its second member. A complete multi-member file still reads."""
    image, _ = sphere_scan(GEOMETRIES["axial_lps"])
    good = write_volume(tmp_path / "good.nii.gz", image.array, image.geometry)
    raw = gzip.decompress(good.read_bytes())
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(raw[: len(raw) - 4096]))
    half = len(raw) // 2
    members = gzip.compress(raw[:half]) + gzip.compress(raw[half:])
    complete = tmp_path / "members.nii.gz"
    complete.write_bytes(members)
    np.testing.assert_array_equal(read_scan(complete).array, read_scan(good).array)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(members[:-200])
    for bad in (short, cut):
        with pytest.raises(ScanError, match=rf"{bad.name.replace('.', '[.]')}: (is truncated|cannot be read)"):
            read_scan(bad)


def test_output_files_are_checked_before_work_and_errors_name_the_file_not_a_temp_file(tmp_path):
    from ceds_deploy.errors import OutputError
    from ceds_deploy.io import write_atomic_bytes
    from ceds_deploy.io.atomic import check_output_file

    (tmp_path / "taken.onnx").mkdir()
    with pytest.raises(OutputError, match=r"taken\.onnx: is a folder"):
        check_output_file(tmp_path / "taken.onnx")
    with pytest.raises(OutputError, match=r"model\.onnx: the output file must end in \.pt"):
        check_output_file(tmp_path / "model.onnx", ".pt")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=r"cannot be written there: .*file is not a folder"):
        check_output_file(tmp_path / "file" / "sub" / "m.pt")
    check_output_file(tmp_path / "new" / "deeper" / "m.pt", ".pt")  # to be made: fine, and nothing is made
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken.onnx"]
    with pytest.raises(OSError) as caught:
        write_atomic_bytes(tmp_path / "taken.onnx", b"data")  # the rename onto a folder fails
    assert caught.value.filename == str(tmp_path / "taken.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken.onnx"]  # no temp file left

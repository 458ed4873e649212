"""What a folder run writes per case: the mask and the confidence map as NIfTI and/or (for a DICOM
series) as a DICOM SEG and a Parametric Map referencing the series, optionally the probabilities and
a preview, all atomically, the NIfTI mask last; a case is done when every file of its formats
exists. And the case's row figures (volume, confidence, review flag)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ceds_deploy.errors import ScanError
from ceds_deploy.inference.options import SegmentOptions
from ceds_deploy.inference.report import CaseRow
from ceds_deploy.io import DicomSeries, ScanSource, case_id, find_scans, read_scan, write_volumes
from ceds_deploy.io.dicom import read_header, series_datasets
from ceds_deploy.io.dicom_seg import PARAMETRIC_MAP_SUFFIX, SEG_SUFFIX, write_dicom_seg
from ceds_deploy.io.dicom_tree import series_to_read
from ceds_deploy.io.nifti import nifti_description
from ceds_deploy.qa.review import assess
from ceds_deploy.spec import Calibration
from ceds_deploy.transforms.preprocess import GridMapping
from ceds_deploy.transforms.restore import RestoredPrediction, restore_prediction
from ceds_deploy.volume import Geometry, Volume

MASK_SUFFIX = ".nii.gz"
CONFIDENCE_SUFFIX = "_confidence.nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
PREVIEW_SUFFIX = "_preview.png"
OUTPUT_SUFFIXES = (
    CONFIDENCE_SUFFIX,
    PROBABILITIES_SUFFIX,
    PREVIEW_SUFFIX,
    MASK_SUFFIX,
    SEG_SUFFIX,
    PARAMETRIC_MAP_SUFFIX,
)
NIFTI, DICOM_SEG = "nifti", "dicom-seg"
# In the NIfTI outputs' `descrip`: a file under a mask's name is told from a scan put there
OUTPUT_DESCRIPTION = "ceds segment output"


def is_segment_output(path: Path) -> bool:
    """Whether the NIfTI file `path` was written by `ceds segment` (its header says so)."""
    return nifti_description(path) == OUTPUT_DESCRIPTION


def output_paths(output: Path, case: str) -> dict[str, Path]:
    """Where each output of `case` goes in the folder `output`."""
    return {
        "mask": output / f"{case}{MASK_SUFFIX}",
        "confidence": output / f"{case}{CONFIDENCE_SUFFIX}",
        "probabilities": output / f"{case}{PROBABILITIES_SUFFIX}",
        "preview": output / f"{case}{PREVIEW_SUFFIX}",
        "seg": output / f"{case}{SEG_SUFFIX}",
        "parametric_map": output / f"{case}{PARAMETRIC_MAP_SUFFIX}",
    }


def case_is_done(output: Path, case: str, formats: tuple[str, ...] = (NIFTI,)) -> bool:
    """Every file of the case's `formats` exists (each appears only complete)."""
    paths = output_paths(output, case)
    needed = {NIFTI: ("mask", "confidence"), DICOM_SEG: ("seg", "parametric_map")}
    return all(paths[key].exists() for fmt in formats for key in needed[fmt])


def dicom_series_of(scan: ScanSource) -> DicomSeries | None:
    """The single-frame DICOM series `scan` is (a listed series, or a folder of one), else None."""
    if isinstance(scan, Path) and scan.is_dir():
        scan = series_to_read(scan)
    return scan if isinstance(scan, DicomSeries) and not scan.multiframe else None


def seg_problem(scan: ScanSource) -> str | None:
    """Why no DICOM SEG can reference `scan` (not a single-frame DICOM series, or its first slice
    lacks the study or frame-of-reference UID), or None."""
    series = dicom_series_of(scan)
    if series is None:
        return "it is not a DICOM series of single-frame images"
    header = read_header(series.files[0])
    missing = [key for key in ("StudyInstanceUID", "FrameOfReferenceUID") if header is None or not header.get(key)]
    return f"{series.files[0].name} has no {' or '.join(missing)}" if missing else None


def case_formats(scan: ScanSource, options: SegmentOptions) -> tuple[str, ...]:
    """The formats `scan`'s outputs are written in: `options.output_format`, by default both where a
    DICOM SEG can reference the scan (`seg_problem`) and NIfTI otherwise. Raises `ScanError` when a
    DICOM SEG is asked for a scan it cannot reference."""
    problem = seg_problem(scan)
    choice = options.output_format or (NIFTI if problem else "both")
    formats = (NIFTI, DICOM_SEG) if choice == "both" else (choice,)
    if DICOM_SEG in formats and problem:
        raise ScanError(
            scan,
            f"--output-format {choice}: no DICOM SEG can reference this scan ({problem}); use --output-format nifti",
        )
    return formats


def finish_case(
    row: CaseRow,
    seg: torch.Tensor,
    conf: torch.Tensor,
    mapping: GridMapping,
    output: Path,
    options: SegmentOptions,
    source: Volume | None = None,
    calibration: Calibration | None = None,
    scan: ScanSource | None = None,
) -> CaseRow:
    """Restore a stitched prediction to the scan's grid (calibrating its confidence with the model's
    `calibration`), write its files and fill `row`. `source` (the scan in HU) is needed only for a
    preview, `scan` (what was read) for DICOM output."""
    started = time.perf_counter()
    restored = restore_prediction(
        seg, conf, mapping, options.save_probabilities, options.largest_component, calibration
    )
    del seg, conf
    restored_at = time.perf_counter()
    with ThreadPoolExecutor(1, thread_name_prefix="ceds-review") as review:  # reads the maps while they are written
        assessing = review.submit(
            assess,
            restored.mask,
            restored.confidence,
            mapping.source.voxel_volume_ml,
            options.confidence_threshold,
            spacing=mapping.source.spacing,
            calibration_margin_mm=None if calibration is None else calibration.margin_mm,
            review_below=options.review_below,
        )
        write_case_files(output, row, restored, mapping.source, options, source, scan)
        written_at = time.perf_counter()
        row.seconds["restore"], row.seconds["write"] = restored_at - started, written_at - restored_at
        findings = assessing.result()
        row.seconds["review"] = time.perf_counter() - written_at  # the review's time beyond the writes
    row.tumour_ml = round(findings.tumour_ml, 3)
    row.expected_dice = round(findings.expected_dice, 4)
    row.mean_confidence = findings.mean_confidence
    row.low_confidence_fraction = findings.low_confidence_fraction
    row.needs_review, row.review_reason = findings.needs_review, findings.review_reason
    return row


def write_case_files(
    output: Path,
    row: CaseRow,
    restored: RestoredPrediction,
    geometry: Geometry,
    options: SegmentOptions,
    source: Volume | None,
    scan: ScanSource | None = None,
) -> None:
    """The case's files in its formats (`case_formats`; NIfTI without `scan`); the DICOM files
    first, the NIfTI mask last."""
    paths = output_paths(output, row.case)
    formats: tuple[str, ...] = (NIFTI,)
    series: DicomSeries | None = None
    if scan is not None:
        series = dicom_series_of(scan)  # resolved once: a folder's series is found by reading its headers
        formats = case_formats(series or scan, options)
        if series is not None and DICOM_SEG not in formats and options.output_format is None:
            row.error = f"NIfTI only, no DICOM SEG: {seg_problem(series)}"  # the case succeeded
    if DICOM_SEG in formats:
        assert series is not None  # case_formats allows a DICOM SEG only for a single-frame series
        try:
            write_dicom_seg(
                paths["seg"],
                restored.mask,
                restored.confidence,
                series_datasets(series),
                confidence_path=paths["parametric_map"],
                geometry=geometry,
            )
        except ScanError as err:
            raise ScanError(
                err.path, f"{err.problem}; no DICOM SEG (--output-format nifti writes NIfTI only)"
            ) from None
    items: list[tuple[Path, np.ndarray, Geometry]] = []
    if NIFTI in formats:
        items.append((paths["confidence"], restored.confidence, geometry))
    if restored.probabilities is not None:
        items.append((paths["probabilities"], restored.probabilities, geometry))
    if NIFTI in formats:
        items.append((paths["mask"], restored.mask, geometry))
    if items:
        write_volumes(items, OUTPUT_DESCRIPTION)  # type: ignore[arg-type]
    if not options.preview:  # a preview of an earlier run of the case shows its old mask
        paths["preview"].unlink(missing_ok=True)
    if options.preview and source is not None:
        from ceds_deploy.qa.preview import write_preview

        try:
            label, note = preview_label(options.preview_labels, row.case, geometry)
            if note:
                row.error = note  # the case succeeded; the preview lacks its ground-truth outline
            write_preview(paths["preview"], source, restored.mask, restored.confidence, label=label, title=row.case)
        except ScanError as err:  # the masks are written: the case succeeded, without its preview
            row.error = f"no preview: {err}"


def preview_label(folder: Path | None, case: str, geometry: Geometry) -> tuple[np.ndarray | None, str]:
    """The ground-truth label of `case` in `folder` for the preview, and a note when one exists
    but cannot be drawn (it is on another grid)."""
    if folder is None:
        return None, ""
    matches = [p for p in find_scans(folder).scans if case_id(p) == case]
    if not matches:
        return None, ""
    label = read_scan(matches[0], dtype=np.uint8)
    if not label.geometry.same_grid(geometry, atol=1e-3):
        return None, f"preview without ground truth: {matches[0].name} is on another grid than the scan"
    return label.array, ""

"""What a folder run writes per case: the mask, the confidence map, optionally the probabilities and a
preview, all atomically, the mask last (its presence marks the case done); and the case's row
figures (volume, confidence, review flag)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ceds_deploy.inference.options import SegmentOptions
from ceds_deploy.inference.report import CaseRow
from ceds_deploy.io import case_id, find_scans, read_scan, write_volumes
from ceds_deploy.qa.review import assess
from ceds_deploy.spec import Calibration
from ceds_deploy.transforms.preprocess import GridMapping
from ceds_deploy.transforms.restore import RestoredPrediction, restore_prediction
from ceds_deploy.volume import Geometry, Volume

MASK_SUFFIX = ".nii.gz"
CONFIDENCE_SUFFIX = "_confidence.nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
PREVIEW_SUFFIX = "_preview.png"
OUTPUT_SUFFIXES = (CONFIDENCE_SUFFIX, PROBABILITIES_SUFFIX, PREVIEW_SUFFIX, MASK_SUFFIX)


def output_paths(output: Path, case: str) -> dict[str, Path]:
    """Where each output of `case` goes in the folder `output`."""
    return {
        "mask": output / f"{case}{MASK_SUFFIX}",
        "confidence": output / f"{case}{CONFIDENCE_SUFFIX}",
        "probabilities": output / f"{case}{PROBABILITIES_SUFFIX}",
        "preview": output / f"{case}{PREVIEW_SUFFIX}",
    }


def case_is_done(output: Path, case: str) -> bool:
    paths = output_paths(output, case)
    return paths["mask"].exists() and paths["confidence"].exists()


def finish_case(
    row: CaseRow,
    seg: torch.Tensor,
    conf: torch.Tensor,
    mapping: GridMapping,
    output: Path,
    options: SegmentOptions,
    source: Volume | None = None,
    calibration: Calibration | None = None,
) -> CaseRow:
    """Restore a stitched prediction to the scan's grid (calibrating its confidence with the model's
    `calibration`), write its files and fill `row`. `source` (the scan in HU) is needed only for a preview."""
    started = time.perf_counter()
    restored = restore_prediction(
        seg, conf, mapping, options.save_probabilities, options.largest_component, calibration
    )
    del seg, conf
    restored_at = time.perf_counter()
    write_case_files(output, row, restored, mapping.source, options, source)
    row.seconds["restore"], row.seconds["write"] = restored_at - started, time.perf_counter() - restored_at
    findings = assess(
        restored.mask,
        restored.confidence,
        mapping.source.voxel_volume_ml,
        options.confidence_threshold,
        spacing=mapping.source.spacing,
        calibration_margin_mm=None if calibration is None else calibration.margin_mm,
        review_below=options.review_below,
    )
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
) -> None:
    """The case's files; the mask appears last, so its presence means the others are complete."""
    paths = output_paths(output, row.case)
    items: list[tuple[Path, np.ndarray, Geometry]] = [(paths["confidence"], restored.confidence, geometry)]
    if restored.probabilities is not None:
        items.append((paths["probabilities"], restored.probabilities, geometry))
    items.append((paths["mask"], restored.mask, geometry))
    write_volumes(items)  # type: ignore[arg-type]
    if options.preview and source is not None:
        from ceds_deploy.qa.preview import write_preview

        label, note = preview_label(options.preview_labels, row.case, geometry)
        if note:
            row.error = note  # the case succeeded; the preview lacks its ground-truth outline
        write_preview(paths["preview"], source, restored.mask, restored.confidence, label=label, title=row.case)


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

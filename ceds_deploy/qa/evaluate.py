"""Compare predicted masks with ground-truth labels: Dice, HD95 and volumes per case, and their means.

Pairing: every prediction ``PRED_DIR/<case>.<image suffix>`` is matched with the label of the same
case id in ``LABEL_DIR`` (any image suffix; ``case_id`` also drops nnU-Net's ``_0000``). The other
files `ceds segment` writes next to the masks (``<case>_confidence.nii.gz``,
``<case>_probabilities.nii.gz``, ``report.csv/json``, ``<case>_preview.png``) and this module's own
``evaluation.csv`` are not predictions and are ignored.

Definitions (binary masks, foreground = 1, on the same grid):
- Dice = 2|P n T| / (|P| + |T|); both empty -> 1.0 (a correct "no tumour"); one empty -> 0.0.
- HD95 (mm) = symmetric 95th-percentile Hausdorff distance between the mask edges, in physical
  millimetres (voxel spacing), computed by MONAI's ``compute_hausdorff_distance(percentile=95)``:
  the larger of the two directed 95th percentiles. Both empty -> 0.0. One empty -> ``inf``
  (the distance to an empty set is undefined; written as ``inf`` in the CSV and left out of the mean,
  whose ``hd95_cases`` count says how many cases it covers).
- Volumes in mL = voxel count * voxel volume. ``volume_diff_ml`` = pred - true (signed),
  ``abs_volume_diff_ml`` = its absolute value, ``rel_volume_diff_pct`` = 100 * (pred - true) / true
  (0 when both are empty, ``inf`` when only the label is empty; left out of the mean then).

A case whose prediction and label are on different grids (shape, spacing, origin or direction), or
whose masks hold values other than 0 and 1, becomes an ``error`` row naming the file; a prediction
without a label becomes a ``no_label`` row. The run goes on either way.
"""

from __future__ import annotations

import csv
import io as _io
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ceds_deploy.errors import CedsError, ScanError
from ceds_deploy.io import ScanSource, case_id, find_scans, read_scan, write_atomic_text
from ceds_deploy.qa.metrics import dice, hausdorff95
from ceds_deploy.volume import Geometry

EVALUATION_CSV = "evaluation.csv"
# Outputs of `ceds segment` that sit next to the masks (pipeline.CONFIDENCE_SUFFIX, PROBABILITIES_SUFFIX)
# but are not masks. Matched on the case id, so any image suffix is covered.
NON_MASK_CASE_SUFFIXES = ("_confidence", "_probabilities")
GRID_ATOL = 1e-3  # mm / direction cosines; files written by different tools round differently

CSV_FIELDS = (
    "case",
    "status",
    "dice",
    "hd95_mm",
    "pred_ml",
    "true_ml",
    "volume_diff_ml",
    "abs_volume_diff_ml",
    "rel_volume_diff_pct",
    "prediction",
    "label",
    "message",
)
METRICS = ("dice", "hd95_mm", "pred_ml", "true_ml", "volume_diff_ml", "abs_volume_diff_ml", "rel_volume_diff_pct")


@dataclass
class CaseEvaluation:
    """One row of `evaluation.csv`: the case, its `status`, the prediction and label files and the
    metrics (nan where not computed); `message` says why for an error."""

    case: str
    status: str  # "ok", "error" (message says why) or "no_label"
    prediction: str = ""
    label: str = ""
    dice: float = math.nan
    hd95_mm: float = math.nan
    pred_ml: float = math.nan
    true_ml: float = math.nan
    volume_diff_ml: float = math.nan
    abs_volume_diff_ml: float = math.nan
    rel_volume_diff_pct: float = math.nan
    message: str = ""


@dataclass
class EvaluationReport:
    """The evaluation of a folder: one row per case, the mean and count of each metric over the ok
    cases, the predictions and labels left unmatched, and where the CSV was written."""

    rows: list[CaseEvaluation]
    means: dict[str, float]  # metric -> mean over the ok cases where it is finite
    counts: dict[str, int]  # metric -> how many cases that mean covers
    missing_labels: list[Path] = field(default_factory=list)  # predictions with no label
    unmatched_labels: list[Path] = field(default_factory=list)  # labels with no prediction
    csv_path: Path | None = None

    @property
    def ok(self) -> list[CaseEvaluation]:
        """The rows whose status is "ok"."""
        return [r for r in self.rows if r.status == "ok"]

    @property
    def errors(self) -> list[CaseEvaluation]:
        """The rows whose status is "error"."""
        return [r for r in self.rows if r.status == "error"]


def _binary(path: Path, array: np.ndarray, role: str) -> np.ndarray:
    """`array` as a boolean mask; a `ScanError` naming the file when it holds anything but 0 and 1."""
    if array.dtype == np.bool_:
        return array
    binary = (array == 0) | (array == 1)
    if not binary.all():
        bad = np.unique(array[~binary])
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise ScanError(
            path,
            f"{role} holds values other than 0 and 1 ({shown}); expected a binary tumour mask (background 0, tumour 1)",
        )
    return array == 1


def grid_difference(pred: Geometry, true: Geometry, atol: float = GRID_ATOL) -> str:
    """'' when the grids match, else which of shape/spacing/origin/direction differ and how."""

    def fmt(values) -> str:
        flat = np.asarray(values, dtype=float).ravel()
        return "(" + ", ".join(f"{v:.6g}" for v in flat) + ")"

    parts = []
    if pred.shape != true.shape:
        parts.append(f"shape {pred.shape} vs {true.shape}")
    for name in ("spacing", "origin", "direction"):
        a, b = np.asarray(getattr(pred, name)), np.asarray(getattr(true, name))
        if not np.allclose(a, b, atol=atol):
            parts.append(f"{name} {fmt(a)} vs {fmt(b)}")
    if not parts and not pred.same_grid(true, atol=atol):
        parts.append("voxel-to-world mapping differs")
    return "; ".join(parts)


def evaluate_case(prediction: Path, label: Path) -> CaseEvaluation:
    """Read one prediction and its label and compute every metric. Raises `ScanError` on bad input."""
    case = case_id(prediction)
    pred_volume = read_scan(prediction, dtype=None)
    true_volume = read_scan(label, dtype=None)
    difference = grid_difference(pred_volume.geometry, true_volume.geometry)
    if difference:
        raise ScanError(
            prediction, f"prediction grid differs from its label {label} (prediction vs label: {difference})"
        )
    pred = _binary(prediction, pred_volume.array, "prediction")
    true = _binary(label, true_volume.array, "label")
    voxel_ml = true_volume.geometry.voxel_volume_ml
    pred_ml = int(np.count_nonzero(pred)) * voxel_ml
    true_ml = int(np.count_nonzero(true)) * voxel_ml
    diff = pred_ml - true_ml
    if true_ml > 0:
        rel = 100.0 * diff / true_ml
    else:
        rel = 0.0 if pred_ml == 0 else math.inf
    return CaseEvaluation(
        case=case,
        status="ok",
        prediction=str(prediction),
        label=str(label),
        dice=dice(pred, true),
        hd95_mm=hausdorff95(pred, true, true_volume.geometry.spacing),
        pred_ml=pred_ml,
        true_ml=true_ml,
        volume_diff_ml=diff,
        abs_volume_diff_ml=abs(diff),
        rel_volume_diff_pct=rel,
    )


# ---------------------------------------------------------------- folders


def is_prediction_file(path: ScanSource) -> bool:
    """True for a mask; False for the confidence/probability maps `ceds segment` writes beside it."""
    return not case_id(path).endswith(NON_MASK_CASE_SUFFIXES)


def _by_case(paths: list[Path]) -> dict[str, list[Path]]:
    cases: dict[str, list[Path]] = {}
    for path in paths:
        cases.setdefault(case_id(path), []).append(path)
    return cases


def summarize(rows: list[CaseEvaluation]) -> tuple[dict[str, float], dict[str, int]]:
    """Means of each metric over the ok rows where it is finite, and how many rows each covers."""
    means, counts = {}, {}
    for metric in METRICS:
        values = [getattr(r, metric) for r in rows if r.status == "ok" and math.isfinite(getattr(r, metric))]
        means[metric] = float(np.mean(values)) if values else math.nan
        counts[metric] = len(values)
    return means, counts


def _fmt(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.6g}"
    return str(value)


def evaluation_csv(report: EvaluationReport) -> str:
    """The CSV text: one row per case, then a `mean` row (its `message` says how many cases per mean)."""
    buffer = _io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in report.rows:
        values = asdict(row)
        writer.writerow({k: _fmt(values[k]) for k in CSV_FIELDS})
    covered = "; ".join(f"{k} over {n}" for k, n in report.counts.items())
    mean_row = {k: _fmt(report.means.get(k, "")) for k in CSV_FIELDS}
    mean_row.update(
        case="mean",
        status="",
        prediction="",
        label="",
        message=f"means over the {len(report.ok)} ok cases, finite values only: {covered}",
    )
    writer.writerow(mean_row)
    return buffer.getvalue()


def evaluate_folder(
    pred_dir: str | os.PathLike, label_dir: str | os.PathLike, out_csv: str | os.PathLike | None = None
) -> EvaluationReport:
    """Evaluate every prediction in `pred_dir` against its label in `label_dir`.

    Writes the CSV (atomically) to `out_csv`, by default ``pred_dir/evaluation.csv``. Raises
    `CedsError` when a folder is missing, holds no predictions, or no prediction has a label;
    per-case problems become rows instead.
    """
    pred_dir, label_dir = Path(pred_dir), Path(label_dir)
    for folder, role in ((pred_dir, "prediction folder"), (label_dir, "label folder")):
        if not folder.is_dir():
            raise ScanError(folder, f"{role} does not exist or is not a folder")
    # Masks and labels are image files (a DICOM series is a scan, never a mask here).
    predictions = _by_case([p for p in find_scans(pred_dir).scans if isinstance(p, Path) and is_prediction_file(p)])
    labels = _by_case([p for p in find_scans(label_dir).scans if isinstance(p, Path)])
    if not predictions:
        raise CedsError(
            f"{pred_dir}: no predicted masks found (expected <case>.nii.gz files, as `ceds segment` writes)"
        )
    if not set(predictions) & set(labels):
        raise CedsError(
            f"none of the {len(predictions)} predictions in {pred_dir} has a label in "
            f"{label_dir} (labels are matched by case name, e.g. "
            f"{next(iter(predictions))}.nii.gz)"
        )

    rows: list[CaseEvaluation] = []
    missing: list[Path] = []
    for case in sorted(predictions):
        preds, truths = predictions[case], labels.get(case, [])
        if len(preds) > 1:
            rows.append(
                CaseEvaluation(
                    case,
                    "error",
                    prediction=str(preds[0]),
                    message=(
                        f"case {case!r} has {len(preds)} predictions: {', '.join(p.name for p in preds)}; keep one"
                    ),
                )
            )
            continue
        if not truths:
            missing.append(preds[0])
            rows.append(
                CaseEvaluation(
                    case,
                    "no_label",
                    prediction=str(preds[0]),
                    message=f"no label named {case}.<image suffix> in {label_dir}",
                )
            )
            continue
        if len(truths) > 1:
            rows.append(
                CaseEvaluation(
                    case,
                    "error",
                    prediction=str(preds[0]),
                    message=(f"case {case!r} has {len(truths)} labels: {', '.join(str(p) for p in truths)}; keep one"),
                )
            )
            continue
        try:
            rows.append(evaluate_case(preds[0], truths[0]))
        except ScanError as err:
            rows.append(CaseEvaluation(case, "error", prediction=str(preds[0]), label=str(truths[0]), message=str(err)))
    means, counts = summarize(rows)
    unmatched = sorted(p for case, paths in labels.items() if case not in predictions for p in paths)
    report = EvaluationReport(rows, means, counts, missing, unmatched)
    report.csv_path = Path(out_csv) if out_csv is not None else pred_dir / EVALUATION_CSV
    write_atomic_text(report.csv_path, evaluation_csv(report))
    return report

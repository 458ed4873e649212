"""Fitting a trained network's confidence calibration on labeled cases and storing it in its checkpoint.

`ceds train` calls `calibrate_checkpoint` on best_teacher.pt with the run's validation cases when the
run ends; `ceds calibrate CKPT DATA_DIR` does the same for any checkpoint and labeled cases. The cases
go through `segment_volume` (the code path of `ceds segment`) with the raw confidence map, the fit is
`qa.calibration.fit_isotonic`, and the run folder gets calibration.json and reliability.png.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ceds_deploy.inference import SegmentOptions
from ceds_deploy.io import read_scan, write_atomic_text
from ceds_deploy.qa.calibration import (
    DEFAULT_MARGIN_MM,
    CalibrationSamples,
    calibration_region,
    fit_isotonic,
    write_reliability_png,
)
from ceds_deploy.spec import Calibration, ModelSpec
from ceds_deploy.training.cache import read_label
from ceds_deploy.training.config import TrainConfig
from ceds_deploy.training.data import LabeledCase

log = logging.getLogger(__name__)
CALIBRATION_JSON = "calibration.json"
RELIABILITY_PNG = "reliability.png"


@dataclass
class RawPrediction:
    """One labeled case segmented with the raw (uncalibrated) confidence map, on the scan's grid."""

    case: str
    mask: np.ndarray
    confidence: np.ndarray
    label: np.ndarray
    spacing: tuple[float, ...]


def pick_cases(data_dir: Path, names: Sequence[str] | None = None, held_out: bool = False) -> list[LabeledCase]:
    """Labeled cases of a dataset folder: its training pairs (dataset.json or imagesTr/ + labelsTr/), or
    with `held_out` its imagesTs/ + labelsTs/ pairs; only `names` when given (each must exist)."""
    from ceds_deploy.errors import DatasetError
    from ceds_deploy.io import case_id, find_scans
    from ceds_deploy.training.data import discover

    data_dir = Path(data_dir)
    if held_out:
        labels = (
            {case_id(p): p for p in find_scans(data_dir / "labelsTs").scans} if (data_dir / "labelsTs").is_dir() else {}
        )
        images = find_scans(data_dir / "imagesTs").scans if (data_dir / "imagesTs").is_dir() else []
        pairs = [LabeledCase(case_id(p), p, labels[case_id(p)]) for p in images if case_id(p) in labels]
    else:
        pairs = discover(data_dir)[0]
    if names is None:
        return pairs
    by_name = {c.name: c for c in pairs}
    missing = [n for n in names if n not in by_name]
    if missing:
        where = "imagesTs/ + labelsTs/" if held_out else "its labeled cases"
        raise DatasetError(f"{data_dir}: no labeled case {missing[0]!r} in {where}")
    return [by_name[n] for n in names]


def raw_predictions(
    net, spec: ModelSpec, cases: Sequence[LabeledCase], options: SegmentOptions | None = None, device: str = "cpu"
) -> Iterator[RawPrediction]:
    """Segment each case with `net` as `ceds segment` would, but without any calibration."""
    from ceds_deploy.backends.torch_backend import TorchBackend
    from ceds_deploy.inference import segment_volume

    options = options or SegmentOptions()
    raw = spec.replace(calibration=None)
    with TorchBackend.from_module(net, raw, device=device, max_batch_size=options.batch_size, precision="fp32") as be:
        for case in cases:
            image = read_scan(case.image)
            label = read_label(case, image).array
            seg = segment_volume(image, be, options)
            yield RawPrediction(case.name, seg.mask, seg.confidence, label, image.geometry.spacing)


def collect(predictions, margin_mm: float = DEFAULT_MARGIN_MM) -> CalibrationSamples:
    """The calibration histogram of `predictions` (`RawPrediction`s) over their calibration regions."""
    samples = CalibrationSamples()
    for p in predictions:
        samples.add(p.mask, p.confidence, p.label, calibration_region(p.mask, p.spacing, margin_mm))
    return samples


def fit_on_cases(
    net,
    spec: ModelSpec,
    cases: Sequence[LabeledCase],
    options: SegmentOptions | None = None,
    device: str = "cpu",
    margin_mm: float = DEFAULT_MARGIN_MM,
) -> tuple[Calibration, CalibrationSamples]:
    """Fit the calibration of `net` on labeled `cases`; also returns the raw samples it was fitted on."""
    samples = collect(raw_predictions(net, spec, cases, options, device), margin_mm)
    return fit_isotonic(samples, margin_mm), samples


def calibration_record(calibration: Calibration, samples: CalibrationSamples, **about) -> dict:
    """calibration.json's content: what was fitted, on what, and the ECE before and after on those cases."""
    before, after = samples.ece(), samples.ece(calibration)
    by_class = {
        name: {"voxels": int(samples.voxels[k].sum()), "right": float(samples.right[k].sum())}
        for k, name in enumerate(("background", "tumour"))
    }
    return {
        **about,
        "ece_bins": 15,
        "ece_before_on_fit_cases": before,
        "ece_after_on_fit_cases": after,
        "voxels": by_class,
        "calibration": {"method": calibration.method, "margin_mm": calibration.margin_mm, "cases": calibration.cases},
        "tables": {"background": calibration.tables[0], "tumour": calibration.tables[1]},
    }


FEW_CASES = 2  # below this many cases a calibration is fitted on one scan's voxels alone: warned


def calibrate_checkpoint(
    checkpoint: Path,
    cases: Sequence[LabeledCase],
    report_dir: Path,
    *,
    weights: str = "teacher",
    output: Path | None = None,
    options: SegmentOptions | None = None,
    device: str = "cpu",
    margin_mm: float = DEFAULT_MARGIN_MM,
    on_case: Callable[[str], None] | None = None,
) -> dict:
    """Fit the `weights` network's calibration on `cases`, store it in the checkpoint's spec (in place,
    or a copy at `output`) and write calibration.json and reliability.png into `report_dir`.
    Returns calibration.json's content."""
    from ceds_deploy.checkpoint import load_checkpoint, load_network, save_checkpoint
    from ceds_deploy.errors import DatasetError

    if not cases:
        raise DatasetError(f"{checkpoint}: no labeled cases to fit the calibration on")
    if len(cases) < FEW_CASES:
        log.warning(
            "%s: calibrating on %d case(s) only: the expected Dice it gives is a rough guess; "
            "fit it on more labeled cases where you can",
            checkpoint,
            len(cases),
        )
    net, spec = load_network(checkpoint, weights)
    predictions = raw_predictions(net, spec, cases, options, device)
    samples = collect(_announce(predictions, on_case), margin_mm)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    if samples.voxels.sum() == 0:
        note = f"no tumour predicted on any of the {len(cases)} cases: nothing to calibrate on; the raw map stays"
        log.warning("%s: %s", checkpoint, note)
        record = {"checkpoint": str(checkpoint), "weights": weights, "cases": [c.name for c in cases], "note": note}
        write_atomic_text(report_dir / CALIBRATION_JSON, json.dumps({**record, "calibration": None}, indent=2))
        return record
    calibration = fit_isotonic(samples, margin_mm)
    payload = load_checkpoint(checkpoint)
    payload["spec"] = spec.replace(calibration=calibration).to_dict()
    target = Path(output or checkpoint)
    save_checkpoint(target, payload)
    record = calibration_record(
        calibration, samples, checkpoint=str(target), weights=weights, cases=[c.name for c in cases]
    )
    write_atomic_text(report_dir / CALIBRATION_JSON, json.dumps(record, indent=2))
    curves = {"raw": samples.histogram(), "calibrated": samples.histogram(calibration)}
    title = f"{target.name} ({weights}) on its {len(cases)} fitting cases"
    title += f"\nvoxels within {margin_mm:g} mm of the predicted tumour"
    write_reliability_png(report_dir / RELIABILITY_PNG, curves, title)
    log.info(
        "calibrated %s on %d cases: ECE %.3f -> %.3f (fitting cases)",
        target,
        len(cases),
        record["ece_before_on_fit_cases"],
        record["ece_after_on_fit_cases"],
    )
    return record


def _announce(predictions: Iterator[RawPrediction], on_case: Callable[[str], None] | None):
    for p in predictions:
        if on_case:
            on_case(p.case)
        yield p


def calibrate_finished_run(
    run_dir: Path, checkpoint_dir: Path, validation: Sequence[LabeledCase], config: TrainConfig, device: str
) -> list[Path]:
    """What `ceds train` does when a run ends: fit best_teacher.pt's calibration on the run's
    validation cases, with the validation's window settings; returns the files written (none
    without validation cases or a best checkpoint)."""
    best = checkpoint_dir / "best_teacher.pt"
    if not validation or not best.is_file():
        return []
    options = SegmentOptions(overlap=config.val_overlap, batch_size=config.val_batch_size)
    calibrate_checkpoint(best, validation, run_dir, options=options, device=device)
    return [run_dir / CALIBRATION_JSON, run_dir / RELIABILITY_PNG]

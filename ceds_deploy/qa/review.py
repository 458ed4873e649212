"""The case-level review flag: tumour volume, confidence inside it, the expected Dice, and whether a
person should look.

With a calibrated model (`spec.Calibration`) the confidence of a voxel is the probability that its
predicted label is right, and the case's score is the expected Dice of the mask against the truth:

    E[Dice] ~ 2 S / (|pred| + S + M),   S = sum of c over predicted tumour (expected true positives),
                                        M = sum of (1 - c) over predicted background within the
                                            calibration margin of the mask (expected missed tumour)

(a ratio of expectations). Missed tumour far from the mask is not counted: there the map says little
and the calibration was not fitted; a case with no tumour found is flagged on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ceds_deploy.qa.calibration import calibration_box, tumour_box
from ceds_deploy.transforms.resample import memory_order


@dataclass(frozen=True)
class CaseFindings:
    """`assess`'s verdict on one case: tumour volume (mL), mean confidence inside the tumour, the share of
    the tumour below the confidence threshold, the expected Dice (nan without a calibration), and whether
    a person should look (`review_reason` says why)."""

    tumour_ml: float
    mean_confidence: float  # inside the predicted tumour; nan when there is none
    low_confidence_fraction: float  # of the tumour, below the threshold; nan when no tumour
    needs_review: bool
    review_reason: str
    expected_dice: float = math.nan  # from the calibrated map; nan when the model has no calibration


MIN_PLAUSIBLE_ML = 0.5  # smaller than a 1 cm sphere: most likely noise
MAX_PLAUSIBLE_ML = 1500.0  # larger than the mediastinum itself
DEFAULT_REVIEW_BELOW = 0.7  # expected Dice below which a case is flagged


def _sum_inside(values: np.ndarray, mask: np.ndarray, below: float | None = None) -> tuple[float, int]:
    """(sum of `values` over the tumour voxels of `mask`, how many of them are below `below`), looking
    only inside the tumour's bounding box: no scan-sized temporary for the usual small tumour."""
    box = tumour_box(mask)
    if box is None:
        return 0.0, 0
    chosen = values[box][mask[box] > 0]
    return float(chosen.sum(dtype=np.float64)), int(np.count_nonzero(chosen < below)) if below is not None else 0


def _in_memory_order(mask: np.ndarray, confidence: np.ndarray, spacing: tuple[float, ...] | None):
    """Both maps (and the spacing) with their axes in memory order, when they lie in memory alike: a
    restored map is x fastest, and a scan through it in the other order reads across memory."""
    order = memory_order(mask)
    same = order == memory_order(confidence)
    if not same or mask.shape != confidence.shape or order == tuple(range(mask.ndim)):
        return mask, confidence, spacing
    moved = None if spacing is None else tuple(spacing[a] for a in order)
    return mask.transpose(order), confidence.transpose(order), moved


def expected_dice(mask: np.ndarray, calibrated: np.ndarray, spacing: tuple[float, ...], margin_mm: float) -> float:
    """E[Dice] of `mask` from a calibrated confidence map (see the module docstring); 0.0 when nothing
    is predicted."""
    count = int(np.count_nonzero(mask))  # labels are never negative: nonzero is tumour
    if count == 0:
        return 0.0
    right_inside, _ = _sum_inside(calibrated, mask)
    found = calibration_box(mask, spacing, margin_mm)
    assert found is not None  # count > 0
    box, region = found  # the region is empty outside its box: only the box is looked at
    around = region & (mask[box] == 0)
    missed = float((1.0 - calibrated[box][around]).sum(dtype=np.float64))
    return 2.0 * right_inside / (count + right_inside + missed)


def assess(
    mask: np.ndarray,
    confidence: np.ndarray,
    voxel_ml: float,
    threshold: float,
    max_low_fraction: float = 0.2,
    *,
    spacing: tuple[float, ...] | None = None,
    calibration_margin_mm: float | None = None,
    review_below: float = DEFAULT_REVIEW_BELOW,
) -> CaseFindings:
    """Tumour volume, confidence inside it, and whether a human should look at this case.

    With `calibration_margin_mm` (the model is calibrated) and `spacing`, the flag is the expected Dice
    below `review_below`; without, a share of the tumour above `max_low_fraction` below `threshold`.
    Implausible volumes and no tumour are flagged either way."""
    mask, confidence, spacing = _in_memory_order(mask, confidence, spacing)
    count = int(np.count_nonzero(mask))  # labels are never negative: nonzero is tumour
    tumour_ml = count * voxel_ml
    calibrated = calibration_margin_mm is not None and spacing is not None
    if count == 0:
        return CaseFindings(0.0, math.nan, math.nan, True, "no tumour found", 0.0 if calibrated else math.nan)
    total, below = _sum_inside(confidence, mask, threshold)
    mean_conf = total / count
    low = below / count
    reasons = []
    score = math.nan
    if calibrated:
        score = expected_dice(mask, confidence, spacing, calibration_margin_mm)  # type: ignore[arg-type]
        if score < review_below:
            reasons.append(f"expected Dice {score:.2f} below {review_below:g}")
    elif low > max_low_fraction:
        reasons.append(f"{low:.0%} of the tumour below confidence {threshold:g}")
    if tumour_ml < MIN_PLAUSIBLE_ML:
        reasons.append(f"implausibly small ({tumour_ml:.2f} mL)")
    if tumour_ml > MAX_PLAUSIBLE_ML:
        reasons.append(f"implausibly large ({tumour_ml:.0f} mL)")
    return CaseFindings(tumour_ml, mean_conf, low, bool(reasons), "; ".join(reasons), score)

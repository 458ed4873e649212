"""The case-level review flag: tumour volume, confidence inside it, and whether a person should look."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CaseFindings:
    """`assess`'s verdict on one case: tumour volume (mL), mean confidence inside the tumour, the share of
    the tumour below the confidence threshold, and whether a person should look (`review_reason` says why)."""

    tumour_ml: float
    mean_confidence: float  # inside the predicted tumour; nan when there is none
    low_confidence_fraction: float  # of the tumour, below the threshold; nan when no tumour
    needs_review: bool
    review_reason: str


MIN_PLAUSIBLE_ML = 0.5  # smaller than a 1 cm sphere: most likely noise
MAX_PLAUSIBLE_ML = 1500.0  # larger than the mediastinum itself


def assess(
    mask: np.ndarray, confidence: np.ndarray, voxel_ml: float, threshold: float, max_low_fraction: float = 0.2
) -> CaseFindings:
    """Tumour volume, confidence inside it, and whether a human should look at this case."""
    inside = mask > 0
    count = int(np.count_nonzero(inside))
    tumour_ml = count * voxel_ml
    if count == 0:
        return CaseFindings(0.0, float("nan"), float("nan"), True, "no tumour found")
    values = confidence[inside]
    mean_conf = float(values.mean())
    low = float(np.count_nonzero(values < threshold)) / count
    reasons = []
    if low > max_low_fraction:
        reasons.append(f"{low:.0%} of the tumour below confidence {threshold:g}")
    if tumour_ml < MIN_PLAUSIBLE_ML:
        reasons.append(f"implausibly small ({tumour_ml:.2f} mL)")
    if tumour_ml > MAX_PLAUSIBLE_ML:
        reasons.append(f"implausibly large ({tumour_ml:.0f} mL)")
    return CaseFindings(tumour_ml, mean_conf, low, bool(reasons), "; ".join(reasons))

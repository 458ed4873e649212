"""From stitched model-grid outputs to a mask, confidence map and probabilities on the scan's grid,
and the per-case numbers the run report needs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ceds_deploy.preprocess import PreprocessPlan, restore_to_source
from ceds_deploy.stitch import BACKGROUND_LOGIT, UNCOVERED_CONFIDENCE


CONFIDENCE_STEPS = 1024  # confidence is stored in steps of 1/1024 (max error 4.9e-4)


def quantize_confidence(conf: np.ndarray) -> np.ndarray:
    """Round a [0, 1] map to multiples of 1/CONFIDENCE_STEPS, in place. The float32 values then
    have short mantissas, so the compressed file is 2.3-2.7x smaller (512x512x300: 127 MB -> 54 MB
    with ISA-L level 1, 129 -> 47 MB with ITK's writer), at an error far below the confidence's own."""
    conf *= CONFIDENCE_STEPS
    np.round(conf, out=conf)
    conf *= 1.0 / CONFIDENCE_STEPS
    return conf


@dataclass
class RestoredPrediction:
    mask: np.ndarray  # uint8 labels on the scan's grid
    confidence: np.ndarray  # float32 in [0, 1]
    probabilities: np.ndarray | None  # float32 tumour probability (2 classes) or (C, ...) otherwise


def restore_prediction(seg_logits: torch.Tensor, confidence: torch.Tensor, plan: PreprocessPlan,
                       keep_probabilities: bool = False, largest_component: bool = False) -> RestoredPrediction:
    """Resample logits (not labels) back to the scan's grid, then take the argmax (as nnU-Net),
    optionally keeping only the largest tumour region. Tensors on a GPU are resampled there; the
    results are numpy arrays on the host."""
    seg = seg_logits.detach()
    if seg.shape[0] == 2:
        # With two classes, argmax == (l1 - l0 > 0): restore one channel instead of two.
        diff = (seg[1] - seg[0])[None]
        del seg
        restored = restore_to_source(diff, plan, fill=-2 * BACKGROUND_LOGIT)[0]
        mask = (restored > 0).astype(np.uint8)
        probabilities = None
        if keep_probabilities:
            probabilities = torch.sigmoid(torch.from_numpy(restored)).numpy()
        del restored
    else:
        fills = [BACKGROUND_LOGIT] + [-BACKGROUND_LOGIT] * (seg.shape[0] - 1)
        restored = restore_to_source(seg, plan, fill=tuple(fills))
        mask = np.argmax(restored, axis=0).astype(np.uint8)
        probabilities = torch.softmax(torch.from_numpy(restored), 0).numpy() if keep_probabilities else None
    conf = restore_to_source(confidence.detach(), plan, fill=UNCOVERED_CONFIDENCE)[0]
    np.clip(conf, 0.0, 1.0, out=conf)
    quantize_confidence(conf)
    if largest_component:
        mask = keep_largest_component(mask)
    return RestoredPrediction(mask, conf, probabilities)


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 26-connected foreground component (nnU-Net's optional post-processing,
    for tasks with one lesion per scan); uint8 like the input."""
    from scipy import ndimage

    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.where(labels == int(np.argmax(sizes)), mask, 0).astype(mask.dtype)


@dataclass(frozen=True)
class CaseFindings:
    tumour_ml: float
    mean_confidence: float  # inside the predicted tumour; nan when there is none
    low_confidence_fraction: float  # of the tumour, below the threshold; nan when no tumour
    needs_review: bool
    review_reason: str


MIN_PLAUSIBLE_ML = 0.5  # smaller than a 1 cm sphere: most likely noise
MAX_PLAUSIBLE_ML = 1500.0  # larger than the mediastinum itself


def assess(mask: np.ndarray, confidence: np.ndarray, voxel_ml: float, threshold: float,
           max_low_fraction: float = 0.2) -> CaseFindings:
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

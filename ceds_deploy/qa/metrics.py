"""The project's metrics, defined once: Dice and HD95 of masks, the AUROC of a confidence map, the
expected calibration error (ECE) of a probability map.

Dice of two masks that are both empty is 1.0 (a correct "no tumour"); HD95 is in millimetres,
0.0 when both are empty and inf when exactly one is (see `qa.evaluate`).
"""

from __future__ import annotations

import math
import warnings

import numpy as np


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    p, t = int(np.count_nonzero(pred)), int(np.count_nonzero(true))
    if p + t == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & true)) / (p + t)


def _union_box(pred: np.ndarray, true: np.ndarray) -> tuple[slice, ...]:
    """Bounding box of both masks with a 1-voxel margin (clamped): edges and distances inside it are
    exactly those of the whole arrays, since everything outside is background."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(pred.any(axis=other) | true.any(axis=other))
        box.append(slice(max(0, int(hits[0]) - 1), min(pred.shape[axis], int(hits[-1]) + 2)))
    return tuple(box)


def hausdorff95(pred: np.ndarray, true: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm (see the module docstring for empty masks)."""
    has_pred, has_true = bool(pred.any()), bool(true.any())
    if not has_pred and not has_true:
        return 0.0
    if has_pred != has_true:
        return math.inf
    import torch
    from monai.metrics import compute_hausdorff_distance

    box = _union_box(pred, true)
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    t = torch.from_numpy(np.ascontiguousarray(true[box]))[None, None]
    with warnings.catch_warnings():
        # MONAI 1.5+ passes its own deprecated argument internally; not actionable here.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_hausdorff_distance(
            p, t, include_background=True, percentile=95, spacing=[float(s) for s in spacing]
        )
    return float(value.reshape(-1)[0])


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for predicting `positive` (Mann-Whitney U with average
    ranks for ties); nan when one class is absent."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64).ravel()
    positive = np.asarray(positive, dtype=bool).ravel()
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


ECE_BINS = 15


def reliability_bins(
    confidence: np.ndarray, correct: np.ndarray, weight: np.ndarray | None = None, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin of `confidence` over [0, 1] (bin b holds [b/bins, (b+1)/bins), the last
    one 1.0 too): (weight, mean confidence, mean correctness), the means nan in empty bins.
    `correct` may be fractional and `weight` a count: a voxel histogram gives the voxels' values."""
    confidence = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(correct, dtype=np.float64).ravel()
    weight = np.ones_like(confidence) if weight is None else np.asarray(weight, dtype=np.float64).ravel()
    index = np.clip((confidence * bins).astype(np.int64), 0, bins - 1)
    total = np.bincount(index, weight, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(index, weight * confidence, bins) / total
        mean_correct = np.bincount(index, weight * correct, bins) / total
    return total, mean_conf, mean_correct


def expected_calibration_error(
    confidence: np.ndarray, correct: np.ndarray, weight: np.ndarray | None = None, bins: int = ECE_BINS
) -> float:
    """ECE = sum over the `bins` equal-width confidence bins of (bin's share of the voxels) x |mean
    correctness - mean confidence| (Guo et al. 2017); nan when there is no voxel. See
    `reliability_bins` for the arguments."""
    total, mean_conf, mean_correct = reliability_bins(confidence, correct, weight, bins)
    if total.sum() <= 0:
        return math.nan
    filled = total > 0
    return float(np.sum(total[filled] * np.abs(mean_correct[filled] - mean_conf[filled])) / total.sum())


def sample_indices(mask: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Up to `limit` flat indices of the voxels where `mask` is true, drawn without replacement."""
    flat = np.flatnonzero(mask)
    if flat.size <= limit:
        return flat
    return np.sort(np.random.default_rng(seed).choice(flat, size=limit, replace=False))


def nanmean(values: list[float]) -> float:
    """Mean of the values that are not nan, as a float; nan when none is left."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan

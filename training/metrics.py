"""Validation metrics: Dice on the scan's grid and the AUROC of a confidence map."""

from __future__ import annotations

import math

import numpy as np

from ceds_deploy.evaluate import dice  # noqa: F401 - the project's one Dice definition


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


def sample_indices(mask: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Up to `limit` flat indices of the voxels where `mask` is true, drawn without replacement."""
    flat = np.flatnonzero(mask)
    if flat.size <= limit:
        return flat
    return np.sort(np.random.default_rng(seed).choice(flat, size=limit, replace=False))


def nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan

"""A cohort of synthetic cases written in the Medical Segmentation Decathlon layout."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ceds_deploy.errors import ConfigError
from ceds_deploy.progress import ProgressCallback, ProgressEvent, no_progress
from ceds_deploy.synthetic.case import make_case
from ceds_deploy.synthetic.sizes import resolve_size

logger = logging.getLogger(__name__)

TEST_INDEX_START = 1000  # test cases are indices 1000, 1001, ... (never training indices)


def cohort_indices(cases: int, test: int) -> tuple[list[int], list[int]]:
    """Case indices of the training part (0..cases-1) and of the held-out part (``test``
    indices from `TEST_INDEX_START`, or from ``cases`` if that is larger)."""
    start = max(TEST_INDEX_START, cases)
    return list(range(cases)), list(range(start, start + test))


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if value < 0:
        raise ConfigError(f"{name} must be >= 0, got {value}")
    return int(value)


def _case_name(i: int) -> str:
    return f"phantom_{i:03d}.nii.gz"


def make_cohort(
    out_dir: str | os.PathLike[str],
    cases: int,
    labeled: int,
    test: int,
    seed: int = 0,
    size: str = "small",
    progress: ProgressCallback = no_progress,
) -> Path:
    """Write ``cases`` training images (the first ``labeled`` with labels) and ``test`` held-out
    labeled cases under ``out_dir`` in the Decathlon layout, with ``dataset.json``.

    ``progress`` receives "cases" (count = cases to write) and "case" (one written). Returns the
    dataset folder. Raises `ConfigError` (before writing anything) for counts or a seed that are not
    whole numbers >= 0, ``labeled`` above ``cases`` or an unknown size."""
    from ceds_deploy.io import write_atomic_text, write_volume

    cases = _check_count("cases", cases)
    labeled = _check_count("labeled", labeled)
    test = _check_count("test", test)
    seed = _check_count("seed", seed)
    if labeled > cases:
        raise ConfigError(f"labeled ({labeled}) must not exceed cases ({cases})")
    cfg = resolve_size(size)
    out = Path(out_dir)
    train_idx, test_idx = cohort_indices(cases, test)
    jobs = [(i, "Tr", n < labeled) for n, i in enumerate(train_idx)] + [(i, "Ts", True) for i in test_idx]
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    logger.info("writing %d phantom cases (%s size, seed %d) to %s", len(jobs), cfg.name, seed, out)

    progress(ProgressEvent("cases", len(jobs)))
    for i, part, with_label in jobs:
        image, label = make_case(i, seed, cfg.name)
        write_volume(out / f"images{part}" / _case_name(i), image.array, image.geometry)
        if with_label:
            write_volume(out / f"labels{part}" / _case_name(i), label.array, label.geometry)
        progress(ProgressEvent("case", 1, {"case": _case_name(i)}))
    dataset = _dataset_json(cfg.name, seed, labeled, cases, test, train_idx, test_idx)
    write_atomic_text(out / "dataset.json", json.dumps(dataset, indent=2) + "\n")
    return out


def _dataset_json(
    size_name: str, seed: int, labeled: int, cases: int, test: int, train_idx: list[int], test_idx: list[int]
) -> dict[str, Any]:
    """The Decathlon ``dataset.json`` of a cohort."""
    return {
        "name": "CEDS-phantoms",
        "description": (
            f"Synthetic chest CT with one mediastinal mass ({size_name} size, seed {seed}),"
            " made by ceds_deploy.synthetic"
        ),
        "reference": "ceds_deploy.synthetic",
        "licence": "CC0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "tumour"},
        "numTraining": labeled,
        "numUnlabeled": cases - labeled,
        "numTest": test,
        "seed": seed,
        "size": size_name,
        "training": [
            {"image": f"imagesTr/{_case_name(i)}", "label": f"labelsTr/{_case_name(i)}"} for i in train_idx[:labeled]
        ],
        "unlabeled": [f"imagesTr/{_case_name(i)}" for i in train_idx[labeled:]],
        "test": [f"imagesTs/{_case_name(i)}" for i in test_idx],
        "test_labels": [f"labelsTs/{_case_name(i)}" for i in test_idx],
    }

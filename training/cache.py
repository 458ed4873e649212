"""Read, check and pre-process every training case once, before the first step.

The pre-processing is `ceds_deploy.transforms.preprocess` (the code `ceds segment` runs), so the network
trains on exactly the grid and intensities it will see at inference. Label problems (another grid,
values other than 0 and 1) are `DatasetError`s naming the file, raised before training starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ceds_deploy.errors import DatasetError
from ceds_deploy.io import read_scan
from ceds_deploy.spec import ModelSpec
from ceds_deploy.training.data import DatasetSplit, LabeledCase
from ceds_deploy.transforms.preprocess import prepare_label, prepare_scan
from ceds_deploy.volume import Volume


def read_label(case: LabeledCase, image: Volume) -> Volume:
    """The case's label, checked against its image: same grid, values 0 and 1 only."""
    label = read_scan(case.label)
    if label.shape != image.shape:
        raise DatasetError(
            f"{case.label}: label shape {label.shape} differs from the image's {image.shape} ({case.image.name})"
        )
    if not label.geometry.same_grid(image.geometry, atol=1e-3):
        g, h = label.geometry, image.geometry
        raise DatasetError(
            f"{case.label}: label geometry differs from its image {case.image.name} "
            f"(spacing {g.spacing} vs {h.spacing}, origin {g.origin} vs {h.origin})"
        )
    values = np.unique(label.array)
    bad = values[(values != 0) & (values != 1)]
    if bad.size:
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (", ..." if bad.size > 5 else "")
        raise DatasetError(f"{case.label}: label values must be 0 or 1, found {shown}")
    return Volume(label.array.astype(np.uint8), label.geometry)


@dataclass
class PreparedData:
    """Model-grid arrays, channel first (1, X, Y, Z): images float32 in [0, 1], labels uint8."""

    labeled: list[dict[str, torch.Tensor]]
    unlabeled: list[dict[str, torch.Tensor]]


def prepare_split(
    split: DatasetSplit, spec: ModelSpec, *, unlabeled: bool = True, advance: Callable[[str], None] | None = None
) -> PreparedData:
    """Every training case on the model grid; `advance(name)` is called after each case."""
    advance = advance or (lambda name: None)
    labeled = []
    for case in split.labeled:
        image = read_scan(case.image)
        label = read_label(case, image)
        array, plan = prepare_scan(image, spec)
        labeled.append(
            {"image": torch.from_numpy(array)[None], "label": torch.from_numpy(prepare_label(label, plan))[None]}
        )
        advance(case.name)
    images = []
    for path in split.unlabeled if unlabeled else ():
        array, _ = prepare_scan(read_scan(path), spec)
        images.append({"image": torch.from_numpy(array)[None]})
        advance(Path(path).name)
    return PreparedData(labeled, images)


def check_validation_cases(split: DatasetSplit) -> None:
    """Read the validation labels once up front so a bad one fails before training, not at epoch N."""
    for case in split.validation:
        read_label(case, read_scan(case.image))

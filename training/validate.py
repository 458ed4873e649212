"""Validation with the code path of `ceds segment`: `segment_volume` over a `TorchBackend` wrapping
the network in memory, results on each scan's own grid.

Per case and network: Dice of the mask against the label, and the AUROC of the confidence map for
predicting the voxels where the mask is right (mask == label). The AUROC is taken over body voxels
(HU above the spec's body threshold), subsampled: air is trivially right and would inflate it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ceds_deploy.io import read_scan
from ceds_deploy.qa.metrics import auroc, dice, nanmean, sample_indices
from ceds_deploy.spec import ModelSpec
from ceds_deploy.training.cache import read_label
from ceds_deploy.training.data import LabeledCase

AUROC_VOXELS = 200_000  # per case; plenty for three decimals


@dataclass
class CaseScore:
    """One case scored for one network: Dice, the confidence AUROC and (when asked) the max-probability AUROC."""

    case: str
    network: str
    dice: float
    auroc: float  # of the confidence head
    auroc_maxprob: float = float("nan")  # of max(p, 1 - p), the plain-softmax baseline (when asked)


@dataclass
class ValidationResult:
    """Every `CaseScore` of a validation pass."""

    cases: list[CaseScore] = field(default_factory=list)

    def mean(self, network: str, metric: str) -> float:
        """Mean of `metric` (a `CaseScore` field) over `network`'s cases, nan values left out; nan when
        none is left."""
        return nanmean([getattr(c, metric) for c in self.cases if c.network == network])


def score_case(
    mask: np.ndarray,
    confidence: np.ndarray,
    label: np.ndarray,
    body: np.ndarray,
    seed: int,
    probabilities: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """(Dice, confidence AUROC, max-probability AUROC) of one prediction on the scan's grid."""
    truth = label > 0
    pick = sample_indices(body, AUROC_VOXELS, seed)
    right = (mask.ravel()[pick] > 0) == truth.ravel()[pick]
    conf_auc = auroc(confidence.ravel()[pick], right)
    maxprob_auc = float("nan")
    if probabilities is not None:
        p = probabilities.ravel()[pick]
        maxprob_auc = auroc(np.maximum(p, 1.0 - p), right)
    return dice(mask > 0, truth), conf_auc, maxprob_auc


def validate(
    networks: dict[str, object],
    cases: Sequence[LabeledCase],
    spec: ModelSpec,
    *,
    device: str = "cpu",
    batch_size: int = 4,
    overlap: float = 0.25,
    maxprob: bool = False,
    on_case: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Segment every case with every network (e.g. {"student": ..., "teacher": ...}) and score it.

    The networks are put in eval mode by the backend and given back in the mode they were in.
    """
    from ceds_deploy.backends.torch_backend import TorchBackend
    from ceds_deploy.inference import SegmentOptions, segment_volume

    result = ValidationResult()
    for n, case in enumerate(cases):
        image = read_scan(case.image)
        label = read_label(case, image).array
        body = image.array > spec.crop_threshold_hu
        for name, net in networks.items():
            with TorchBackend.from_module(
                net, spec, device=device, max_batch_size=batch_size, precision="fp32"
            ) as backend:
                seg = segment_volume(
                    image, backend, SegmentOptions(overlap=overlap, batch_size=batch_size, save_probabilities=maxprob)
                )
            d, a, m = score_case(seg.mask, seg.confidence, label, body, seed=n, probabilities=seg.probabilities)
            result.cases.append(CaseScore(case.name, name, d, a, m))
        if on_case:
            on_case(case.name)
    return result

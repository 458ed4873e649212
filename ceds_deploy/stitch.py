"""Batched prediction over window plans and float32 stitching of the results.

Windows of consecutive cases share batches: when one case has fewer windows left than a batch,
the next case's windows fill it. The same code serves `ceds segment`, training validation and
the benchmarks.
"""

from __future__ import annotations

import time

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from ceds_deploy.windows import WindowPlan, blend_weights

BACKGROUND_LOGIT = 10.0  # voxels no window covered (air) are confidently background
UNCOVERED_CONFIDENCE = 1.0


class WindowOutputs(NamedTuple):
    seg_logits: torch.Tensor  # (B, C, *roi) float32
    confidence: torch.Tensor  # (B, 1, *roi) float32, probability that the segmentation is right


Predictor = Callable[[torch.Tensor], WindowOutputs]


class Stitcher:
    """Weighted accumulation of window outputs into whole-volume float32 arrays."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, weights: torch.Tensor) -> None:
        device = weights.device
        self.shape = tuple(shape)
        self.weights = weights
        self.seg = torch.zeros((num_classes, *shape), dtype=torch.float32, device=device)
        self.confidence = torch.zeros((1, *shape), dtype=torch.float32, device=device)
        self.weight_sum = torch.zeros(shape, dtype=torch.float32, device=device)

    def add(self, window: tuple[slice, slice, slice], seg: torch.Tensor, confidence: torch.Tensor) -> None:
        w = self.weights
        self.seg[(slice(None), *window)].addcmul_(seg.to(self.seg.device, torch.float32), w)
        self.confidence[(slice(None), *window)].addcmul_(confidence.to(self.seg.device, torch.float32), w)
        self.weight_sum[window].add_(w)

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(seg_logits (C, *shape), confidence (1, *shape)); uncovered voxels get background.
        Consumes the accumulators (divides in place) to avoid another full-size copy."""
        covered = self.weight_sum > 0
        self.weight_sum.clamp_(min=1e-12)
        self.seg.div_(self.weight_sum)
        self.confidence.div_(self.weight_sum)
        uncovered = ~covered
        if bool(uncovered.any()):
            self.seg[:, uncovered] = -BACKGROUND_LOGIT
            self.seg[0, uncovered] = BACKGROUND_LOGIT
            self.confidence[:, uncovered] = UNCOVERED_CONFIDENCE
        return self.seg, self.confidence


@dataclass
class CaseJob:
    """One volume to predict: the model-grid image, its window plan, and anything to carry along."""

    key: Any
    image: np.ndarray  # (X, Y, Z) float32 on the model grid
    plan: WindowPlan
    payload: Any = None
    stitcher: Stitcher | None = field(default=None, repr=False)
    next_window: int = 0
    done_windows: int = 0
    infer_seconds: float = 0.0  # this case's share of the batches its windows ran in


MIRROR_AXES = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


def predict_with_mirroring(predict: Predictor, batch: torch.Tensor) -> WindowOutputs:
    """Test-time augmentation: average over all 8 mirrorings of the three spatial axes."""
    seg_sum, conf_sum = None, None
    for axes in MIRROR_AXES:
        flipped = torch.flip(batch, axes) if axes else batch
        out = predict(flipped)
        seg = torch.flip(out.seg_logits, axes) if axes else out.seg_logits
        conf = torch.flip(out.confidence, axes) if axes else out.confidence
        seg_sum = seg.float() if seg_sum is None else seg_sum + seg
        conf_sum = conf.float() if conf_sum is None else conf_sum + conf
    n = len(MIRROR_AXES)
    return WindowOutputs(seg_sum / n, conf_sum / n)


def predict_cases(
    jobs: Iterable[CaseJob],
    predict: Predictor,
    *,
    batch_size: int,
    num_classes: int = 2,
    mirror: bool = False,
    blend: str = "constant",
    accumulate_on: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[CaseJob, torch.Tensor, torch.Tensor]]:
    """Run `predict` over the windows of every job, `batch_size` windows at a time across cases,
    yielding (job, seg_logits, confidence) for each case as soon as its last window is stitched.

    `blend` names the windows' blending weights (`windows.blend_weights`).
    `on_batch(n)` is called after each batch with the number of windows computed (for progress).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    blend_weights((1, 1, 1), blend)  # an unknown mode fails here, before any window runs
    weight_cache: dict[tuple[int, int, int], torch.Tensor] = {}

    def weights_for(roi: tuple[int, int, int]) -> torch.Tensor:
        if roi not in weight_cache:
            weight_cache[roi] = torch.as_tensor(blend_weights(roi, blend), dtype=torch.float32, device=accumulate_on)
        return weight_cache[roi]

    pending: list[CaseJob] = []  # started, not finished, in order
    jobs_iter = iter(jobs)
    exhausted = False

    def start(job: CaseJob) -> None:
        job.stitcher = Stitcher(job.image.shape, num_classes, weights_for(job.plan.roi))
        pending.append(job)

    while True:
        # Gather one batch, pulling in new cases while the batch has room.
        batch: list[tuple[CaseJob, int]] = []
        while len(batch) < batch_size:
            open_jobs = [j for j in pending if j.next_window < len(j.plan)]
            if open_jobs:
                job = open_jobs[0]
                if batch and job.plan.roi != batch[0][0].plan.roi:
                    break  # one batch, one window size
                take = min(batch_size - len(batch), len(job.plan) - job.next_window)
                batch.extend((job, job.next_window + i) for i in range(take))
                job.next_window += take
                continue
            if exhausted:
                break
            job = next(jobs_iter, None)
            if job is None:
                exhausted = True
            else:
                start(job)
        # Cases with no windows left to compute and none in flight are finished.
        if batch:
            started = time.perf_counter()
            tensor = torch.from_numpy(np.stack([j.image[j.plan.slices(i)] for j, i in batch])[:, None])
            out = predict_with_mirroring(predict, tensor) if mirror else predict(tensor)
            for k, (job, index) in enumerate(batch):
                job.stitcher.add(job.plan.slices(index), out.seg_logits[k], out.confidence[k])
                job.done_windows += 1
            share = (time.perf_counter() - started) / len(batch)
            for job, _ in batch:
                job.infer_seconds += share
            if on_batch is not None:
                on_batch(len(batch))
        while pending and pending[0].done_windows == len(pending[0].plan):
            job = pending.pop(0)
            seg, conf = job.stitcher.result()
            job.stitcher = None
            yield job, seg, conf
        if not batch and exhausted and not pending:
            return


def sliding_window_predict(image: np.ndarray, plan: WindowPlan, predict: Predictor, *, batch_size: int,
                           num_classes: int = 2, mirror: bool = False, blend: str = "constant",
                           accumulate_on: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Predict one volume: (seg_logits (C, *shape), confidence (1, *shape)) on its grid."""
    job = CaseJob(key=None, image=image, plan=plan)
    for _, seg, conf in predict_cases([job], predict, batch_size=batch_size, num_classes=num_classes,
                                      mirror=mirror, blend=blend, accumulate_on=accumulate_on):
        return seg, conf
    raise RuntimeError("unreachable: predict_cases yields every job")

"""The batch scheduler of sliding-window inference: windows of many cases through one predictor.

Windows of consecutive cases share batches: when one case has fewer windows left than a batch,
the next case's windows fill it. The same code serves `ceds segment`, training validation and
the benchmarks.

A batch whose call fails (CUDA out of memory, a backend error) is retried in halves, down to
single windows; the batch size stays at what worked. A window that fails alone fails its case:
with `fail_cases` the case is yielded with `job.error` set (and no outputs) and the others go
on; without it the error propagates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ceds_deploy.backends.base import Predictor, WindowOutputs
from ceds_deploy.errors import BackendError, ConfigError
from ceds_deploy.inference.stitcher import Stitcher
from ceds_deploy.inference.windows import WindowPlan, blend_weights
from ceds_deploy.transforms.preprocess import Image

log = logging.getLogger(__name__)


@dataclass
class CaseJob:
    """One volume to predict: the model-grid image, its windows, and anything to carry along."""

    key: Any
    image: Image | None  # (X, Y, Z) float32 on the model grid (host, or the backend's GPU); dropped once predicted
    windows: WindowPlan
    payload: Any = None
    stitcher: Stitcher | None = field(default=None, repr=False)
    next_window: int = 0
    done_windows: int = 0
    infer_seconds: float = 0.0  # this case's share of the batches its windows ran in
    error: Exception | None = None  # why the case failed (predict_cases with fail_cases)

    def input(self) -> Image:
        if self.image is None:
            raise BackendError(f"case {self.key}: its model-grid image was released before prediction")
        return self.image

    def stitching(self) -> Stitcher:
        if self.stitcher is None:
            raise BackendError(f"case {self.key}: windows stitched before the case was started")
        return self.stitcher


MIRROR_AXES = ((), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4))


def predict_with_mirroring(predict: Predictor, batch: torch.Tensor) -> WindowOutputs:
    """Test-time augmentation: average over all 8 mirrorings of the three spatial axes."""
    out = predict(batch)
    seg_sum, conf_sum = out.seg_logits.float().clone(), out.confidence.float().clone()  # summed in place
    for axes in MIRROR_AXES[1:]:
        out = predict(torch.flip(batch, axes))
        seg_sum += torch.flip(out.seg_logits, axes)
        conf_sum += torch.flip(out.confidence, axes)
    n = len(MIRROR_AXES)
    return WindowOutputs(seg_sum / n, conf_sum / n)


class _Batches:
    """Cases in order, their windows cut into batches: a batch holds windows of one size and may
    span the end of one case and the start of the next."""

    def __init__(self, jobs: Iterable[CaseJob], batch_size: int, start: Callable[[CaseJob], None]) -> None:
        self.jobs = iter(jobs)
        self.batch_size = batch_size
        self.start = start  # called when a case's first window is taken
        self.pending: list[CaseJob] = []  # started, not finished, in order
        self.exhausted = False

    def next_batch(self) -> list[tuple[CaseJob, int]]:
        """The next batch of (case, window index); empty once every window has been handed out."""
        batch: list[tuple[CaseJob, int]] = []
        while len(batch) < self.batch_size:
            open_jobs = [j for j in self.pending if j.next_window < len(j.windows)]
            if open_jobs:
                job = open_jobs[0]
                if batch and job.windows.roi != batch[0][0].windows.roi:
                    break  # one batch, one window size
                take = min(self.batch_size - len(batch), len(job.windows) - job.next_window)
                batch.extend((job, job.next_window + i) for i in range(take))
                job.next_window += take
                continue
            if self.exhausted:
                break
            new = next(self.jobs, None)
            if new is None:
                self.exhausted = True
            else:
                self.start(new)
                self.pending.append(new)
        return batch

    def finished(self) -> Iterator[CaseJob]:
        """Cases, in order, whose every window has been computed and stitched."""
        while self.pending and self.pending[0].done_windows == len(self.pending[0].windows):
            yield self.pending.pop(0)


def predict_cases(
    jobs: Iterable[CaseJob],
    predict: Predictor,
    *,
    batch_size: int,
    num_classes: int = 2,
    tta: bool = False,
    blend: str = "constant",
    accumulate_on: torch.device | str = "cpu",
    on_batch: Callable[[int], None] | None = None,
    fail_cases: bool = False,
    pad_batches: bool = False,
) -> Iterator[tuple[CaseJob, torch.Tensor | None, torch.Tensor | None]]:
    """Run `predict` over the windows of every job, `batch_size` windows at a time across cases,
    yielding (job, seg_logits, confidence) for each case as soon as its last window is stitched.

    `blend` names the windows' blending weights (`windows.blend_weights`).
    `on_batch(n)` is called after each batch with the number of windows computed (for progress).
    With `fail_cases`, a case whose window fails even alone is yielded as (job, None, None) with
    `job.error` set, and the run goes on; without it that error is raised. With `pad_batches` a
    short batch (the last one, or one cut at a change of window size) is padded with blank windows
    to the batch size and their outputs dropped, so the backend sees one batch shape.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    blend_weights((1, 1, 1), blend)  # an unknown mode fails here, before any window runs
    weight_cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def weights(roi: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(segmentation weights as `blend` asks, confidence weights: always Gaussian)."""
        if roi not in weight_cache:
            seg = torch.as_tensor(blend_weights(roi, blend), dtype=torch.float32, device=accumulate_on)
            conf = (
                seg
                if blend == "gaussian"
                else torch.as_tensor(blend_weights(roi, "gaussian"), dtype=torch.float32, device=accumulate_on)
            )
            weight_cache[roi] = (seg, conf)
        return weight_cache[roi]

    def start(job: CaseJob) -> None:
        job.stitcher = Stitcher(job.input().shape, num_classes, *weights(job.windows.roi))

    batches = _Batches(jobs, batch_size, start)

    def run(batch: list[tuple[CaseJob, int]]) -> WindowOutputs:
        windows = [j.input()[j.windows.slices(i)] for j, i in batch]
        # Images prepared on the backend's GPU are cut there: no window crosses from the host.
        if isinstance(windows[0], torch.Tensor):
            stacked = torch.stack([torch.as_tensor(w) for w in windows])  # as_tensor: no copy of a tensor
        else:
            stacked = torch.from_numpy(np.stack(windows))
        tensor = stacked[:, None]
        short = batches.batch_size - len(batch) if pad_batches else 0
        if short > 0:
            tensor = torch.cat([tensor, tensor.new_zeros((short, *tensor.shape[1:]))])
        out = predict_with_mirroring(predict, tensor) if tta else predict(tensor)
        return WindowOutputs(out.seg_logits[: len(batch)], out.confidence[: len(batch)]) if short > 0 else out

    while batch := batches.next_batch():
        started = time.perf_counter()
        _predict_or_split(batch, run, batches, fail_cases)
        share = (time.perf_counter() - started) / len(batch)
        for job, _ in batch:
            job.infer_seconds += share
        if on_batch is not None:
            on_batch(len(batch))
        yield from _finish(batches.finished())
    yield from _finish(batches.finished())  # cases with no window at all


def _predict_or_split(
    batch: list[tuple[CaseJob, int]],
    run: Callable[[list[tuple[CaseJob, int]]], WindowOutputs],
    batches: _Batches,
    fail_cases: bool,
) -> None:
    """Compute and stitch `batch`; when the call fails, retry its halves (and lower the batch size to
    what is tried), down to one window, whose failure fails its case (or propagates)."""
    live = [(job, index) for job, index in batch if job.error is None]
    for job, _ in batch:
        if job.error is not None:
            job.done_windows += 1  # a window of a case that already failed: not computed
    if not live:
        return
    try:
        out = run(live)
    except Exception as err:  # noqa: BLE001 - retried smaller, then the case fails alone
        if len(live) == 1:
            if not fail_cases:
                raise
            _fail(live[0][0], err)
            live[0][0].done_windows += 1
            return
        half = (len(live) + 1) // 2
        if batches.batch_size > half:
            log.warning(
                "a batch of %d windows failed (%s: %s); retrying with batches of %d",
                len(live),
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
                half,
            )
            batches.batch_size = half
        _release_cuda_cache()
        _predict_or_split(live[:half], run, batches, fail_cases)
        _predict_or_split(live[half:], run, batches, fail_cases)
        return
    for k, (job, index) in enumerate(live):
        if job.error is None:
            job.stitching().add(job.windows.slices(index), out.seg_logits[k], out.confidence[k])
        job.done_windows += 1


def _fail(job: CaseJob, err: Exception) -> None:
    """Mark `job` failed: its windows not yet handed out are dropped, its buffers released."""
    job.error = err
    job.done_windows += len(job.windows) - job.next_window
    job.next_window = len(job.windows)
    job.stitcher, job.image = None, None
    log.warning("case %s failed in the backend: %s: %s", job.key, type(err).__name__, err)


def _release_cuda_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _finish(jobs: Iterator[CaseJob]) -> Iterator[tuple[CaseJob, torch.Tensor | None, torch.Tensor | None]]:
    for job in jobs:
        if job.error is not None:
            yield job, None, None
            continue
        seg, conf = job.stitching().result()
        job.stitcher = None
        yield job, seg, conf


def sliding_window_predict(
    image: Image,
    windows: WindowPlan,
    predict: Predictor,
    *,
    batch_size: int,
    num_classes: int = 2,
    tta: bool = False,
    blend: str = "constant",
    accumulate_on: torch.device | str = "cpu",
    pad_batches: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict one volume: (seg_logits (C, *shape), confidence (1, *shape)) on its grid."""
    job = CaseJob(key=None, image=image, windows=windows)
    for _, seg, conf in predict_cases(
        [job],
        predict,
        batch_size=batch_size,
        num_classes=num_classes,
        tta=tta,
        blend=blend,
        accumulate_on=accumulate_on,
        pad_batches=pad_batches,
    ):
        assert seg is not None and conf is not None  # without fail_cases a failure raises
        return seg, conf
    raise RuntimeError("unreachable: predict_cases yields every job")

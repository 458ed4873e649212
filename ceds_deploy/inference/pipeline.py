"""The pipeline of a folder run: readers (read + pre-process the next cases), the backend in the
caller's thread (windows of consecutive cases share batches) and writers (restore to the scan's
grid, write, assess). There are `io_workers` readers and writers (one on a small CPU, up to 4 on a
many-core GPU machine); queues of that many cases keep memory bounded. Of the prepared cases the
backend takes the largest scan first, so the case left for last, whose restore and write follow
the last window with nothing to overlap them, is a small one. One bad scan never stops the run: it
gets a failed row; so does a case whose windows fail in the backend even one at a time.
`segment_folder` and `watch_folder` both run their cases through it.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ceds_deploy.backends.base import Backend, is_cuda
from ceds_deploy.errors import CedsError
from ceds_deploy.inference.options import SegmentOptions
from ceds_deploy.inference.outputs import finish_case
from ceds_deploy.inference.report import CaseRow
from ceds_deploy.inference.scheduler import CaseJob, predict_cases
from ceds_deploy.inference.segment import batch_size_for, pads_batches, window_plan_for, work_device
from ceds_deploy.inference.side_streams import SideStreams
from ceds_deploy.io import ScanSource, read_scan
from ceds_deploy.progress import ProgressCallback, ProgressEvent
from ceds_deploy.transforms.preprocess import GridMapping, prepare_scan_on
from ceds_deploy.volume import Volume

log = logging.getLogger(__name__)


def default_io_workers() -> int:
    """Cases read and written at once: reading and writing compressed NIfTI is CPU work that
    ITK and ISA-L do outside the GIL, so a many-core GPU machine keeps several in flight; 2 cores keep one."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def error_text(err: Exception) -> str:
    """One line for the report: our own errors as they are, anything else with its type."""
    return str(err) if isinstance(err, CedsError) else f"{type(err).__name__}: {err}"


@dataclass
class Case:
    row: CaseRow
    path: ScanSource
    mapping: GridMapping | None = None
    source: Volume | None = None  # the scan in HU, kept only when a preview needs it
    voxels: int = 0  # of the scan's grid: what its restore and write cost scales with


_DONE = object()


class _Stopped(Exception):
    pass


class Pipeline:
    """Readers -> the backend in the caller's thread -> writers, for the cases of one run."""

    def __init__(
        self,
        backend: Backend,
        output: Path,
        options: SegmentOptions,
        todo: list[Case],
        progress: ProgressCallback,
        rows: list[CaseRow],
        warm_up: Callable[[], None] | None = None,
    ) -> None:
        self.backend, self.output, self.options, self.progress = backend, output, options, progress
        self.spec = backend.spec
        self.workers = options.io_workers or default_io_workers()
        self.device = work_device(backend)
        self.streams = SideStreams(self.device if options.side_streams else "cpu")
        # (-scan voxels, arrival, job): the largest prepared scan first; the one end marker, put by
        # the last reader to finish (so no marker takes a job's place), after any job
        self.prepared: queue.PriorityQueue = queue.PriorityQueue(maxsize=self.workers)
        self._arrival = itertools.count()
        self._readers_running = self.workers
        self.finished: queue.Queue = queue.Queue(maxsize=self.workers)
        self.stop = threading.Event()
        self.rows = rows  # writers append each finished case's row here
        self._pending = iter(todo)
        self._take = threading.Lock()
        self.first_mask_at: float | None = None  # perf_counter() when the first mask was written
        self.warm_up = warm_up  # run in the backend's thread while the readers read the first cases

    def run(self) -> None:
        """Run every case (after `warm_up`, which overlaps the first reads); on an interruption or a
        failed warm-up, cases not yet written are left undone, never half-written."""
        readers = [
            threading.Thread(target=self._read_worker, name=f"ceds-reader-{i}", daemon=True)
            for i in range(self.workers)
        ]
        writers = [
            threading.Thread(target=self._write_worker, name=f"ceds-writer-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in readers + writers:
            thread.start()
        try:
            if self.warm_up is not None:
                self.warm_up()
            self._infer_all(batch_size_for(self.backend, self.options))
            for _ in writers:
                self._put(self.finished, _DONE)
            for thread in writers:
                thread.join()
        finally:
            if any(t.is_alive() for t in readers + writers):  # interrupted: let the threads wind down
                self.stop.set()
                for thread in writers:
                    thread.join(timeout=30)

    def _infer_all(self, batch_size: int) -> None:
        on_batch = lambda n: self.progress(ProgressEvent("windows", n))  # noqa: E731
        for job, seg, conf in predict_cases(
            self._jobs(),
            self.backend,
            batch_size=batch_size,
            num_classes=self.spec.num_classes,
            tta=self.options.tta,
            blend=self.options.blend,
            accumulate_on=self.device,
            on_batch=on_batch,
            fail_cases=True,
            pad_batches=pads_batches(self.backend),
        ):
            job.payload.row.seconds["infer"] = job.infer_seconds
            job.image = None  # the model-grid input is no longer needed
            if job.error is not None:  # failed in the backend even alone: this case fails, the run goes on
                job.payload.row.status, job.payload.row.error = "failed", error_text(job.error)
                self._put(self.finished, job.payload)
            else:
                self._put(self.finished, (job.payload, seg, conf, self.streams.stitched()))

    def _put(self, q: queue.Queue, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _jobs(self) -> Iterator[CaseJob]:
        while (item := self.prepared.get()[-1]) is not _DONE:
            self.streams.taken(item.image)
            yield item

    def _read_worker(self) -> None:
        try:
            while True:
                with self._take:
                    case = next(self._pending, None)
                if case is None:
                    return
                job = self._read_one(case)
                if job is None:
                    self._put(self.finished, case)  # failed: straight to the report
                else:
                    self._put(self.prepared, (-job.payload.voxels, next(self._arrival), job))
        except _Stopped:
            return
        finally:
            with self._take:
                self._readers_running -= 1
                last = self._readers_running == 0
            try:
                if last:
                    self._put(self.prepared, (math.inf, next(self._arrival), _DONE))
            except _Stopped:
                pass

    def _read_one(self, case: Case) -> CaseJob | None:
        """Read and pre-process one case; None (and a failed row) when its scan cannot be used."""
        row = case.row
        try:
            t0 = time.perf_counter()
            volume = read_scan(case.path, dtype=None)  # as stored: only the body crop becomes float32
            t1 = time.perf_counter()
            with self.streams.reading():
                image, case.mapping = prepare_scan_on(volume, self.spec, self.device, as_tensor=is_cuda(self.device))
                windows = window_plan_for(image, self.spec, self.options)
            t2 = time.perf_counter()
        except Exception as err:  # noqa: BLE001 - one bad scan never stops the run
            row.status, row.error = "failed", error_text(err)
            log.warning("%s: %s", row.case, row.error)
            return None
        row.seconds["read"], row.seconds["preprocess"] = t1 - t0, t2 - t1
        row.input_shape = "x".join(map(str, volume.shape))
        case.voxels = math.prod(volume.shape)
        row.input_spacing = "x".join(f"{s:.3g}" for s in volume.spacing)
        row.windows = len(windows)
        case.source = volume if self.options.preview else None  # keep the HU array only for a preview
        self.progress(ProgressEvent("planned", len(windows), {"case": row.case}))
        return CaseJob(key=row.case, image=image, windows=windows, payload=case)

    def _write_worker(self) -> None:
        while True:
            try:
                item = self.finished.get(timeout=0.2)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            if item is _DONE or self.stop.is_set():
                return
            case = item if isinstance(item, Case) else item[0]
            if not isinstance(item, Case):
                self._write_one(case, *item[1:])
            self.rows.append(case.row)
            self.progress(ProgressEvent("case", 1, {"case": case.row.case, "status": case.row.status}))

    def _write_one(self, case: Case, seg: Any, conf: Any, stitched: Any) -> None:
        try:
            assert case.mapping is not None
            with self.streams.writing(stitched, seg, conf):
                finish_case(
                    case.row,
                    seg,
                    conf,
                    case.mapping,
                    self.output,
                    self.options,
                    case.source,
                    calibration=self.spec.calibration,
                    scan=case.path,
                )
            if self.first_mask_at is None:
                self.first_mask_at = time.perf_counter()
        except Exception as err:  # noqa: BLE001 - recorded in the report, the run goes on
            case.row.status, case.row.error = "failed", error_text(err)
            log.warning("%s: %s", case.row.case, case.row.error)

"""`segment_folder`: every scan of a folder, pipelined.

Three kinds of threads overlap the work: readers (read + pre-process the next cases), the caller's
thread (the backend; windows of consecutive cases share batches) and writers (restore to the scan's
grid, write, assess). There are `io_workers` readers and writers (one on a small CPU, up to 4 on a
many-core GPU machine); queues of that many cases keep memory bounded. One bad scan never stops
the run: it gets a failed row; so does a case whose windows fail in the backend even one at a time.

Before anything is written the run checks its folders (`guard`): the output is not the input,
is writable and has room, and the model runs one window. It then holds the output folder's lock
(`lock.FolderLock`), removes leftovers of killed runs and refuses a folder whose report holds
results of another model (unless `overwrite`). The report is merged into the folder's (`report`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ceds_deploy.backends.base import Backend
from ceds_deploy.checkpoint import sha256_of
from ceds_deploy.errors import CedsError, OutputError
from ceds_deploy.inference.guard import (
    PROBE_PATTERN,
    SPACE_FACTOR,
    check_backend_outputs,
    check_locations,
    input_bytes,
    own_output_reason,
    probe_output,
)
from ceds_deploy.inference.lock import FolderLock
from ceds_deploy.inference.options import SegmentOptions
from ceds_deploy.inference.outputs import case_formats, case_is_done, finish_case
from ceds_deploy.inference.report import DONE_BEFORE, CaseRow, read_report, status_counts, write_report
from ceds_deploy.inference.scheduler import CaseJob, predict_cases
from ceds_deploy.inference.segment import batch_size_for, window_plan_for, work_device
from ceds_deploy.io import ScanSource, case_id, find_scans, read_scan, remove_leftovers
from ceds_deploy.io.atomic import LEFTOVER_PATTERNS
from ceds_deploy.progress import ProgressCallback, ProgressEvent, no_progress
from ceds_deploy.transforms.preprocess import GridMapping, prepare_scan
from ceds_deploy.volume import Volume

log = logging.getLogger(__name__)


def default_io_workers() -> int:
    """Cases read and written at once: reading and writing compressed NIfTI is CPU work that
    ITK and ISA-L do outside the GIL, so a many-core GPU machine keeps several in flight; 2 cores keep one."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def shard_cases(cases: list[ScanSource], index: int, count: int) -> list[ScanSource]:
    """Deterministic split of the sorted case list: case k goes to shard k mod count."""
    ordered = sorted(cases, key=lambda p: (case_id(p), str(p)))
    return ordered[index::count]


def error_text(err: Exception) -> str:
    """One line for the report: our own errors as they are, anything else with its type."""
    return str(err) if isinstance(err, CedsError) else f"{type(err).__name__}: {err}"


@dataclass
class FolderRun:
    """What a folder run did: one row per case (ok, failed or skipped) and the report files."""

    rows: list[CaseRow] = field(default_factory=list)
    report_paths: tuple[Path, Path] | None = None
    run_id: str = ""

    @property
    def failed(self) -> int:
        return status_counts(self.rows)["failed"]


@dataclass
class _Case:
    row: CaseRow
    path: ScanSource
    mapping: GridMapping | None = None
    source: Volume | None = None  # the scan in HU, kept only when a preview needs it


def list_cases(
    input_path: Path, output: Path, backend: Backend, options: SegmentOptions
) -> tuple[list[CaseRow], list[_Case]]:
    """(rows of entries not to run: skipped or failed up front, cases to run) for this shard."""
    listing = find_scans(input_path)
    skipped = [(path, own_output_reason(path) or why) for path, why in listing.skipped]
    skipped += [(path, own_output_reason(path) or "") for path in listing.scans if own_output_reason(path)]
    scans = [path for path in listing.scans if not own_output_reason(path)]
    rows = [CaseRow(case=path.name, status="skipped", error=str(why), input_path=str(path)) for path, why in skipped]
    seen: dict[str, ScanSource] = {}
    todo: list[_Case] = []
    for path in shard_cases(scans, *options.shard):
        name = case_id(path)
        row = CaseRow(case=name, status="ok", input_path=str(path), backend=backend.description, device=backend.device)
        if name in seen:
            row.status, row.error = "failed", f"case name {name!r} also used by {seen[name].name}; rename one"
            rows.append(row)
            continue
        seen[name] = path
        try:
            formats = case_formats(path, options)
        except CedsError as err:  # e.g. a DICOM SEG asked for a NIfTI scan: this case fails, the run goes on
            row.status, row.error = "failed", error_text(err)
            rows.append(row)
            continue
        if not options.overwrite and case_is_done(output, name, formats):
            row.status, row.error = "skipped", DONE_BEFORE
            rows.append(row)
            continue
        todo.append(_Case(row, path))
    return rows, todo


_DONE = object()


class _Stopped(Exception):
    pass


class _Pipeline:
    """Readers -> the backend in the caller's thread -> writers, for the cases of one run."""

    def __init__(
        self,
        backend: Backend,
        output: Path,
        options: SegmentOptions,
        todo: list[_Case],
        progress: ProgressCallback,
        rows: list[CaseRow],
    ) -> None:
        self.backend, self.output, self.options, self.progress = backend, output, options, progress
        self.spec = backend.spec
        self.workers = options.io_workers or default_io_workers()
        self.device = work_device(backend)
        self.prepared: queue.Queue = queue.Queue(maxsize=self.workers)
        self.finished: queue.Queue = queue.Queue(maxsize=self.workers)
        self.stop = threading.Event()
        self.rows = rows  # writers append each finished case's row here
        self._pending = iter(todo)
        self._take = threading.Lock()

    def run(self) -> None:
        """Run every case; on an interruption cases not yet written are left undone, never half-written."""
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
        ):
            job.payload.row.seconds["infer"] = job.infer_seconds
            job.image = None  # the model-grid input is no longer needed
            if job.error is not None:  # failed in the backend even alone: this case fails, the run goes on
                job.payload.row.status, job.payload.row.error = "failed", error_text(job.error)
                self._put(self.finished, job.payload)
            else:
                self._put(self.finished, (job.payload, seg, conf))

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
        readers_left = self.workers
        while readers_left:
            item = self.prepared.get()
            if item is _DONE:
                readers_left -= 1
                continue
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
                    self._put(self.prepared, job)
        except _Stopped:
            return
        finally:
            try:
                self._put(self.prepared, _DONE)
            except _Stopped:
                pass

    def _read_one(self, case: _Case) -> CaseJob | None:
        """Read and pre-process one case; None (and a failed row) when its scan cannot be used."""
        row = case.row
        try:
            t0 = time.perf_counter()
            volume = read_scan(case.path, dtype=None)  # as stored: only the body crop becomes float32
            t1 = time.perf_counter()
            image, case.mapping = prepare_scan(volume, self.spec, self.device)
            windows = window_plan_for(image, self.spec, self.options)
            t2 = time.perf_counter()
        except Exception as err:  # noqa: BLE001 - one bad scan never stops the run
            row.status, row.error = "failed", error_text(err)
            log.warning("%s: %s", row.case, row.error)
            return None
        row.seconds["read"], row.seconds["preprocess"] = t1 - t0, t2 - t1
        row.input_shape = "x".join(map(str, volume.shape))
        row.input_spacing = "x".join(f"{s:.3g}" for s in volume.spacing)
        row.windows = len(windows)
        case.source = volume if self.options.preview else None  # keep the HU array only for a preview
        self.progress(ProgressEvent("planned", len(windows)))
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
            case = item if isinstance(item, _Case) else item[0]
            if not isinstance(item, _Case):
                self._write_one(case, *item[1:])
            self.rows.append(case.row)
            self.progress(ProgressEvent("case", 1, {"case": case.row.case, "status": case.row.status}))

    def _write_one(self, case: _Case, seg: Any, conf: Any) -> None:
        try:
            assert case.mapping is not None
            finish_case(case.row, seg, conf, case.mapping, self.output, self.options, case.source, case.path)
        except Exception as err:  # noqa: BLE001 - recorded in the report, the run goes on
            case.row.status, case.row.error = "failed", error_text(err)
            log.warning("%s: %s", case.row.case, case.row.error)


def model_digest(backend: Backend) -> str:
    """SHA-256 of the backend's model file (its spec's source digest for an in-memory network)."""
    if backend.artifact is not None and backend.artifact.is_file():
        return sha256_of(backend.artifact)
    return backend.spec.source_sha256


def check_same_model(output: Path, model: str, overwrite: bool) -> None:
    """Refuse (`OutputError`) a folder whose report holds ok rows of another model, unless `overwrite`."""
    cases = read_report(output).get("cases", [])
    others = sorted(
        {
            str(r.get("model"))
            for r in cases
            if isinstance(r, dict) and r.get("status") == "ok" and r.get("model") and r.get("model") != model
        }
    )
    if others and not overwrite:
        raise OutputError(
            f"{output}: holds results of another model (sha256 {others[0][:12]}...; this one is "
            f"{model[:12]}...); use --overwrite to redo the cases with this model, or choose "
            f"another output folder"
        )


def _prepare_output(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{output}: cannot create the output folder: {err.strerror or err}") from None


def segment_folder(
    input_path: Path,
    output: Path,
    backend: Backend,
    options: SegmentOptions | None = None,
    *,
    progress: ProgressCallback = no_progress,
    run_info: dict | None = None,
) -> FolderRun:
    """Segment every scan under `input_path` into `output` with an active backend.

    Progress events: "todo" (count = cases to run), "planned" (windows of a case), "windows"
    (computed), "case" (finished; info: case, status). Outputs are written atomically; the report
    (report.csv/json, merged with the folder's earlier rows) is written at the end, also after an
    interruption. Raises `ScanError`/`OutputError` before writing anything for a missing input or an
    unusable output folder (the input's, a file, read-only, full, locked by another run, results of
    another model), `BackendError` when the model fails on one blank window, and `OutputError` when
    the report cannot be written (after the masks).
    """
    options = options or SegmentOptions()
    input_path, output = Path(input_path), Path(output)
    check_locations(input_path, output)
    _prepare_output(output)
    model = model_digest(backend)
    with FolderLock(output, model, options.shard, force=options.force) as lock:
        removed = remove_leftovers(
            output, (*LEFTOVER_PATTERNS, PROBE_PATTERN), older_than_s=3600.0 if lock.others_running else 0.0
        )
        if removed:
            log.info("%s: removed %d leftover temp file(s) of an earlier run", output, len(removed))
        check_same_model(output, model, options.overwrite)
        rows, todo = list_cases(input_path, output, backend, options)
        probe_output(output, int(SPACE_FACTOR * input_bytes([case.path for case in todo])))
        if todo:
            check_backend_outputs(backend)
        started = datetime.now(timezone.utc)
        # Unique even for two runs of one process in the same second (shards run back to back).
        run = FolderRun(rows=rows, run_id=f"{started:%Y%m%dT%H%M%SZ}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        for row in rows + [case.row for case in todo]:
            row.run_id, row.model = run.run_id, model
        progress(ProgressEvent("todo", len(todo)))
        pipeline = _Pipeline(backend, output, options, todo, progress, run.rows)
        shard = f"{options.shard[0]}/{options.shard[1]}"
        info = {
            **(run_info or {}),
            "run_id": run.run_id,
            "started": started.isoformat(timespec="seconds"),
            "model_sha256": model,
            "options": {**asdict(options), "shard": shard},
            "model_spec": backend.spec.to_dict(),
            "backend": backend.description,
            "device": backend.device,
            "input": str(input_path),
            "output": str(output),
            "batch_size": batch_size_for(backend, options),
            "io_workers": pipeline.workers,
        }
        try:
            pipeline.run()
        except BaseException:
            try:  # the cases finished so far are recorded; the original error goes on
                run.report_paths = write_report(output, run.rows, {**info, "interrupted": True}, html=options.html)
            except OutputError as err:
                log.error("%s", err)
            raise
        run.report_paths = write_report(
            output, run.rows, {**info, "interrupted": pipeline.stop.is_set()}, html=options.html
        )
    return run

"""`segment_folder`: every scan of a folder, pipelined (`pipeline`: readers, the backend, writers).

Before anything is written the run checks its folders (`guard`): the output is not the input,
is writable and has room, and the model runs one window. It then holds the output folder's lock
(`lock.FolderLock`), removes leftovers of killed runs and refuses a folder whose report holds
results of another model (unless `overwrite`). The report is merged into the folder's (`report`).
The steps are separate (`open_folder_run`, `list_cases`, `run_cases`) so that `watch.watch_folder`
runs new scans through the same ones, round after round, under one lock and one run id.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from ceds_deploy.backends.base import Backend
from ceds_deploy.errors import CedsError, OutputError
from ceds_deploy.inference.guard import (
    PROBE_PATTERN,
    SPACE_FACTOR,
    check_backend_outputs,
    check_locations,
    check_same_model,
    foreign_mask,
    input_bytes,
    model_digest,
    own_output_reason,
    probe_output,
)
from ceds_deploy.inference.lock import FolderLock
from ceds_deploy.inference.options import SegmentOptions
from ceds_deploy.inference.outputs import NIFTI, case_formats, case_is_done
from ceds_deploy.inference.pipeline import Case, Pipeline, default_io_workers, error_text
from ceds_deploy.inference.report import (
    DONE_BEFORE,
    CaseRow,
    is_done_before,
    ok_cases,
    status_counts,
    write_report,
)
from ceds_deploy.inference.segment import batch_size_for, check_window, pads_batches
from ceds_deploy.io import ScanListing, ScanSource, case_id, find_scans, remove_leftovers
from ceds_deploy.io.atomic import LEFTOVER_PATTERNS
from ceds_deploy.io.prefetch import PREFETCH_SCANS, release_prefetched
from ceds_deploy.progress import ProgressCallback, ProgressEvent, no_progress

log = logging.getLogger(__name__)


def shard_cases(cases: list[ScanSource], index: int, count: int) -> list[ScanSource]:
    """Deterministic split of the sorted case list: case k goes to shard k mod count."""
    ordered = sorted(cases, key=lambda p: (case_id(p), str(p)))
    return ordered[index::count]


@dataclass
class FolderRun:
    """What a folder run did: one row per case (ok, failed or skipped), the report files, and the
    run's settings and timings (`info`, report.json's "run")."""

    rows: list[CaseRow] = field(default_factory=list)
    report_paths: tuple[Path, Path] | None = None
    run_id: str = ""
    model: str = ""  # SHA-256 of the model artifact
    info: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0  # perf_counter() the time to the first mask counts from
    first_mask_at: float | None = None  # perf_counter() when the run's first mask was written
    backend_checked: bool = False  # the model ran its blank window (and warmed up)

    @property
    def failed(self) -> int:
        return status_counts(self.rows)["failed"]


class EngineLabel(Protocol):
    """What a case row says about the engine: a `Backend`, or what a remote worker reported of one."""

    @property
    def description(self) -> str: ...
    @property
    def device(self) -> str: ...


def list_cases(
    listing: ScanListing,
    output: Path,
    backend: EngineLabel,
    options: SegmentOptions,
    seen: dict[str, ScanSource] | None = None,
    redo: bool = False,
) -> tuple[list[CaseRow], list[Case]]:
    """(rows of entries not to run: skipped or failed up front, cases to run) of `listing` for this
    shard. `seen` (case name -> scan) carries the names used so far across calls (a watch); `redo`:
    run cases whose outputs exist (a watched scan that changed), still never over a foreign file."""
    skipped = [(path, own_output_reason(path) or why) for path, why in listing.skipped]
    skipped += [(path, own_output_reason(path) or "") for path in listing.scans if own_output_reason(path)]
    scans = [path for path in listing.scans if not own_output_reason(path)]
    rows = [CaseRow(case=path.name, status="skipped", error=str(why), input_path=str(path)) for path, why in skipped]
    seen = {} if seen is None else seen
    recorded = ok_cases(output)
    todo: list[Case] = []
    for path in shard_cases(scans, *options.shard):
        name = case_id(path)
        row = CaseRow(case=name, status="ok", input_path=str(path), backend=backend.description, device=backend.device)
        if name in seen and str(seen[name]) != str(path):
            # its row is named after the file: under the case name it would replace the case's own row
            row.case = path.name if isinstance(path, Path) else f"{path.name} (DICOM series)"
            row.status, row.error = "failed", f"case name {name!r} is taken by {seen[name].name}; rename {path.name}"
            rows.append(row)
            continue
        seen[name] = path
        try:
            formats = case_formats(path, options)
        except CedsError as err:  # e.g. a DICOM SEG asked for a NIfTI scan: this case fails, the run goes on
            row.status, row.error = "failed", error_text(err)
            rows.append(row)
            continue
        if not options.overwrite and NIFTI in formats and (foreign := foreign_mask(output, name, recorded)):
            row.status = "failed"
            row.error = f"{foreign}: not written by ceds segment (a scan?); move it away, or --overwrite replaces it"
            rows.append(row)
            continue
        if not options.overwrite and not redo and case_is_done(output, name, formats):
            row.status, row.error = "skipped", DONE_BEFORE
            rows.append(row)
            continue
        todo.append(Case(row, path))
    return rows, todo


def prepare_output(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"{output}: cannot create the output folder: {err.strerror or err}") from None


def clear_and_check(output: Path, model: str, options: SegmentOptions, others_running: bool) -> None:
    """Inside the output folder's lock: remove leftovers of killed runs (only old ones while other
    shards run) and refuse a folder of another model (unless `overwrite`)."""
    removed = remove_leftovers(
        output, (*LEFTOVER_PATTERNS, PROBE_PATTERN), older_than_s=3600.0 if others_running else 0.0
    )
    if removed:
        log.info("%s: removed %d leftover temp file(s) of an earlier run", output, len(removed))
    check_same_model(output, model, options.overwrite)


def claim_cases(
    input_path: Path, output: Path, engine: EngineLabel, model: str, options: SegmentOptions, others_running: bool
) -> tuple[list[CaseRow], list[Case]]:
    """Inside the output folder's lock (the Ray driver's way): `clear_and_check`, list this run's
    cases and check there is room for them."""
    clear_and_check(output, model, options, others_running)
    rows, todo = list_cases(find_scans(input_path), output, engine, options)
    probe_output(output, int(SPACE_FACTOR * input_bytes([case.path for case in todo])))
    return rows, todo


def new_run_id(started: datetime) -> str:
    """A run's id: its start time, unique even for two runs of one process in the same second
    (shards run back to back)."""
    return f"{started:%Y%m%dT%H%M%SZ}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextmanager
def open_folder_run(
    input_path: Path,
    output: Path,
    backend: Backend,
    options: SegmentOptions,
    *,
    run_info: dict | None = None,
    started_at: float | None = None,
) -> Iterator[FolderRun]:
    """Check the folders, take the output folder's lock, remove leftovers of killed runs and check
    the folder's model; yields the run (its id and settings), releasing the lock after it.
    `started_at` is the perf_counter() the time to the first mask counts from (the CLI passes its
    process start); None counts from this call."""
    started_at = time.perf_counter() if started_at is None else started_at
    input_path, output = Path(input_path), Path(output)
    check_locations(input_path, output)
    check_window(options.window, backend.spec.roi_size)
    prepare_output(output)
    model = model_digest(backend)
    with FolderLock(output, model, options.shard, force=options.force) as lock:
        clear_and_check(output, model, options, lock.others_running)
        started = datetime.now(timezone.utc)
        run = FolderRun(run_id=new_run_id(started), model=model, started_at=started_at)
        run.info = {
            **(run_info or {}),
            "run_id": run.run_id,
            "started": started.isoformat(timespec="seconds"),
            "model_sha256": model,
            "options": {**asdict(options), "shard": f"{options.shard[0]}/{options.shard[1]}"},
            "model_spec": backend.spec.to_dict(),
            "backend": backend.description,
            "device": backend.device,
            "input": str(input_path),
            "output": str(output),
            "batch_size": batch_size_for(backend, options),
            "io_workers": options.io_workers or default_io_workers(),
            "startup_s": dict((run_info or {}).get("startup_s", {})),
            "time_to_first_mask_s": None,
        }
        yield run


def warm_up_backend(run: FolderRun, backend: Backend, options: SegmentOptions) -> None:
    """Once per run: a blank batch at the run's batch shape through the backend (it checks the model's
    outputs, and first-call costs land here), timed as the startup's "warm_up"."""
    if run.backend_checked:
        return
    started = time.perf_counter()
    check_backend_outputs(backend, batch_size_for(backend, options) if pads_batches(backend) else 1)
    run.info["startup_s"]["warm_up"] = round(time.perf_counter() - started, 4)
    run.backend_checked = True


def run_cases(
    run: FolderRun,
    rows: list[CaseRow],
    todo: list[Case],
    backend: Backend,
    output: Path,
    options: SegmentOptions,
    progress: ProgressCallback = no_progress,
) -> None:
    """Run `todo` through the pipeline (after the space check; once per run the model's blank batch,
    timed as the warm-up, runs while the first scans are read), add them and `rows` to the run,
    and merge them into the folder's report, also after an interruption (then the original error
    goes on)."""
    for row in rows + [case.row for case in todo]:
        row.run_id, row.model = run.run_id, run.model
    # A case listed again (a watched scan that changed) keeps one row, as the report merges them:
    # the newest, unless that only says its outputs exist
    before = {r.case for r in run.rows}
    newer = {case.row.case for case in todo} | {r.case for r in rows if not is_done_before(r)}
    run.rows[:] = [r for r in run.rows if r.case not in newer]
    run.rows.extend(r for r in rows if not (is_done_before(r) and r.case in before))
    probe_output(output, int(SPACE_FACTOR * input_bytes([case.path for case in todo])))
    # The model's blank batch runs in the backend's thread while the first scans are read.
    warm_up = (lambda: warm_up_backend(run, backend, options)) if todo and not run.backend_checked else None
    pipeline = Pipeline(backend, output, options, todo, progress, run.rows, warm_up)
    # Only the first cases' are read; the prefetched scans of cases done already are dropped.
    release_prefetched([case.path for case in todo[:PREFETCH_SCANS] if isinstance(case.path, Path)])
    try:
        pipeline.run()
    except BaseException:
        if not run.backend_checked:
            raise  # the model failed its blank batch: refused before any case, nothing written
        try:  # the cases finished so far are recorded; the original error goes on
            write_run_report(run, output, options, pipeline, interrupted=True)
        except OutputError as err:
            log.error("%s", err)
        raise
    finally:
        release_prefetched()
    write_run_report(run, output, options, pipeline, interrupted=pipeline.stop.is_set())


def segment_cases(
    backend: Backend,
    output: Path,
    options: SegmentOptions,
    cases: list[tuple[CaseRow, ScanSource]],
    progress: ProgressCallback = no_progress,
) -> list[CaseRow]:
    """Listed cases through the folder run's per-case path (read, pre-process, backend, restore,
    write, assess) with an active backend; no lock, listing or report. Returns the finished rows.
    The Ray runner's tasks run their one case here."""
    rows: list[CaseRow] = []
    Pipeline(backend, output, options, [Case(row, path) for row, path in cases], progress, rows).run()
    return rows


def write_run_report(
    run: FolderRun, output: Path, options: SegmentOptions, pipeline: Pipeline | None = None, interrupted: bool = False
) -> None:
    """Merge the run's rows and settings (its time to the first mask included) into the folder's report."""
    if pipeline is not None and run.first_mask_at is None and pipeline.first_mask_at is not None:
        run.first_mask_at = pipeline.first_mask_at
        run.info["time_to_first_mask_s"] = round(run.first_mask_at - run.started_at, 4)
    run.info["interrupted"] = interrupted
    run.report_paths = write_report(output, run.rows, dict(run.info), html=options.html)


def segment_folder(
    input_path: Path,
    output: Path,
    backend: Backend,
    options: SegmentOptions | None = None,
    *,
    progress: ProgressCallback = no_progress,
    run_info: dict | None = None,
    started_at: float | None = None,
) -> FolderRun:
    """Segment every scan under `input_path` into `output` with an active backend.

    Progress events: "todo" (count = cases to run), "planned" (windows of a case), "windows"
    (computed), "case" (finished; info: case, status). Outputs are written atomically; the report
    (report.csv/json, merged with the folder's earlier rows) is written at the end, also after an
    interruption. `run_info` adds to the report's run settings (its "startup_s" to the startup
    stages); `started_at` is where the time to the first mask counts from (`open_folder_run`).
    Raises `ScanError`/`OutputError` before writing anything for a missing input or an
    unusable output folder (the input's, a file, read-only, full, locked by another run, results of
    another model), `BackendError` when the model fails on one blank window, and `OutputError` when
    the report cannot be written (after the masks).
    """
    options = options or SegmentOptions()
    input_path, output = Path(input_path), Path(output)
    with open_folder_run(input_path, output, backend, options, run_info=run_info, started_at=started_at) as run:
        rows, todo = list_cases(find_scans(input_path), output, backend, options)
        progress(ProgressEvent("todo", len(todo)))
        run_cases(run, rows, todo, backend, output, options, progress)
    return run

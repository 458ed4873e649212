"""`segment_folder_ray`: the scans of a folder as Ray tasks, one per scan, on a Ray cluster's workers.

The driver (the calling process, already connected with `ray.init`) does what `segment_folder`
does around the cases: checks the folders, holds the output folder's lock, lists this run's cases
(`folder.claim_cases`: leftovers, another model's folder, resumption, shards, room) and writes the
report (`report.record_run`), so the folder and its report are those of a single-process run. A
first task opens the model on a worker and runs one blank window (`check_backend_outputs`), so a
broken model is refused before anything is written. Then each scan is one task: it opens the model
on its worker (`open_engine`, e.g. `functools.partial(models.open_backend, path, ...)`) and runs
the folder run's per-case path (`folder.segment_cases`), returning the case's row. A scan that
cannot be used (a corrupt file) comes back as a failed row; Ray retries a task whose worker or
node dies (`max_retries`) and a task it gives up on becomes a failed row naming Ray's error.

Input and output must be at the same paths on the driver and on every worker (a shared file
system). Ray is imported only here and only when called (the optional extra `ceds-deploy[ray]`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

from ceds_deploy import errors
from ceds_deploy.backends.base import Backend
from ceds_deploy.errors import BackendError, UsageError
from ceds_deploy.inference.folder import (
    FolderRun,
    claim_cases,
    new_run_id,
    prepare_output,
    segment_cases,
)
from ceds_deploy.inference.guard import check_backend_outputs, check_locations, model_digest
from ceds_deploy.inference.lock import FolderLock
from ceds_deploy.inference.options import SegmentOptions
from ceds_deploy.inference.pipeline import error_text
from ceds_deploy.inference.report import CaseRow, record_run
from ceds_deploy.inference.segment import batch_size_for, check_window
from ceds_deploy.io import ScanSource
from ceds_deploy.progress import ProgressCallback, ProgressEvent, no_progress

log = logging.getLogger(__name__)

EngineOpener = Callable[[], tuple[Backend, str]]  # (inactive backend, why it was chosen), as open_backend
MAX_RETRIES = 3  # tries after the first when a worker or its node dies (not for a bad scan)


@dataclass(frozen=True)
class EngineFacts:
    """What a worker reports of the engine it opened (an `EngineLabel` for the driver's rows)."""

    description: str
    device: str
    why: str
    spec: dict[str, Any]
    batch_size: int
    model_sha256: str


def _describe_engine(open_engine: EngineOpener, options: SegmentOptions) -> EngineFacts | tuple[str, str]:
    """Task: open the model, run one blank window; its facts, or (error type, message)."""
    try:
        engine, why = open_engine()
        with engine:
            check_backend_outputs(engine)
            return EngineFacts(
                engine.description,
                engine.device,
                why,
                engine.spec.to_dict(),
                batch_size_for(engine, options),
                model_digest(engine),
            )
    except Exception as err:  # noqa: BLE001 - raised again on the driver as the same kind of error
        return type(err).__name__, error_text(err)


def _segment_one(
    open_engine: EngineOpener, output: Path, options: SegmentOptions, row: CaseRow, path: ScanSource
) -> CaseRow:
    """Task: one scan through the folder run's per-case path on this worker; the case's row."""
    try:
        engine, _ = open_engine()
        with engine:
            row.backend, row.device = engine.description, engine.device
            return segment_cases(engine, output, options, [(row, path)])[0]
    except Exception as err:  # noqa: BLE001 - the model failed to open here: this case fails, the run goes on
        row.status, row.error = "failed", error_text(err)
        return row


def _raise_remote(kind: str, message: str) -> NoReturn:
    """The probe task's error again on the driver: our own kinds as they are, others as BackendError."""
    cls = getattr(errors, kind, None)
    simple = (errors.ArtifactError, errors.BackendUnavailableError, BackendError, errors.ConfigError, UsageError)
    raise (cls if isinstance(cls, type) and issubclass(cls, simple) else BackendError)(message)


def _first_line(err: Exception) -> str:
    """Ray's errors carry the remote traceback below their first line."""
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def task_resources(gpu: bool, cpus_per_task: float) -> dict[str, float]:
    """Ray resources of one task: a GPU (Ray sets CUDA_VISIBLE_DEVICES, so `cuda` is that GPU), or CPUs."""
    return {"num_gpus": 1, "num_cpus": cpus_per_task} if gpu else {"num_cpus": cpus_per_task}


def _probe(
    ray: Any, open_engine: EngineOpener, options: SegmentOptions, resources: dict[str, float], max_retries: int
) -> EngineFacts:
    """The probe task's facts; its error raised here. A GPU run on a cluster without a GPU is refused
    (its tasks would wait forever for one)."""
    available = ray.cluster_resources()
    if resources.get("num_gpus") and available.get("GPU", 0) < 1:
        raise errors.BackendUnavailableError(
            f"--device cuda on Ray, but the cluster has no GPU (its resources: CPU {available.get('CPU', 0):g}, "
            f"GPU 0); start GPU worker nodes, or run on CPUs with --device cpu"
        )
    probe = ray.remote(_describe_engine).options(max_retries=max_retries, **resources)
    try:
        facts = ray.get(probe.remote(open_engine, options))
    except ray.exceptions.RayError as err:
        raise BackendError(
            f"the task that checks the model on a Ray worker failed ({type(err).__name__}): {_first_line(err)}"
        ) from None
    if isinstance(facts, tuple):
        _raise_remote(*facts)
    return facts


def segment_folder_ray(
    input_path: Path,
    output: Path,
    open_engine: EngineOpener,
    options: SegmentOptions | None = None,
    *,
    gpu: bool = False,
    cpus_per_task: float = 1.0,
    max_retries: int = MAX_RETRIES,
    progress: ProgressCallback = no_progress,
    run_info: dict | None = None,
) -> tuple[FolderRun, EngineFacts]:
    """Segment every scan under `input_path` into `output` with one Ray task per scan; returns the
    run (rows, report paths, run id) and the engine the probe task opened.

    Progress events: "todo" and "case" as `segment_folder`'s. Raises `UsageError` when Ray is not
    connected, the model's own error (`ArtifactError`, `BackendError`, ...) when it fails to open
    or run on a worker, and `segment_folder`'s folder errors, all before writing anything.
    """
    import ray

    if not ray.is_initialized():
        raise UsageError("segment_folder_ray needs a Ray connection: call ray.init(address) first")
    options = options or SegmentOptions()
    input_path, output = Path(input_path), Path(output)
    check_locations(input_path, output)
    resources = task_resources(gpu, cpus_per_task)
    facts = _probe(ray, open_engine, options, resources, max_retries)
    check_window(options.window, tuple(facts.spec["roi_size"]))
    prepare_output(output)
    model = facts.model_sha256
    with FolderLock(output, model, options.shard, force=options.force) as lock:
        rows, todo = claim_cases(input_path, output, facts, model, options, lock.others_running)
        started = datetime.now(timezone.utc)
        run = FolderRun(rows=rows, run_id=new_run_id(started))
        for row in rows + [case.row for case in todo]:
            row.run_id, row.model = run.run_id, model
        progress(ProgressEvent("todo", len(todo)))
        info = {
            **(run_info or {}),
            "run_id": run.run_id,
            "started": started.isoformat(timespec="seconds"),
            "model_sha256": model,
            "options": {**asdict(options), "shard": f"{options.shard[0]}/{options.shard[1]}"},
            "model_spec": facts.spec,
            "backend": facts.description,
            "device": facts.device,
            "input": str(input_path),
            "output": str(output),
            "batch_size": facts.batch_size,
            "ray": {"tasks": len(todo), "resources_per_task": resources, "max_retries": max_retries},
        }
        task = ray.remote(_segment_one).options(max_retries=max_retries, **resources)
        pending = {task.remote(open_engine, output, options, case.row, case.path): case.row for case in todo}
        run.report_paths = record_run(
            output, run.rows, info, lambda: _collect(ray, pending, run.rows, progress), html=options.html
        )
    return run, facts


def _collect(ray: Any, pending: dict[Any, CaseRow], rows: list[CaseRow], progress: ProgressCallback) -> bool:
    """Gather the tasks' rows as they finish (a task Ray gave up on: a failed row); on an
    interruption the tasks not finished are cancelled and the error goes on. Returns False (not
    interrupted)."""
    try:
        while pending:  # what finished within a second: one wait per second, not one per task
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=1.0)
            for ref in done:
                row = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except ray.exceptions.RayError as err:
                    row.status, row.error = "failed", f"Ray task failed ({type(err).__name__}): {_first_line(err)}"
                    log.warning("%s: %s", row.case, row.error)
                rows.append(row)
                progress(ProgressEvent("case", 1, {"case": row.case, "status": row.status}))
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    return False

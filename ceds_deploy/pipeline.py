"""`segment_volume` (one scan in memory) and `segment_folder` (a folder of scans, pipelined).

The folder pipeline overlaps work in three kinds of threads: readers (read + pre-process the next
cases), the caller's thread (the backend, windows of consecutive cases sharing batches) and writers
(restore to the scan's grid, write, assess). There are `io_workers` readers and writers (one on a
small CPU, up to 4 on a many-core GPU machine); queues of that many cases keep memory bounded.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ceds_deploy.errors import CedsError
from ceds_deploy.io import case_id, find_scans, read_scan, write_volumes
from ceds_deploy.postprocess import RestoredPrediction, assess, restore_prediction
from ceds_deploy.preprocess import PreprocessPlan, prepare_image
from ceds_deploy.report import CaseRow, write_report
from ceds_deploy.spec import ModelSpec
from ceds_deploy.stitch import CaseJob, predict_cases, sliding_window_predict
from ceds_deploy.volume import Geometry, Volume
from ceds_deploy.windows import BLEND_MODES, WindowPlan, plan_windows, windows_with_content

MASK_SUFFIX = ".nii.gz"
CONFIDENCE_SUFFIX = "_confidence.nii.gz"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
PREVIEW_SUFFIX = "_preview.png"


@dataclass(frozen=True)
class SegmentOptions:
    overlap: float = 0.25
    blend: str = "constant"  # how overlapping windows are averaged (windows.blend_weights)
    batch_size: int | None = None  # None: the backend's max_batch_size
    mirror: bool = False  # test-time augmentation over the 8 mirrorings
    skip_air: bool = True  # windows holding only air/lung are not computed
    save_probabilities: bool = False
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)  # (index, count), 0-based
    confidence_threshold: float = 0.5
    preview: bool = False
    preview_labels: Path | None = None  # ground truth to outline in previews, matched by case name
    window: tuple[int, int, int] | None = None  # larger inference windows than the training ROI (opt-in)
    io_workers: int | None = None  # cases read and written at once; None: one per 4 CPU cores, 1 to 4
    largest_component: bool = False  # keep only the largest tumour component (one lesion per scan)

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be >= 0 and < 1, got {self.overlap}")
        if self.blend not in BLEND_MODES:
            raise ValueError(f"blend must be one of {', '.join(BLEND_MODES)}, got {self.blend!r}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        index, count = self.shard
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"shard must be I/N with 0 <= I < N, got {index}/{count}")
        if self.window is not None and (len(self.window) != 3 or any(w <= 0 or w % 16 for w in self.window)):
            raise ValueError(f"window must be 3 positive multiples of 16, got {self.window}")
        if self.io_workers is not None and self.io_workers < 1:
            raise ValueError(f"io workers must be >= 1, got {self.io_workers}")
        if not 0 < self.confidence_threshold < 1:
            raise ValueError(f"confidence threshold must be in (0, 1), got {self.confidence_threshold}")


def inference_window(image_shape: tuple[int, int, int], spec: ModelSpec,
                     window: tuple[int, int, int] | None) -> tuple[int, int, int]:
    """The window to run: the training ROI, or a larger one asked for (the network is convolutional
    apart from CBAM's global pooling), never larger than the image allows in multiples of 16."""
    if window is None:
        return spec.roi_size
    return tuple(max(r, min(w, n // 16 * 16)) for r, w, n in zip(spec.roi_size, window, image_shape))


def batch_size_for(backend, batch_size: int | None, window: tuple[int, int, int] | None) -> int:
    """Windows per backend call: the one asked for, else the backend's; on a CPU, larger inference
    windows than the ROI lower the default as the window grows (Backend.default_batch_size_for)."""
    if batch_size:
        return batch_size
    if window is not None and backend.device == "cpu":
        return min(backend.max_batch_size, backend.default_batch_size_for(backend.spec.replace(roi_size=window), "cpu"))
    return backend.max_batch_size


def work_device(backend) -> str:
    """Where pre-processing, stitching and resampling run: the backend's GPU when it has one
    that PyTorch can use, else the CPU."""
    device = str(getattr(backend, "device", "cpu"))
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return device
    return "cpu"


def window_plan_for(image: np.ndarray, spec: ModelSpec, overlap: float, skip_air: bool,
                    window: tuple[int, int, int] | None = None) -> WindowPlan:
    plan = plan_windows(image.shape, inference_window(image.shape, spec, window), overlap)
    return windows_with_content(plan, image) if skip_air else plan


@dataclass
class Segmentation:
    mask: np.ndarray
    confidence: np.ndarray
    probabilities: np.ndarray | None
    windows: int


def segment_volume(volume: Volume, backend, *, overlap: float = 0.25, blend: str = "constant",
                   batch_size: int | None = None,
                   mirror: bool = False, skip_air: bool = True, keep_probabilities: bool = False,
                   window: tuple[int, int, int] | None = None, largest_component: bool = False) -> Segmentation:
    """Segment one scan with an active backend; outputs are on the scan's own grid."""
    spec: ModelSpec = backend.spec
    device = work_device(backend)
    image, plan = prepare_image(volume, spec, device)
    windows = window_plan_for(image, spec, overlap, skip_air, window)
    seg, conf = sliding_window_predict(image, windows, backend, batch_size=batch_size_for(backend, batch_size, window),
                                       num_classes=spec.num_classes, mirror=mirror, blend=blend, accumulate_on=device)
    restored = restore_prediction(seg, conf, plan, keep_probabilities, largest_component)
    return Segmentation(restored.mask, restored.confidence, restored.probabilities, len(windows))


# ---------------------------------------------------------------- folder pipeline


def default_io_workers() -> int:
    """Cases read and written at once: reading and writing compressed NIfTI is CPU work that
    ITK does outside the GIL, so a many-core GPU machine keeps several in flight; 2 cores keep one."""
    return max(1, min(4, (os.cpu_count() or 1) // 4))


def output_paths(output: Path, case: str) -> dict[str, Path]:
    return {"mask": output / f"{case}{MASK_SUFFIX}", "confidence": output / f"{case}{CONFIDENCE_SUFFIX}",
            "probabilities": output / f"{case}{PROBABILITIES_SUFFIX}", "preview": output / f"{case}{PREVIEW_SUFFIX}"}


def shard_cases(cases: list[Path], index: int, count: int) -> list[Path]:
    """Deterministic split of the sorted case list: case k goes to shard k mod count."""
    ordered = sorted(cases, key=lambda p: (case_id(p), str(p)))
    return ordered[index::count]


@dataclass
class _CaseState:
    row: CaseRow
    path: Path
    volume: Volume | None = None  # the source scan, kept only when a preview needs its HU values
    geometry: Geometry | None = None
    plan: PreprocessPlan | None = None


@dataclass
class FolderRun:
    rows: list[CaseRow] = field(default_factory=list)
    report_paths: tuple[Path, Path] | None = None

    @property
    def failed(self) -> int:
        return sum(r.status == "failed" for r in self.rows)


_DONE = object()


class _Stopped(Exception):
    pass


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while True:
        if stop.is_set():
            raise _Stopped
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


def _error_text(err: Exception) -> str:
    return str(err) if isinstance(err, CedsError) else f"{type(err).__name__}: {err}"


def segment_folder(input_path: Path, output: Path, backend, options: SegmentOptions = SegmentOptions(), *,
                   progress: Callable[[str, int], None] | None = None, run_info: dict | None = None) -> FolderRun:
    """Segment every scan under `input_path` into `output` with an active backend.

    `progress(event, n)` receives ("todo", cases), ("planned", windows), ("windows", n), ("case", 1).
    A scan that fails gets a failed row; the run goes on. Outputs are written atomically.
    """
    spec: ModelSpec = backend.spec
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    listing = find_scans(input_path)
    run = FolderRun()
    for path, why in listing.skipped:
        run.rows.append(CaseRow(case=path.name, status="skipped", error=why, input_path=str(path)))
    seen: dict[str, Path] = {}
    todo: list[_CaseState] = []
    for path in shard_cases(listing.scans, *options.shard):
        name = case_id(path)
        row = CaseRow(case=name, status="ok", input_path=str(path), backend=backend.description, device=backend.device)
        if name in seen:
            row.status, row.error = "failed", f"case name {name!r} also used by {seen[name].name}; rename one"
            run.rows.append(row)
            continue
        seen[name] = path
        outputs = output_paths(output, name)
        if not options.overwrite and outputs["mask"].exists() and outputs["confidence"].exists():
            row.status, row.error = "skipped", "outputs exist (use --overwrite to redo)"
            run.rows.append(row)
            continue
        todo.append(_CaseState(row, path))

    notify = progress or (lambda event, n: None)
    notify("todo", len(todo))
    workers = options.io_workers or default_io_workers()
    prepared: queue.Queue = queue.Queue(maxsize=workers)
    finished: queue.Queue = queue.Queue(maxsize=workers)
    stop = threading.Event()
    batch_size = batch_size_for(backend, options.batch_size, options.window)
    device = work_device(backend)
    pending_reads = iter(todo)
    take_lock = threading.Lock()

    def read_worker() -> None:
        try:
            while True:
                with take_lock:
                    state = next(pending_reads, None)
                if state is None:
                    return
                row = state.row
                try:
                    t0 = time.perf_counter()
                    volume = read_scan(state.path, dtype=None)  # as stored: only the body crop becomes float32
                    t1 = time.perf_counter()
                    image, plan = prepare_image(volume, spec, device)
                    windows = window_plan_for(image, spec, options.overlap, options.skip_air, options.window)
                    t2 = time.perf_counter()
                except Exception as err:  # one bad scan never stops the run
                    row.status, row.error = "failed", _error_text(err)
                    _put(finished, state, stop)
                    continue
                row.seconds["read"], row.seconds["preprocess"] = t1 - t0, t2 - t1
                row.input_shape = "x".join(map(str, volume.shape))
                row.input_spacing = "x".join(f"{s:.3g}" for s in volume.spacing)
                row.windows = len(windows)
                state.geometry, state.plan = volume.geometry, plan
                state.volume = volume if options.preview else None  # keep the HU array only for a preview
                del volume
                notify("planned", len(windows))
                _put(prepared, CaseJob(key=row.case, image=image, plan=windows, payload=state), stop)
        except _Stopped:
            return
        finally:
            try:
                _put(prepared, _DONE, stop)
            except _Stopped:
                pass

    def jobs() -> Iterator[CaseJob]:
        readers_left = workers
        while readers_left:
            item = prepared.get()
            if item is _DONE:
                readers_left -= 1
                continue
            yield item

    def write_worker() -> None:
        while True:
            try:
                item = finished.get(timeout=0.2)
            except queue.Empty:
                if stop.is_set():  # interrupted: cases not yet written are left undone, never half-written
                    return
                continue
            if item is _DONE or stop.is_set():
                return
            try:
                if isinstance(item, _CaseState):
                    run.rows.append(item.row)
                else:
                    run.rows.append(_finish_case(item, output, options, spec))
            except Exception as err:  # noqa: BLE001 - recorded in the report, the run goes on
                state = item if isinstance(item, _CaseState) else item[0].payload
                state.row.status, state.row.error = "failed", _error_text(err)
                run.rows.append(state.row)
            notify("case", 1)

    readers = [threading.Thread(target=read_worker, name=f"ceds-reader-{i}", daemon=True) for i in range(workers)]
    writers = [threading.Thread(target=write_worker, name=f"ceds-writer-{i}", daemon=True) for i in range(workers)]
    for thread in readers + writers:
        thread.start()
    try:
        for job, seg, conf in predict_cases(jobs(), backend, batch_size=batch_size, num_classes=spec.num_classes,
                                            mirror=options.mirror, blend=options.blend, accumulate_on=device,
                                            on_batch=lambda n: notify("windows", n)):
            job.payload.row.seconds["infer"] = job.infer_seconds
            job.image = None  # the model-grid input is no longer needed
            _put(finished, (job, seg, conf), stop)
        for _ in writers:
            _put(finished, _DONE, stop)
        for thread in writers:
            thread.join()
    finally:
        if any(t.is_alive() for t in readers + writers):  # interrupted: let the threads wind down
            stop.set()
            for thread in writers:
                thread.join(timeout=30)
        info = dict(run_info or {})
        info.update({"options": {**asdict(options), "shard": f"{options.shard[0]}/{options.shard[1]}"},
                     "model_spec": spec.to_dict(), "backend": backend.description, "device": backend.device,
                     "input": str(input_path), "output": str(output), "batch_size": batch_size,
                     "io_workers": workers, "interrupted": stop.is_set()})
        run.report_paths = write_report(output, run.rows, info)
    return run


def _finish_case(item, output: Path, options: SegmentOptions, spec: ModelSpec) -> CaseRow:
    job, seg, conf = item
    state: _CaseState = job.payload
    row = state.row
    t0 = time.perf_counter()
    restored: RestoredPrediction = restore_prediction(seg, conf, state.plan, options.save_probabilities,
                                                      options.largest_component)
    del seg, conf
    t1 = time.perf_counter()
    geometry = state.geometry
    paths = output_paths(output, row.case)
    outputs = [(paths["confidence"], restored.confidence, geometry)]
    if restored.probabilities is not None:
        outputs.append((paths["probabilities"], restored.probabilities, geometry))
    outputs.append((paths["mask"], restored.mask, geometry))  # last: its presence marks the case done
    write_volumes(outputs)
    if options.preview:
        from ceds_deploy.preview import write_preview

        label, note = _preview_label(options.preview_labels, row.case, geometry)
        if note:
            row.error = note  # the case succeeded; the preview lacks its ground-truth outline
        write_preview(paths["preview"], state.volume, restored.mask, restored.confidence, label=label, title=row.case)
    row.seconds["restore"], row.seconds["write"] = t1 - t0, time.perf_counter() - t1
    findings = assess(restored.mask, restored.confidence, geometry.voxel_volume_ml, options.confidence_threshold)
    row.tumour_ml = round(findings.tumour_ml, 3)
    row.mean_confidence = findings.mean_confidence
    row.low_confidence_fraction = findings.low_confidence_fraction
    row.needs_review, row.review_reason = findings.needs_review, findings.review_reason
    return row


def _preview_label(folder: Path | None, case: str, geometry: Geometry) -> tuple[np.ndarray | None, str]:
    """The ground-truth label of `case` in `folder` for the preview, and a note when one exists
    but cannot be drawn (it is on another grid)."""
    if folder is None:
        return None, ""
    matches = [p for p in find_scans(folder).scans if case_id(p) == case]
    if not matches:
        return None, ""
    label = read_scan(matches[0], dtype=np.uint8)
    if not label.geometry.same_grid(geometry, atol=1e-3):
        return None, f"preview without ground truth: {matches[0].name} is on another grid than the scan"
    return label.array, ""

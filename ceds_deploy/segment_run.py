"""What `ceds segment` does between parsing options and the pipeline: pick and start the backend,
show progress, summarise. Kept out of the CLI module so the library can call it too."""

from __future__ import annotations

from pathlib import Path

from ceds_deploy.artifacts import artifact_kind, read_spec
from ceds_deploy.backends import create_backend, resolve_backend
from ceds_deploy.pipeline import SegmentOptions, segment_folder


def run_segment(input_path: Path, output: Path, model: Path, *, backend: str = "auto", device: str = "cpu",
                options: SegmentOptions = SegmentOptions(), precision: str | None = None, cuda_graph: bool = False,
                console=None, show_progress: bool = True) -> int:
    """Segment a folder; returns the number of failed cases."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    console = console or Console(stderr=True)
    kind = artifact_kind(model)
    spec = read_spec(model)
    name, why = resolve_backend(backend, kind, device)
    from ceds_deploy.errors import ConfigError

    extra = {}
    if precision is not None:
        if name == "onnxruntime":
            raise ConfigError("--precision applies to the torch and tensorrt backends; the onnxruntime backend "
                              "runs the ONNX file's own precision")
        extra["precision"] = precision
    if cuda_graph:
        if name not in ("torch", "tensorrt"):
            raise ConfigError(f"--cuda-graph applies to the torch and tensorrt backends; the {name} backend was chosen")
        extra["cuda_graph"] = True
    engine = create_backend(name, model, spec, device=device, max_batch_size=options.batch_size, **extra)
    with engine:
        console.print(f"backend: [bold]{engine.description}[/] ({why}); model {model.name}, "
                      f"ROI {spec.roi_size}, spacing {spec.target_spacing} mm")
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=console, disable=not show_progress, transient=False) as bar:
            cases = bar.add_task("cases", total=None, rate="")
            windows = bar.add_task("windows", total=0, rate="")
            import time

            started = time.perf_counter()
            counted = {"windows": 0}

            def on_progress(event: str, n: int) -> None:
                if event == "todo":
                    bar.update(cases, total=n)
                elif event == "planned":
                    bar.update(windows, total=(bar.tasks[windows].total or 0) + n)
                elif event == "windows":
                    counted["windows"] += n
                    rate = counted["windows"] / max(time.perf_counter() - started, 1e-9)
                    bar.update(windows, advance=n, rate=f"{rate:.2f} windows/s")
                elif event == "case":
                    bar.update(cases, advance=n)

            run = segment_folder(input_path, output, engine, options, progress=on_progress,
                                 run_info={"model": str(model), "backend_choice": why})
    counts = {s: sum(r.status == s for r in run.rows) for s in ("ok", "failed", "skipped")}
    review = [r.case for r in run.rows if r.status == "ok" and r.needs_review]
    console.print(f"{counts['ok']} segmented, {counts['failed']} failed, {counts['skipped']} skipped; "
                  f"{len(review)} need review; report: {run.report_paths[0]}")
    for row in run.rows:
        if row.status == "failed":
            console.print(f"[red]failed[/] {row.case}: {row.error}", highlight=False)
    return run.failed

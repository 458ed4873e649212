"""`ceds segment`: masks, confidence maps and a report for a folder (or one file) of scans."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ceds_deploy.cli import STARTED_AT, collection_paused
from ceds_deploy.cli.options import BackendOption, DeviceOption, ModelOption, check_device, parse_shard

if TYPE_CHECKING:
    from rich.console import Console

    from ceds_deploy.inference import SegmentOptions


def segment(
    input: Annotated[
        Path,
        typer.Argument(help="A folder of scans (NIfTI, NRRD, MHA/MHD; DICOM series anywhere below it) or one scan."),
    ],
    output: Annotated[Path, typer.Argument(help="Folder for masks, confidence maps and report.csv/json.")],
    model: ModelOption,
    backend: BackendOption = "auto",
    device: DeviceOption = "cpu",
    overlap: Annotated[
        float, typer.Option(help="Window overlap in [0, 1); each step up multiplies the window count.")
    ] = 0.25,
    blend: Annotated[
        str,
        typer.Option(
            help="How overlapping windows are averaged: constant (the CEDS validation's, MONAI's "
            "default) or gaussian (window centres count most, as nnU-Net)."
        ),
    ] = "constant",
    batch_size: Annotated[
        int | None,
        typer.Option(
            help="Windows per backend call (default: on a CPU up to 4 windows of 32^3 voxels, 1 of "
            "larger ones; on a GPU 4, halved while a batch runs out of memory)."
        ),
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="Average over the 8 mirrorings of the three axes (8x slower).")
    ] = False,
    precision: Annotated[
        str | None,
        typer.Option(
            help="torch: fp32, bf16, or on CUDA fp16/tf32; "
            "default fp32 on CPU and fp16 on CUDA. A .onnx or .engine model "
            "runs its own precision (fp16 files come from `ceds export "
            "--precision fp16`); tensorrt accepts only that value "
            "here."
        ),
    ] = None,
    cuda_graph: Annotated[
        bool,
        typer.Option(
            "--cuda-graph",
            help="torch or tensorrt on CUDA: capture the fixed-shape call once and replay it as a CUDA graph.",
        ),
    ] = False,
    autotune: Annotated[
        bool | None,
        typer.Option(
            "--autotune/--no-autotune",
            help="torch or onnxruntime on CUDA: let cuDNN time its algorithms for each window shape. "
            "It costs seconds in a new process and saves about a tenth of the network's time, so it "
            "pays for long runs; default: on with --watch, else off.",
            show_default=False,
        ),
    ] = None,
    save_probabilities: Annotated[
        bool, typer.Option("--save-probabilities", help="Also write <case>_probabilities.nii.gz.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Redo cases whose outputs exist "
            "(default: skip them, so a stopped run resumes); needed to write "
            "into a folder holding results of another model.",
        ),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Take over the output folder's lock from another "
            "run (a run on another host, or one you know is gone; a lock of a "
            "dead process on this host is taken over anyway).",
        ),
    ] = False,
    html: Annotated[
        bool,
        typer.Option(
            "--html",
            help="Also write report.html: the cases sortable by review "
            "flag, confidence and volume, with thumbnails (use with --preview), "
            "failures first.",
        ),
    ] = False,
    shard: Annotated[
        str, typer.Option(help="I/N: process only the I-th (0-based) of N deterministic parts of the sorted case list.")
    ] = "0/1",
    confidence_threshold: Annotated[
        float, typer.Option(help="Tumour voxels below this confidence count as uncertain in the report.")
    ] = 0.5,
    review_below: Annotated[
        float,
        typer.Option(
            help="With a calibrated model (ceds calibrate): flag cases whose expected Dice, from the "
            "calibrated confidence map, is below this.",
        ),
    ] = 0.7,
    preview: Annotated[
        bool,
        typer.Option(
            "--preview",
            help="Write a PNG per case: three planes through the mass with the outline and the confidence map.",
        ),
    ] = False,
    labels: Annotated[
        Path | None,
        typer.Option(help="With --preview: a folder of ground-truth labels (same case names) to outline too."),
    ] = None,
    skip_air: Annotated[bool, typer.Option(help="Do not compute windows that hold only air or lung.")] = True,
    window: Annotated[
        tuple[int, int, int] | None,
        typer.Option(
            help="Inference window X Y Z (multiples of "
            "16) larger than the training ROI: fewer, "
            "bigger windows; CBAM's global pooling sees "
            "more context, so check the accuracy.",
            metavar="X Y Z",
            show_default=False,
        ),
    ] = None,
    largest_component: Annotated[
        bool,
        typer.Option(
            "--largest-component", help="Keep only the largest connected tumour region (for one lesion per scan)."
        ),
    ] = False,
    io_workers: Annotated[
        int | None, typer.Option(min=1, help="Scans read and written at once (default: one per 4 CPU cores, 1 to 4).")
    ] = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            help="Keep the model warm and segment each new scan (or DICOM series folder) that arrives in "
            "INPUT, after those already there; Ctrl-C (or SIGTERM) stops.",
        ),
    ] = False,
    watch_interval: Annotated[
        float, typer.Option(min=0.01, help="With --watch: seconds between looks at INPUT.")
    ] = 1.0,
    watch_settle: Annotated[
        float,
        typer.Option(
            min=0.0, help="With --watch: seconds a new file or series folder must stay unchanged before it is read."
        ),
    ] = 2.0,
    watch_timeout: Annotated[
        float | None,
        typer.Option(min=0.0, help="With --watch: stop after this many seconds without a new scan (default: never)."),
    ] = None,
    # -- more than one GPU or machine (cli/segment_distributed.py) --
    ray: Annotated[
        str | None,
        typer.Option(
            help="Run one Ray task per scan on a Ray cluster: auto (the cluster this machine "
            "belongs to), local (start one here) or ray://HOST:PORT. Needs `pip install "
            "ceds-deploy[ray]`; input and output on a file system the workers share.",
        ),
    ] = None,
    ray_cpus: Annotated[float, typer.Option(min=0.01, help="With --ray: CPUs each task reserves.")] = 1.0,
    rank_timeout: Annotated[
        float,
        typer.Option(
            min=1.0,
            help="Under torchrun: seconds the ranks wait for each other at start, and "
            "without a sign of life from a rank before rank 0 reports it lost and writes the report.",
        ),
    ] = 300.0,
    output_format: Annotated[
        str | None,
        typer.Option(
            help="nifti, dicom-seg or both (default: both for a DICOM series, nifti otherwise). dicom-seg: "
            "<case>_seg.dcm (DICOM SEG) and <case>_confidence.dcm (Parametric Map), referencing the series.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Segment mediastinal tumours: a mask and a confidence map per scan, on the scan's own grid."""
    check_device(device)
    shard_pair = parse_shard(shard)
    from ceds_deploy.cli import segment_distributed as distributed
    from ceds_deploy.io.prefetch import prefetch_first_scans

    rank = distributed.torchrun_rank()
    if ray is None and rank is None and shard_pair[1] == 1:  # one process reads the folder's first scan
        prefetch_first_scans(input)  # decompressed on the idle core while torch imports (check_paths on)
    with collection_paused():
        check_paths(input, output, backend)
    from rich.console import Console

    from ceds_deploy.errors import ConfigError
    from ceds_deploy.inference import SegmentOptions

    try:
        options = SegmentOptions(
            overlap=overlap,
            blend=blend,
            batch_size=batch_size,
            tta=tta,
            save_probabilities=save_probabilities,
            overwrite=overwrite,
            force=force,
            shard=shard_pair,
            confidence_threshold=confidence_threshold,
            review_below=review_below,
            preview=preview,
            skip_air=skip_air,
            preview_labels=labels,
            window=window,
            io_workers=io_workers,
            largest_component=largest_component,
            html=html,
            output_format=output_format,
        )
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from None
    tuned = watch if autotune is None else autotune
    engine: dict[str, Any] = dict(backend=backend, device=device, precision=precision, cuda_graph=cuda_graph)
    engine["cudnn_benchmark"] = tuned
    if ray is not None or rank is not None:
        if watch:
            raise typer.BadParameter("--watch runs in one process; it does not combine with --ray or torchrun")
        failed = distributed.run_distributed(
            input,
            output,
            model,
            engine,
            options,
            console=Console(stderr=True),
            ray=ray,
            ray_cpus=ray_cpus,
            rank=rank,
            rank_timeout=rank_timeout,
        )
    else:
        watching = {"interval_s": watch_interval, "settle_s": watch_settle, "idle_timeout_s": watch_timeout}
        failed = run_segment(
            input,
            output,
            model,
            options=options,
            console=Console(stderr=True),
            watch=watching if watch else None,
            started_at=STARTED_AT,
            **engine,
        )
    if failed:
        raise typer.Exit(1)


def check_paths(input_path: Path, output: Path, backend: str) -> None:
    """Usage errors (exit 2) before anything is opened or created: a missing input, an output that
    is a file or would overwrite or mix with the input, an unknown backend name."""
    from ceds_deploy.backends import BACKEND_NAMES
    from ceds_deploy.errors import OutputError, ScanError
    from ceds_deploy.inference.guard import check_locations

    if backend not in BACKEND_NAMES:
        raise typer.BadParameter(
            f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_NAMES)}", param_hint="--backend"
        )
    try:
        check_locations(input_path, output)
    except ScanError as err:
        raise typer.BadParameter(str(err), param_hint="INPUT") from None
    except OutputError as err:
        raise typer.BadParameter(str(err), param_hint="OUTPUT") from None


def run_segment(
    input_path: Path,
    output: Path,
    model: Path,
    *,
    backend: str = "auto",
    device: str = "cpu",
    options: SegmentOptions | None = None,
    precision: str | None = None,
    cuda_graph: bool = False,
    cudnn_benchmark: bool = False,
    console: Console | None = None,
    show_progress: bool = True,
    watch: dict[str, Any] | None = None,
    started_at: float | None = None,
    run_info: dict | None = None,
) -> int:
    """Open the model, segment a folder (or with `watch`, `watch_folder`'s keywords, watch it) with
    rich progress, print the summary; returns the number of failed cases. The startup stages
    (imports since `started_at`, else since this call; model load; backend start) go to the report.
    The demo calls this too; each rank under torchrun too (`run_info` names it)."""
    entered = time.perf_counter() if started_at is None else started_at
    with collection_paused():
        from rich.console import Console

        from ceds_deploy.inference import SegmentOptions, segment_folder
        from ceds_deploy.inference.watch import watch_folder
        from ceds_deploy.models import open_backend

        imported = time.perf_counter()
        options = options or SegmentOptions()
        console = console or Console(stderr=True)
        engine, why = open_backend(
            model,
            backend=backend,
            device=device,
            max_batch_size=options.batch_size,
            precision=precision,
            cuda_graph=cuda_graph,
            cudnn_benchmark=cudnn_benchmark,
        )
    opened = time.perf_counter()
    spec = engine.spec
    from ceds_deploy.errors import ConfigError
    from ceds_deploy.inference.segment import check_window

    try:
        check_window(options.window, spec.roi_size)  # a usage error here, before any case
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--window") from None
    from ceds_deploy.cli.display import SegmentDisplay

    progress = SegmentDisplay(console, enabled=show_progress)
    with progress:
        engine.activate()
        startup = {"imports": imported - entered, "model_load": opened - imported}
        startup["backend_start"] = time.perf_counter() - opened
        info = {"model": str(model), "backend_choice": why, "startup_s": {k: round(v, 4) for k, v in startup.items()}}
        info.update(run_info or {})
        with engine:
            console.print(
                f"backend: [bold]{engine.description}[/] ({why}); model {model.name}, "
                f"ROI {spec.roi_size}, spacing {spec.target_spacing} mm"
            )
            if watch is None:
                run = segment_folder(
                    input_path, output, engine, options, progress=progress, run_info=info, started_at=started_at
                )
            else:
                console.print(f"watching {input_path} for new scans; Ctrl-C stops")
                run = watch_folder(
                    input_path,
                    output,
                    engine,
                    options,
                    interval_s=float(watch["interval_s"]),
                    settle_s=float(watch["settle_s"]),
                    idle_timeout_s=watch.get("idle_timeout_s"),
                    progress=progress,
                    run_info=info,
                    started_at=started_at,
                )
    from ceds_deploy.cli.display import print_summary

    print_summary(console, run.rows, run.report_paths[0] if run.report_paths else output)
    if watch is None and not run.rows and options.shard == (0, 1):  # a shard of its own may be empty
        from ceds_deploy.io.paths import IMAGE_SUFFIXES

        formats = ", ".join(IMAGE_SUFFIXES)
        console.print(f"[yellow]no scans[/] in {input_path}: no image files ({formats}) or DICOM series")
    return run.failed

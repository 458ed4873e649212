"""`ceds export`: checkpoint -> validated ONNX file; ONNX file -> checked TensorRT engine."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from ceds_deploy.backends.tensorrt_runtime import BatchProfile


def export(
    source: Annotated[
        Path,
        typer.Argument(
            help="A training checkpoint (.pt) to export to ONNX, or an ONNX file "
            "from `ceds export` to build a TensorRT engine from."
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="ONNX file to write (SOURCE is a checkpoint).")
    ] = None,
    weights: Annotated[
        str, typer.Option(help="Which network of the checkpoint: [bold]teacher[/] (the mean teacher) or student.")
    ] = "teacher",
    opset: Annotated[
        int, typer.Option(help="ONNX opset. 17 parses on TensorRT 8.5 and later (JetPack 5 and 6); up to 24.")
    ] = 17,
    tensorrt: Annotated[
        Path | None,
        typer.Option(
            "--tensorrt", help="Build a TensorRT engine here (from SOURCE, or from the ONNX file --out just wrote)."
        ),
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="Precision of the ONNX file written from a checkpoint: fp32, or "
            "fp16 (fp16 weights and convolutions, fp32 softmax/entropy/confidence "
            "head and fp32 inputs and outputs; checked against PyTorch fp32). A "
            "TensorRT engine runs its ONNX file's precision."
        ),
    ] = "fp32",
    fp16: Annotated[
        bool, typer.Option("--fp16", hidden=True, help="Removed: use --precision fp16 when exporting the ONNX file.")
    ] = False,
    batch: Annotated[str, typer.Option(help="Engine batch sizes MIN:OPT:MAX (windows are the model's ROI).")] = "1:4:8",
    workspace_gb: Annotated[float, typer.Option("--workspace-gb", help="TensorRT builder workspace limit, GiB.")] = 4.0,
    timing_cache: Annotated[
        Path | None,
        typer.Option(
            "--timing-cache",
            help="Timing cache file, loaded if "
            "present and saved after the build (default: one per "
            "TensorRT version and GPU under "
            "~/.cache/ceds-deploy/timing).",
        ),
    ] = None,
    fp32_head: Annotated[
        bool, typer.Option("--fp32-head", hidden=True, help="Removed: an fp16 export keeps the head in fp32.")
    ] = False,
    device: Annotated[str, typer.Option(help="GPU for the TensorRT build: cuda or cuda:N.")] = "cuda",
) -> None:
    """Export a checkpoint to a self-describing ONNX file, and/or build a TensorRT engine from one.

    Every file is checked before it is kept: ONNX Runtime against PyTorch fp32 (fp32 file: max |diff|
    of probabilities <= 1e-4; fp16 file: <= 5e-2 and argmax agreement >= 0.999), TensorRT against
    ONNX Runtime (Dice of the masks >= 0.99). Engines are strongly typed: they run the ONNX file's
    own precision.
    """
    from rich.console import Console

    from ceds_deploy.artifacts import read_spec

    console = Console(stderr=True, highlight=False)
    say = console.print
    kind, profile = _checked_request(
        source, out, weights, precision, tensorrt, batch, opset, fp16=fp16, fp32_head=fp32_head
    )
    from ceds_deploy.io.atomic import check_output_file

    for target in (out, tensorrt):
        if target is not None:
            check_output_file(target)  # a folder or an unwritable place is found before the export
    if tensorrt is not None:
        if kind == "onnx":
            read_spec(source)  # a corrupt or foreign file says so before the GPU check
        from ceds_deploy.backends.tensorrt_runtime import require_tensorrt

        require_tensorrt(device)  # fail in one line before a long ONNX export

    onnx_path = source
    if kind == "checkpoint":
        from ceds_deploy.export.onnx_export import export_checkpoint

        say(f"exporting the {weights} network of {source.name} (opset {opset}, {precision}) ...")
        result = export_checkpoint(source, out, weights=weights, opset=opset, precision=precision, log=say)
        ops = ", ".join(f"{op} {n}" for op, n in result.histogram.items())
        say(
            f"[green]wrote[/] {result.path} ({result.size_bytes / 1e6:.1f} MB, {sum(result.histogram.values())} "
            f"nodes: {ops}) in {sum(result.seconds.values()):.1f} s"
        )
        onnx_path = out or source  # a checkpoint always comes with --out (checked above)
    if tensorrt is not None:
        _build(
            onnx_path, tensorrt, profile, workspace_gb=workspace_gb, timing_cache=timing_cache, device=device, say=say
        )


def _checked_request(
    source: Path,
    out: Path | None,
    weights: str,
    precision: str,
    tensorrt: Path | None,
    batch: str,
    opset: int,
    *,
    fp16: bool,
    fp32_head: bool,
) -> tuple[str, BatchProfile]:
    """(the artifact kind of SOURCE, the engine batch profile), or a usage error (exit 2) naming the
    option that does not fit."""
    from ceds_deploy.artifacts import artifact_kind
    from ceds_deploy.checkpoint import WEIGHT_CHOICES
    from ceds_deploy.errors import ConfigError
    from ceds_deploy.export.engine_cache import BatchProfile
    from ceds_deploy.export.onnx_export import check_opset
    from ceds_deploy.export.precision import check_precision
    from ceds_deploy.export.tensorrt_build import refuse_fp16_flag

    if weights not in WEIGHT_CHOICES:
        raise typer.BadParameter(f"must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}", param_hint="--weights")
    if fp16 or fp32_head:
        try:
            refuse_fp16_flag()
        except ConfigError as err:
            raise typer.BadParameter(str(err), param_hint="--fp16" if fp16 else "--fp32-head") from None
    try:
        check_precision(precision)
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--precision") from None
    kind = artifact_kind(source)
    if kind == "engine":
        raise typer.BadParameter(
            f"{source} is already a TensorRT engine; give a checkpoint or an ONNX file", param_hint="SOURCE"
        )
    if kind == "checkpoint" and out is None:
        raise typer.BadParameter("exporting a checkpoint needs --out model.onnx", param_hint="--out")
    if kind == "onnx" and out is not None:
        raise typer.BadParameter(
            "SOURCE is already an ONNX file; --out is for checkpoints (use --tensorrt)", param_hint="--out"
        )
    if kind == "onnx" and precision != "fp32":
        raise typer.BadParameter(
            "--precision applies when exporting a checkpoint; an engine takes its ONNX file's "
            "precision (export the checkpoint again with --precision fp16)",
            param_hint="--precision",
        )
    if kind == "onnx" and tensorrt is None:
        raise typer.BadParameter(
            "SOURCE is an ONNX file: give --tensorrt model.engine to build an engine", param_hint="--tensorrt"
        )
    try:
        profile = BatchProfile.parse(batch)
        if kind == "checkpoint":
            check_opset(opset)
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--batch" if "batch" in str(err) else "--opset") from None
    return kind, profile


def _build(
    onnx_path: Path, engine: Path, profile, *, workspace_gb: float, timing_cache: Path | None, device: str, say
) -> None:
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends.tensorrt_runtime import require_tensorrt, runtime_info
    from ceds_deploy.export.engine_cache import default_timing_cache
    from ceds_deploy.export.tensorrt_build import BuildOptions, build_checked_engine

    runtime = runtime_info(require_tensorrt(device), device)
    options = BuildOptions(
        batch=profile, workspace_gb=workspace_gb, timing_cache=timing_cache or default_timing_cache(None, runtime)
    )
    say(
        f"building a strongly typed TensorRT engine with {runtime.describe()} (batch {profile}, "
        f"{read_spec(onnx_path).precision} as in {Path(onnx_path).name}) ..."
    )
    result = build_checked_engine(onnx_path, engine, options, device=device, log=say)
    say(
        f"[green]wrote[/] {engine} ({engine.stat().st_size / 1e6:.1f} MB, {result.precision}) and its sidecar; "
        f"timing cache {result.timing_cache}"
    )

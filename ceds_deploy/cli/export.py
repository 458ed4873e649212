"""`ceds export`: checkpoint -> validated ONNX file; ONNX file -> checked TensorRT engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def export(
    source: Annotated[Path, typer.Argument(help="A training checkpoint (.pt) to export to ONNX, or an ONNX file "
                                           "from `ceds export` to build a TensorRT engine from.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="ONNX file to write (SOURCE is a "
                                                "checkpoint).")] = None,
    weights: Annotated[str, typer.Option(help="Which network of the checkpoint: [bold]teacher[/] (the mean "
                                         "teacher) or student.")] = "teacher",
    opset: Annotated[int, typer.Option(help="ONNX opset. 17 parses on TensorRT 8.5 and later (JetPack 5 "
                                       "and 6); up to 24.")] = 17,
    tensorrt: Annotated[Path | None, typer.Option("--tensorrt", help="Build a TensorRT engine here (from "
                                                     "SOURCE, or from the ONNX file --out just wrote).")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Allow FP16 kernels (checked against ONNX Runtime; "
                                       "the confidence head falls back to FP32 if needed).")] = False,
    batch: Annotated[str, typer.Option(help="Engine batch sizes MIN:OPT:MAX (windows are the model's "
                                       "ROI).")] = "1:4:8",
    workspace_gb: Annotated[float, typer.Option("--workspace-gb", help="TensorRT builder workspace limit, "
                                                "GiB.")] = 4.0,
    timing_cache: Annotated[Path | None, typer.Option("--timing-cache", help="Timing cache file, loaded if "
                                                         "present and saved after the build (default: one per "
                                                         "TensorRT version and GPU under "
                                                         "~/.cache/ceds-deploy/timing).")] = None,
    fp32_head: Annotated[bool, typer.Option("--fp32-head", help="With --fp16, keep the entropy and "
                                            "confidence head in FP32 from the start.")] = False,
    device: Annotated[str, typer.Option(help="GPU for the TensorRT build: cuda or cuda:N.")] = "cuda",
) -> None:
    """Export a checkpoint to a self-describing ONNX file, and/or build a TensorRT engine from one.

    Every file is checked before it is kept: ONNX Runtime against PyTorch (fp32, max |diff| of
    probabilities <= 1e-4), TensorRT against ONNX Runtime (Dice of the masks >= 0.99).
    """
    from rich.console import Console

    from ceds_deploy.artifacts import artifact_kind, read_spec
    from ceds_deploy.checkpoint import WEIGHT_CHOICES
    from ceds_deploy.errors import ConfigError
    from ceds_deploy.export.engine_cache import BatchProfile
    from ceds_deploy.export.onnx_export import check_opset

    console = Console(stderr=True, highlight=False)
    say = console.print
    if weights not in WEIGHT_CHOICES:
        raise typer.BadParameter(f"must be one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}", param_hint="--weights")
    kind = artifact_kind(source)
    if kind == "engine":
        raise typer.BadParameter(f"{source} is already a TensorRT engine; give a checkpoint or an ONNX file",
                                 param_hint="SOURCE")
    if kind == "checkpoint" and out is None:
        raise typer.BadParameter("exporting a checkpoint needs --out model.onnx", param_hint="--out")
    if kind == "onnx" and out is not None:
        raise typer.BadParameter("SOURCE is already an ONNX file; --out is for checkpoints (use --tensorrt)",
                                 param_hint="--out")
    if kind == "onnx" and tensorrt is None:
        raise typer.BadParameter("SOURCE is an ONNX file: give --tensorrt model.engine to build an engine",
                                 param_hint="--tensorrt")
    try:
        profile = BatchProfile.parse(batch)
        if kind == "checkpoint":
            check_opset(opset)
    except ConfigError as err:
        raise typer.BadParameter(str(err), param_hint="--batch" if "batch" in str(err) else "--opset") from None
    if tensorrt is not None:
        if kind == "onnx":
            read_spec(source)  # a corrupt or foreign file says so before the GPU check
        from ceds_deploy.export.tensorrt_build import require_tensorrt

        require_tensorrt(device)  # fail in one line before a long ONNX export

    onnx_path = source
    if kind == "checkpoint":
        from ceds_deploy.export.onnx_export import export_checkpoint

        say(f"exporting the {weights} network of {source.name} (opset {opset}) ...")
        result = export_checkpoint(source, out, weights=weights, opset=opset, log=say)
        ops = ", ".join(f"{op} {n}" for op, n in result.histogram.items())
        say(f"[green]wrote[/] {result.path} ({result.size_bytes / 1e6:.1f} MB, {sum(result.histogram.values())} "
            f"nodes: {ops}) in {sum(result.seconds.values()):.1f} s")
        onnx_path = out
    if tensorrt is not None:
        _build(onnx_path, tensorrt, profile, fp16=fp16, fp32_head=fp32_head, workspace_gb=workspace_gb,
               timing_cache=timing_cache, device=device, say=say)


def _build(onnx_path: Path, engine: Path, profile, *, fp16: bool, fp32_head: bool, workspace_gb: float,
           timing_cache: Path | None, device: str, say) -> None:
    from ceds_deploy.export.engine_cache import default_timing_cache
    from ceds_deploy.export.tensorrt_build import BuildOptions, build_checked_engine, require_tensorrt, runtime_info

    runtime = runtime_info(require_tensorrt(device), device)
    options = BuildOptions(fp16=fp16, batch=profile, workspace_gb=workspace_gb, fp32_head=fp32_head,
                           timing_cache=timing_cache or default_timing_cache(None, runtime))
    say(f"building a TensorRT engine with {runtime.describe()} (batch {profile}, "
        f"{'fp16' if fp16 else 'fp32'}) ...")
    result = build_checked_engine(onnx_path, engine, options, device=device, log=say)
    say(f"[green]wrote[/] {engine} ({engine.stat().st_size / 1e6:.1f} MB) and its sidecar; "
        f"{result.fp32_layers} layers pinned to fp32; timing cache {result.timing_cache}")

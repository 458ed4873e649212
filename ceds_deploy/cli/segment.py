"""`ceds segment`: masks, confidence maps and a report for a folder (or one file) of scans."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ceds_deploy.cli.options import BackendOption, DeviceOption, ModelOption, check_device, parse_shard


def segment(
    input: Annotated[Path, typer.Argument(help="A folder of scans (NIfTI, NRRD, MHA/MHD, DICOM series "
                                          "folders) or one scan.")],
    output: Annotated[Path, typer.Argument(help="Folder for masks, confidence maps and report.csv/json.")],
    model: ModelOption,
    backend: BackendOption = "auto",
    device: DeviceOption = "cpu",
    overlap: Annotated[float, typer.Option(help="Window overlap in [0, 1); each step up multiplies the "
                                           "window count.")] = 0.25,
    blend: Annotated[str, typer.Option(help="How overlapping windows are averaged: constant (the CEDS "
                                       "validation's, MONAI's default) or gaussian (window centres count "
                                       "most, as nnU-Net).")] = "constant",
    batch_size: Annotated[Optional[int], typer.Option(help="Windows per backend call (default: on a "
                                                      "CPU up to 4 windows of 32^3 voxels, 1 of larger ones; "
                                                      "on a GPU the backend's).")] = None,
    tta: Annotated[bool, typer.Option("--tta", help="Average over the 8 mirrorings of the three axes "
                                      "(8x slower).")] = False,
    precision: Annotated[Optional[str], typer.Option(help="torch: fp32, bf16, or on CUDA fp16/tf32; "
                                                     "default fp32 on CPU and fp16 on CUDA. A .onnx or .engine model "
                                                     "runs its own precision (fp16 files come from `ceds export "
                                                     "--precision fp16`); tensorrt accepts only that value "
                                                     "here.")] = None,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="torch or tensorrt on CUDA: capture the "
                                             "fixed-shape call once and replay it as a CUDA graph.")] = False,
    save_probabilities: Annotated[bool, typer.Option("--save-probabilities",
                                                     help="Also write <case>_probabilities.nii.gz.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo cases whose outputs exist "
                                            "(default: skip them, so a stopped run resumes).")] = False,
    shard: Annotated[str, typer.Option(help="I/N: process only the I-th (0-based) of N deterministic "
                                       "parts of the sorted case list.")] = "0/1",
    confidence_threshold: Annotated[float, typer.Option(help="Tumour voxels below this confidence count "
                                                        "as uncertain in the report.")] = 0.5,
    preview: Annotated[bool, typer.Option("--preview", help="Write a PNG per case: three planes through "
                                          "the mass with the outline and the confidence map.")] = False,
    labels: Annotated[Optional[Path], typer.Option(help="With --preview: a folder of ground-truth labels "
                                                   "(same case names) to outline too.")] = None,
    skip_air: Annotated[bool, typer.Option(help="Do not compute windows that hold only air or lung.")] = True,
    window: Annotated[Optional[tuple[int, int, int]], typer.Option(help="Inference window X Y Z (multiples of "
                                                                  "16) larger than the training ROI: fewer, "
                                                                  "bigger windows; CBAM's global pooling sees "
                                                                  "more context, so check the accuracy.",
                                                                  show_default=False)] = None,
    largest_component: Annotated[bool, typer.Option("--largest-component", help="Keep only the largest "
                                                    "connected tumour region (for one lesion per scan).")] = False,
    io_workers: Annotated[Optional[int], typer.Option(min=1, help="Scans read and written at once (default: one "
                                                      "per 4 CPU cores, 1 to 4).")] = None,
) -> None:
    """Segment mediastinal tumours: a mask and a confidence map per scan, on the scan's own grid."""
    check_device(device)
    shard_pair = parse_shard(shard)
    from rich.console import Console

    from ceds_deploy.segment_run import run_segment

    try:
        from ceds_deploy.pipeline import SegmentOptions

        options = SegmentOptions(overlap=overlap, blend=blend, batch_size=batch_size, mirror=tta, save_probabilities=save_probabilities,
                                 overwrite=overwrite, shard=shard_pair, confidence_threshold=confidence_threshold,
                                 preview=preview, skip_air=skip_air, preview_labels=labels,
                                 window=window, io_workers=io_workers, largest_component=largest_component)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None
    failed = run_segment(input, output, model, backend=backend, device=device, options=options,
                         precision=precision, cuda_graph=cuda_graph, console=Console(stderr=True))
    if failed:
        raise typer.Exit(1)

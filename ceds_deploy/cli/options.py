"""Option types shared by several commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOption = Annotated[
    Path,
    typer.Option(
        "--model",
        "-m",
        help="Model artifact: a training checkpoint (.pt), an ONNX file from `ceds export`, or a TensorRT engine.",
    ),
]
DeviceOption = Annotated[str, typer.Option(help="Where to run: [bold]cpu[/], [bold]cuda[/] or cuda:N.")]
BackendOption = Annotated[
    str,
    typer.Option(
        help="auto, torch, onnxruntime or tensorrt. [bold]auto[/] picks the fastest installed one and says which."
    ),
]


def check_device(device: str) -> str:
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise typer.BadParameter(f"device must be cpu, cuda or cuda:N, got {device!r}", param_hint="--device")
    return device


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' (0-based I) -> (I, N); the range is checked by `SegmentOptions`."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise typer.BadParameter(
            f"shard must look like I/N (for example 0/4), got {text!r}", param_hint="--shard"
        ) from None
    return index, count

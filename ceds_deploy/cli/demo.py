"""`ceds demo`: the whole pipeline on synthetic phantoms, on any laptop, with pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes.")] = Path("ceds-demo"),
    minutes: Annotated[
        float | None,
        typer.Option(
            help="Optional cap on the training time. Training follows a fixed recipe; with a cap it may stop "
            "early, and then quality suffers and the result is not the tested recipe."
        ),
    ] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over instead of reusing complete stages.")] = False,
) -> None:
    """Make phantoms, train CEDS, export to ONNX, segment held-out scans, score and show them.

    Exits with code 1 when the model fails the quality gate (held-out mean Dice below 0.5, or a
    case where no tumour is found)."""
    from ceds_deploy.demo import run_demo

    result = run_demo(out, minutes=minutes, fresh=fresh)
    if not result["verdict"].passed:
        raise typer.Exit(code=1)

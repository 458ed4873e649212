"""`ceds demo`: the whole pipeline on synthetic phantoms, on any laptop, with pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    out: Annotated[Path, typer.Option(help="Folder for everything the demo makes.")] = Path("ceds-demo"),
    minutes: Annotated[float, typer.Option(help="Training budget in minutes (the demo measures this "
                                           "machine's speed and sets the iterations).")] = 5.0,
    fresh: Annotated[bool, typer.Option("--fresh", help="Start over instead of reusing complete stages.")] = False,
) -> None:
    """Make phantoms, train CEDS, export to ONNX, segment held-out scans, score and show them."""
    from ceds_deploy.demo import DemoSettings, run_demo

    run_demo(out, DemoSettings(minutes=minutes), fresh=fresh)

"""`ceds phantoms`: write a synthetic chest-CT cohort (Decathlon layout). Heavy imports stay
inside the function so importing this module is cheap."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def phantoms(
    out: Annotated[Path, typer.Argument(help="Dataset folder to write (created if missing).")],
    cases: Annotated[int, typer.Option("--cases", min=0, help="Training images in imagesTr/.")] = 20,
    labeled: Annotated[int, typer.Option("--labeled", min=0, help="How many of them get a label in labelsTr/.")] = 4,
    test: Annotated[int, typer.Option("--test", min=0, help="Held-out labeled cases in imagesTs/ and labelsTs/.")] = 8,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Random seed; case i of a seed never changes.")] = 0,
    size: Annotated[
        str, typer.Option("--size", help="small (<= 128x128x64, tests and CPU demos) or full (512x512, realistic).")
    ] = "small",
) -> None:
    """Generate synthetic chest CT scans with one mediastinal mass each."""
    import time

    from ceds_deploy.synthetic import SIZES

    if size not in SIZES:  # checked before anything is drawn or written
        raise typer.BadParameter(f"one of {', '.join(SIZES)}, got {size!r}", param_hint="--size")
    if labeled > cases:
        raise typer.BadParameter(f"at most --cases ({cases}), got {labeled}", param_hint="--labeled")

    from rich.console import Console

    from ceds_deploy.cli.display import CountDisplay
    from ceds_deploy.synthetic import make_cohort

    start = time.perf_counter()
    console = Console()
    progress = CountDisplay(console, "phantoms", total_event="cases", item_event="case")
    with progress:
        folder = make_cohort(out, cases=cases, labeled=labeled, test=test, seed=seed, size=size, progress=progress)
    console.print(
        f"[green]wrote[/] {folder}: {cases} training images ({labeled} labeled, "
        f"{cases - labeled} unlabeled), {test} test cases, size {size}, seed {seed} "
        f"in {time.perf_counter() - start:.1f} s",
        highlight=False,
    )

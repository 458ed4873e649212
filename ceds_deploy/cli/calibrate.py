"""`ceds calibrate`: fit a checkpoint's confidence calibration on labeled cases (what `ceds train` does
at the end of a run on its validation cases)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ceds_deploy.cli.options import check_device


def calibrate(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint (.pt) from ceds train or ceds demo.")],
    data_dir: Annotated[
        Path,
        typer.Argument(help="Dataset folder with labeled cases (dataset.json, or imagesTr/ + labelsTr/)."),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Write the calibrated checkpoint here instead of in place.", show_default=False
        ),
    ] = None,
    cases: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated case names to fit on (default: all labeled cases; "
            "for a training run, its split.json's validation cases).",
            show_default=False,
        ),
    ] = None,
    weights: Annotated[str, typer.Option(help="teacher or student: the network to calibrate.")] = "teacher",
    report_dir: Annotated[
        Path | None,
        typer.Option(
            help="Where calibration.json and reliability.png go (default: beside the checkpoint written).",
            show_default=False,
        ),
    ] = None,
    margin: Annotated[
        float, typer.Option(help="Voxels within this many mm of the predicted tumour count (and the tumour).")
    ] = 10.0,
    device: Annotated[str, typer.Option(help="cpu, cuda or cuda:N.")] = "cpu",
) -> None:
    """Fit the confidence map's calibration (isotonic, per predicted class) and store it in the model spec:
    ceds export carries it into ONNX and TensorRT, and ceds segment then reports an expected Dice."""
    check_device(device)
    if weights not in ("teacher", "student"):
        raise typer.BadParameter("teacher or student", param_hint="--weights")
    if not margin > 0:
        raise typer.BadParameter("must be > 0 mm", param_hint="--margin")
    from ceds_deploy.io.atomic import check_output_file
    from ceds_deploy.training.calibrate import calibrate_checkpoint, pick_cases

    check_output_file(out or checkpoint, ".pt" if out else None)  # before segmenting every case
    names = [n.strip() for n in cases.split(",") if n.strip()] if cases else None
    chosen = pick_cases(data_dir, names)
    target = out or checkpoint
    record = calibrate_checkpoint(
        checkpoint,
        chosen,
        report_dir or target.parent,
        weights=weights,
        output=out,
        device=device,
        margin_mm=margin,
        on_case=lambda name: typer.echo(f"segmented {name}", err=True),
    )
    if "note" in record:
        typer.echo(f"{checkpoint}: {record['note']}")
        raise typer.Exit(1)
    typer.echo(
        f"calibrated {target} ({weights}) on {len(chosen)} cases: ECE {record['ece_before_on_fit_cases']:.3f} -> "
        f"{record['ece_after_on_fit_cases']:.3f} on those cases; diagram: "
        f"{(report_dir or target.parent) / 'reliability.png'}"
    )

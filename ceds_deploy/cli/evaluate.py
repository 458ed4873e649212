"""`ceds evaluate`: Dice, HD95 and volume difference of predicted masks against ground-truth labels."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer


def _num(value: float, digits: int = 3, suffix: str = "") -> str:
    if math.isnan(value):
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}{suffix}"


def _signed(value: float, digits: int = 2, suffix: str = "") -> str:
    if math.isnan(value) or math.isinf(value):
        return _num(value)
    return f"{value:+.{digits}f}{suffix}"


def evaluate(
    pred_dir: Annotated[
        Path,
        typer.Argument(
            metavar="PRED_DIR",
            help="Folder of predicted masks <case>.nii.gz (the OUTPUT of "
            "`ceds segment`; confidence maps and reports there are ignored).",
        ),
    ],
    label_dir: Annotated[
        Path,
        typer.Argument(
            metavar="LABEL_DIR",
            help="Folder of ground-truth masks <case>.<nii.gz|nii|nrrd|mha|...>, "
            "values 0/1, on the same grids as the predictions.",
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Where to write the CSV (default: PRED_DIR/evaluation.csv).")
    ] = None,
) -> None:
    """Score predicted masks against labels: Dice, 95% Hausdorff distance (mm) and volume difference (mL)
    per case and their means, as a table and a CSV.

    Both masks empty: Dice 1, HD95 0. Exactly one empty: Dice 0, HD95 [bold]inf[/] (left out of the mean).
    Exit code 1 when a case cannot be scored or a label has no prediction (the scores are still written).
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ceds_deploy.io.atomic import check_output_file
    from ceds_deploy.qa.evaluate import EVALUATION_CSV, evaluate_folder

    if pred_dir.is_dir() or out is not None:  # a missing folder is evaluate_folder's to name
        check_output_file(out or pred_dir / EVALUATION_CSV)
    report = evaluate_folder(pred_dir, label_dir, out)
    console = Console()
    table = Table(title=escape(f"Evaluation of {pred_dir} against {label_dir}"), title_justify="left")
    table.add_column("case", overflow="fold")
    for name in ("Dice", "HD95 mm", "pred mL", "true mL", "diff mL", "diff %"):
        table.add_column(name, justify="right")
    for row in report.rows:
        if row.status != "ok":
            continue
        hd = _num(row.hd95_mm, 2) if not math.isinf(row.hd95_mm) else "[yellow]inf (one mask empty)[/]"
        table.add_row(
            escape(row.case),
            _num(row.dice, 4),
            hd,
            _num(row.pred_ml, 2),
            _num(row.true_ml, 2),
            _signed(row.volume_diff_ml),
            _signed(row.rel_volume_diff_pct, 1),
        )
    m, n = report.means, report.counts
    hd_note = "" if n["hd95_mm"] == n["dice"] else f" ({n['hd95_mm']} of {n['dice']})"
    table.add_section()
    table.add_row(
        f"[bold]mean of {len(report.ok)}[/]",
        _num(m["dice"], 4),
        _num(m["hd95_mm"], 2) + hd_note,
        _num(m["pred_ml"], 2),
        _num(m["true_ml"], 2),
        _signed(m["volume_diff_ml"]) + f" (|{_num(m['abs_volume_diff_ml'], 2)}|)",
        _signed(m["rel_volume_diff_pct"], 1),
    )
    console.print(table)
    if n["hd95_mm"] < n["dice"]:
        console.print(
            f"[yellow]HD95 is undefined (inf) for {n['dice'] - n['hd95_mm']} case(s) where exactly one "
            "mask is empty; the HD95 mean leaves them out.[/]"
        )
    for path in report.missing_labels:
        console.print(f"[yellow]no label for {escape(str(path))}[/]", highlight=False)
    console.print(f"Wrote {escape(str(report.csv_path))}", highlight=False, soft_wrap=True)
    errors = Console(stderr=True)
    if report.unmatched_labels:  # a case left out would flatter the mean: a failure, as in nnU-Net's evaluation
        errors.print(
            f"[bold red]error:[/] {len(report.unmatched_labels)} label(s) have no prediction, so the means "
            f"leave them out: "
            + escape(", ".join(p.name for p in report.unmatched_labels[:10]))
            + (", ..." if len(report.unmatched_labels) > 10 else ""),
            highlight=False,
            soft_wrap=True,
        )
    for row in report.errors:
        errors.print(f"[bold red]error:[/] {escape(row.message)}", highlight=False, soft_wrap=True)
    if report.errors or report.unmatched_labels:
        raise typer.Exit(1)

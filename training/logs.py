"""What a run writes besides checkpoints: metrics.csv, curves.png, config.yaml, split.json.
Every file is written atomically and rewritten whole from the run's history, so a resumed run's
logs hold exactly the epochs of its last.pt."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ceds_deploy.io import write_atomic_bytes, write_atomic_text

METRICS_CSV, CURVES_PNG, CONFIG_YAML, SPLIT_JSON = "metrics.csv", "curves.png", "config.yaml", "split.json"
COLUMNS = (
    "epoch",
    "step",
    "phases",
    "lr_segmentation",
    "lr_confidence",
    "precision",
    "loss_seg",
    "loss_conf",
    "loss_consistency",
    "consistency_weight",
    "loss_total",
    "dice_student",
    "dice_teacher",
    "auroc_student",
    "auroc_teacher",
    "seconds",
    "validation_seconds",
)


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    """Rewrite `metrics.csv` in `run_dir` from `history`: one row per epoch, the `COLUMNS` in order,
    missing and nan values as empty cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in history:
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    write_atomic_text(run_dir / METRICS_CSV, buffer.getvalue())


def write_run_files(run_dir: Path, config, split) -> None:
    """Write the run's `config` as `config.yaml` and its case `split` as `split.json` into `run_dir`."""
    write_atomic_text(run_dir / CONFIG_YAML, config.to_yaml())
    write_atomic_text(run_dir / SPLIT_JSON, json.dumps(split.to_dict(), indent=2) + "\n")


def _series(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(row["epoch"], row[key]) for row in history if row.get(key) is not None and not math.isnan(row[key])]
    return [p[0] for p in points], [p[1] for p in points]


def draw_curves(run_dir: Path, history: list[dict], title: str) -> None:
    """Losses, validation Dice of student and teacher, consistency weight; one PNG, Agg backend
    (no display, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    losses, dices, weights = fig.subplots(1, 3)
    for key, label in (
        ("loss_seg", "segmentation (DiceCE)"),
        ("loss_conf", "confidence CE"),
        ("loss_consistency", "consistency"),
        ("loss_total", "total"),
    ):
        x, y = _series(history, key)
        if x:
            losses.plot(x, y, label=label)
    losses.set(title="training losses (epoch means)", xlabel="epoch")
    for key, label in (("dice_student", "student"), ("dice_teacher", "teacher")):
        x, y = _series(history, key)
        if x:
            dices.plot(x, y, marker="o", markersize=3, label=label)
    dices.set(title="validation Dice", xlabel="epoch", ylim=(0, 1))
    x, y = _series(history, "consistency_weight")
    if x:
        weights.plot(x, y, color="tab:purple")
    weights.set(title="consistency weight (ramp-up)", xlabel="epoch", ylim=(0, 1.05))
    for ax in (losses, dices):
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_atomic_bytes(run_dir / CURVES_PNG, buffer.getvalue())

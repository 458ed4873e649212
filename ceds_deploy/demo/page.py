"""The demo's final summary, printed and as a self-contained `index.html` (relative image links,
no server needed). A model that fails the quality gate gets a red banner at the top of both."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ceds_deploy.io import write_atomic_text

FAILURE_BANNER_ID = "quality-failure"
CAP_NOTICE_ID = "training-capped"


def final_rows(out: Path, evaluation) -> list[dict]:
    """One row per held-out case: Dice (from evaluate), volume, confidence and review flag (from
    the segment report)."""
    report = json.loads((out / "segment" / "report.json").read_text(encoding="utf-8"))
    by_case = {r["case"]: r for r in report["cases"] if r["status"] == "ok"}
    dice = {r.case: r.dice for r in evaluation.rows if r.status == "ok"}
    rows = []
    for case, r in sorted(by_case.items()):
        rows.append(
            {
                "case": case,
                "dice": dice.get(case, math.nan),
                "tumour_ml": r["tumour_ml"],
                "mean_confidence": r["mean_confidence"],
                "expected_dice": r.get("expected_dice"),
                "needs_review": r["needs_review"],
                "review_reason": r["review_reason"],
                "preview": f"segment/{case}_preview.png",
            }
        )
    return rows


def mean_dice(rows: list[dict]) -> float:
    """Mean of the rows' Dice values that are not None or nan; nan when none is left."""
    values = [r["dice"] for r in rows if r["dice"] is not None and not math.isnan(r["dice"])]
    return sum(values) / len(values) if values else math.nan


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _folder_note(out: Path) -> str:
    from ceds_deploy.demo.recipe import MODEL_CHECKPOINT
    from ceds_deploy.demo.verdict import folder_megabytes

    total = folder_megabytes(out)
    checkpoints = folder_megabytes(out / "run" / "checkpoints")
    model = out / MODEL_CHECKPOINT
    model_mb = model.stat().st_size / 1e6 if model.exists() else 0.0
    return (
        f"{out} holds {total:.0f} MB, of which {checkpoints:.0f} MB are the training checkpoints in "
        f"run/checkpoints (needed only to resume or fine-tune; delete them freely): "
        f"{MODEL_CHECKPOINT} ({model_mb:.1f} MB) and model.onnx are all that export and segment need"
    )


# ---------------------------------------------------------------- terminal


def print_final_summary(
    console, rows: list[dict], stages: list[tuple[str, float, str]], out: Path, index: Path, verdict
) -> None:
    """The failure banner (if any) first, then the per-case and stage tables, then where things are."""
    from rich.panel import Panel
    from rich.table import Table

    if not verdict.passed:
        lines = ["[bold]The demo's model failed the quality gate; do not trust these masks.[/]"]
        lines += [f"- {p}" for p in verdict.problems]
        lines.append("Likely cause" + ("s:" if len(verdict.causes) > 1 else ":"))
        lines += [f"- {c}" for c in verdict.causes]
        lines.append(f"Retry: [bold]{verdict.retry}[/]")
        console.print(Panel("\n".join(lines), title="DEMO FAILED", border_style="bold red", style="red"))
    if verdict.capped:
        console.print(f"[yellow]{verdict.capped}[/]")
    table = Table(title="CEDS demo: held-out phantoms (teacher, ONNX Runtime)")
    table.add_column("case")
    for column in ("Dice", "expected Dice", "tumour mL", "mean confidence"):
        table.add_column(column, justify="right")
    table.add_column("needs review")
    for r in rows:
        review = ("[yellow]yes[/] " + r["review_reason"]) if r["needs_review"] else "no"
        table.add_row(
            r["case"],
            _fmt(r["dice"]),
            _fmt(r.get("expected_dice")),
            _fmt(r["tumour_ml"], 1),
            _fmt(r["mean_confidence"]),
            review,
        )
    table.add_row("[bold]mean[/]", f"[bold]{_fmt(mean_dice(rows))}[/]", "", "", "", "")
    console.print(table)
    timing = Table(title="stages")
    timing.add_column("stage")
    timing.add_column("seconds", justify="right")
    timing.add_column("what")
    for name, seconds, note in stages:
        timing.add_row(name, f"{seconds:.1f}", note)
    timing.add_row("[bold]total[/]", f"[bold]{sum(s for _, s, _ in stages):.1f}[/]", "")
    console.print(timing)
    console.print(
        f"everything is in [bold]{out}[/]: data/ (phantoms), run/ (checkpoints, metrics.csv, "
        f"curves.png), model.pt (inference-only checkpoint), model.onnx, segment/ (masks, "
        f"confidence maps, previews, report.csv, evaluation.csv)"
    )
    console.print(_folder_note(out))
    if verdict.passed:
        console.print(
            f"[green]quality gate passed[/]: held-out mean Dice {_fmt(mean_dice(rows))} "
            f">= {_min_dice()} and a tumour found in every case"
        )
    console.print(f"look at the pictures: [bold]xdg-open {index}[/]  (or open it in any browser)")


def _min_dice() -> float:
    from ceds_deploy.demo.recipe import MIN_MEAN_DICE

    return MIN_MEAN_DICE


# ---------------------------------------------------------------- index.html

STYLE = """
body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}
img{max-width:100%}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:4px 10px;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{padding:0.8em 1.2em;margin:0 0 1.5em;border-radius:6px}
.banner h2{margin:0 0 0.4em}
.fail{background:#fde8e8;border:3px solid #c00;color:#600}
.fail h2{color:#c00}
.warn{background:#fff6d6;border:2px solid #d9a400;color:#5a4500}
.pass{background:#e8f6ea;border:1px solid #2a8a3a;color:#124a1c}
code{background:#f2f2f2;padding:1px 4px}
"""


def _cell(value: str, numeric: bool = False) -> str:
    return f"<td class='num'>{value}</td>" if numeric else f"<td>{value}</td>"


def _header(names: list[str], numeric: set[str]) -> str:
    return "<tr>" + "".join(f"<th class='num'>{n}</th>" if n in numeric else f"<th>{n}</th>" for n in names) + "</tr>"


def _failure_banner(verdict) -> str:
    esc = html.escape
    problems = "".join(f"<li>{esc(p)}</li>" for p in verdict.problems)
    causes = "".join(f"<li>{esc(c)}</li>" for c in verdict.causes)
    return (
        f"<div id='{FAILURE_BANNER_ID}' class='banner fail' role='alert'>"
        f"<h2>Demo failed: the model is not good enough</h2>"
        f"<p>Do not trust these masks.</p><ul>{problems}</ul>"
        f"<p><b>Likely cause:</b></p><ul>{causes}</ul>"
        f"<p><b>Retry:</b> <code>{esc(verdict.retry)}</code></p></div>"
    )


def write_index(out: Path, rows: list[dict], stages: list[tuple[str, float, str]], verdict) -> Path:
    """`out/index.html`: banner, per-case table, stages, training curves and one preview per case."""
    esc = html.escape
    body = []
    if not verdict.passed:
        body.append(_failure_banner(verdict))
    body.append("<h1>CEDS demo</h1>")
    if verdict.capped:
        body.append(f"<div id='{CAP_NOTICE_ID}' class='banner warn'>{esc(verdict.capped)}</div>")
    if verdict.passed:
        body.append(
            f"<p class='banner pass'>Quality gate passed: held-out mean Dice "
            f"<b>{_fmt(mean_dice(rows))}</b> (at least {_min_dice()}) and a tumour found in every case.</p>"
        )
    else:
        body.append(f"<p>Mean Dice on the held-out phantoms: <b>{_fmt(mean_dice(rows))}</b></p>")
    numeric = {"Dice", "expected Dice", "tumour mL", "mean confidence"}
    columns = ["case", "Dice", "expected Dice", "tumour mL", "mean confidence", "needs review"]
    body.append("<table>" + _header(columns, numeric))
    for r in rows:
        review = f"yes: {esc(r['review_reason'])}" if r["needs_review"] else "no"
        body.append(
            "<tr>"
            + _cell(f"<a href='#{esc(r['case'])}'>{esc(r['case'])}</a>")
            + _cell(_fmt(r["dice"]), True)
            + _cell(_fmt(r.get("expected_dice")), True)
            + _cell(_fmt(r["tumour_ml"], 1), True)
            + _cell(_fmt(r["mean_confidence"]), True)
            + _cell(review)
            + "</tr>"
        )
    body.append(
        "</table><p>The segmentation run's own report: <a href='segment/report.html'>segment/report.html"
        "</a> (every case, sortable, with its timings).</p>"
    )
    body.append("<h2>Stages</h2><table>" + _header(["stage", "seconds", "what"], {"seconds"}))
    body += ["<tr>" + _cell(esc(n)) + _cell(f"{s:.1f}", True) + _cell(esc(note)) + "</tr>" for n, s, note in stages]
    body.append("</table><h2>Training curves</h2><img src='run/curves.png' alt='training curves'>")
    body.append(
        "<h2>Held-out cases</h2><p>Red outline: prediction; green outline: ground truth; heat: low "
        "confidence, shown near the outlines only.</p>"
    )
    for r in rows:
        body.append(
            f"<h3 id='{esc(r['case'])}'>{esc(r['case'])} (Dice {_fmt(r['dice'])})</h3>"
            f"<img src='{esc(r['preview'])}' alt='preview of {esc(r['case'])}'>"
        )
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>CEDS demo</title><style>"
        + STYLE
        + "</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    path = out / "index.html"
    write_atomic_text(path, page)
    return path

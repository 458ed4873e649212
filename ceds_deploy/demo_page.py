"""The demo's final table, printed and as a self-contained `index.html` (relative image links,
no server needed)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from ceds_deploy.io import write_atomic_text


def final_rows(out: Path, evaluation) -> list[dict]:
    """One row per held-out case: Dice (from evaluate), volume, confidence and review flag (from
    the segment report)."""
    report = json.loads((out / "segment" / "report.json").read_text())
    by_case = {r["case"]: r for r in report["cases"] if r["status"] == "ok"}
    dice = {r.case: r.dice for r in evaluation.rows if r.status == "ok"}
    rows = []
    for case, r in sorted(by_case.items()):
        rows.append({"case": case, "dice": dice.get(case, math.nan), "tumour_ml": r["tumour_ml"],
                     "mean_confidence": r["mean_confidence"], "needs_review": r["needs_review"],
                     "review_reason": r["review_reason"], "preview": f"segment/{case}_preview.png"})
    return rows


def mean_dice(rows: list[dict]) -> float:
    values = [r["dice"] for r in rows if r["dice"] is not None and not math.isnan(r["dice"])]
    return sum(values) / len(values) if values else math.nan


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_final_table(console, rows: list[dict], stages: list[tuple[str, float, str]], out: Path,
                      index: Path) -> None:
    from rich.table import Table

    table = Table(title="CEDS demo: held-out phantoms (teacher, ONNX Runtime)")
    for column in ("case", "Dice", "tumour mL", "mean confidence", "needs review"):
        table.add_column(column)
    for r in rows:
        review = ("[yellow]yes[/] " + r["review_reason"]) if r["needs_review"] else "no"
        table.add_row(r["case"], _fmt(r["dice"]), _fmt(r["tumour_ml"], 1), _fmt(r["mean_confidence"]), review)
    table.add_row("[bold]mean[/]", f"[bold]{_fmt(mean_dice(rows))}[/]", "", "", "")
    console.print(table)
    timing = Table(title="stages")
    timing.add_column("stage")
    timing.add_column("seconds")
    for name, seconds, _ in stages:
        timing.add_row(name, f"{seconds:.1f}")
    timing.add_row("[bold]total[/]", f"[bold]{sum(s for _, s, _ in stages):.1f}[/]")
    console.print(timing)
    console.print(f"everything is in [bold]{out}[/]: data/ (phantoms), run/ (checkpoints, metrics.csv, "
                  f"curves.png), model.onnx, segment/ (masks, confidence maps, previews, report.csv, "
                  f"evaluation.csv)")
    console.print(f"look at the pictures: [bold]xdg-open {index}[/]  (or open it in any browser)")


def write_index(out: Path, rows: list[dict], stages: list[tuple[str, float, str]]) -> Path:
    esc = html.escape
    body = [f"<h1>CEDS demo</h1><p>Mean Dice on the held-out phantoms: <b>{_fmt(mean_dice(rows))}</b></p>",
            "<table><tr><th>case</th><th>Dice</th><th>tumour mL</th><th>mean confidence</th>"
            "<th>needs review</th></tr>"]
    for r in rows:
        review = f"yes: {esc(r['review_reason'])}" if r["needs_review"] else "no"
        body.append(f"<tr><td><a href='#{esc(r['case'])}'>{esc(r['case'])}</a></td><td>{_fmt(r['dice'])}</td>"
                    f"<td>{_fmt(r['tumour_ml'], 1)}</td><td>{_fmt(r['mean_confidence'])}</td><td>{review}</td></tr>")
    body.append("</table><h2>Stages</h2><table><tr><th>stage</th><th>seconds</th><th>what</th></tr>")
    body += [f"<tr><td>{esc(n)}</td><td>{s:.1f}</td><td>{esc(note)}</td></tr>" for n, s, note in stages]
    body.append("</table><h2>Training curves</h2><img src='run/curves.png' alt='training curves'>")
    body.append("<h2>Held-out cases</h2><p>Red: predicted outline; green: ground truth; heat: low confidence.</p>")
    for r in rows:
        body.append(f"<h3 id='{esc(r['case'])}'>{esc(r['case'])} (Dice {_fmt(r['dice'])})</h3>"
                    f"<img src='{esc(r['preview'])}' alt='preview of {esc(r['case'])}'>")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>CEDS demo</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1400px} img{max-width:100%} "
            "table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:4px 10px;text-align:right}"
            "</style></head><body>" + "\n".join(body) + "</body></html>\n")
    path = out / "index.html"
    write_atomic_text(path, page)
    return path

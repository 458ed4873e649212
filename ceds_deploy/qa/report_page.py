"""The run report as a static page: `report.html` beside report.csv and report.json.

At the top: the counts, the failures with their reason (red), the run's options and timings. Then
one table row per case with its preview thumbnail (``<case>_preview.png`` in the same folder,
relative link, lazy-loaded), status colours, and columns sortable by a click on their header (a
small inline script; no external resources, no server: the folder can be zipped, copied or opened
from a file share). ``report.html#sort=mean_confidence`` opens the page sorted by a column
(``#sort=tumour_ml:desc`` for descending).

The page reads only the report document (`inference.report.write_report`'s JSON: ``run``,
``counts``, ``needs_review``, ``cases``) and tolerates any of its fields missing.
"""

from __future__ import annotations

import html
import json
import logging
import math
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ceds_deploy.errors import OutputError
from ceds_deploy.io import write_atomic_text

log = logging.getLogger(__name__)

REPORT_PAGE = "report.html"
PREVIEW_SUFFIX = "_preview.png"  # inference.outputs.PREVIEW_SUFFIX (qa sits below inference)
STAGES = ("read", "preprocess", "infer", "restore", "write", "review")
# (key, header, kind): kind "num" sorts numerically (missing values last), "text" alphabetically.
COLUMNS = (
    ("case", "case", "text"),
    ("status", "status", "num"),
    ("needs_review", "needs review", "num"),
    ("expected_dice", "expected Dice", "num"),
    ("tumour_ml", "tumour mL", "num"),
    ("mean_confidence", "mean confidence", "num"),
    ("low_confidence_fraction", "low-confidence fraction", "num"),
    ("seconds", "seconds", "num"),
)
STATUS_ORDER = {"failed": 0, "ok": 1, "skipped": 2}
RUN_FIELDS = (
    ("model", "model"),
    ("backend", "backend"),
    ("backend_choice", "why this backend"),
    ("device", "device"),
    ("input", "input"),
    ("output", "output"),
    ("batch_size", "batch size"),
    ("io_workers", "I/O workers"),
)

esc = html.escape


def _dict(value: Any) -> dict[str, Any]:
    """`value` when it is a dict, else an empty one (fields of the report may be missing or odd)."""
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> float | None:
    """A finite float, or None for missing, empty, NaN or non-numeric values."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _fmt(value: Any, digits: int) -> str:
    number = _number(value)
    return "–" if number is None else f"{number:.{digits}f}"


def _truthy(value: Any) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def _case_seconds(row: dict[str, Any]) -> float | None:
    """The case's time over all stages; None when none was recorded (all missing or zero)."""
    values = [_number(row.get(f"{stage}_s")) for stage in STAGES]
    total = sum(v for v in values if v is not None)
    return total if total > 0 else None


def _summary(document: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    counts = _dict(document.get("counts"))
    count = {s: counts.get(s, sum(c.get("status") == s for c in cases)) for s in ("ok", "failed", "skipped")}
    review = document.get("needs_review")
    n_review = len(review) if isinstance(review, list) else sum(_truthy(c.get("needs_review")) for c in cases)
    parts = [
        f"<span class='pill ok'>{esc(str(count['ok']))} segmented</span>",
        f"<span class='pill failed'>{esc(str(count['failed']))} failed</span>",
        f"<span class='pill skipped'>{esc(str(count['skipped']))} skipped</span>",
        f"<span class='pill review'>{n_review} need review</span>",
    ]
    run = _dict(document.get("run"))
    banner = ""
    if _truthy(run.get("interrupted")):
        banner = "<p class='alert'>The run was interrupted: cases after the interruption are missing.</p>"
    return f"<p class='summary'>{' '.join(parts)}</p>{banner}"


def _failures(cases: list[dict[str, Any]]) -> str:
    failed = [c for c in cases if c.get("status") == "failed"]
    if not failed:
        return ""
    items = "".join(
        f"<li><a href='#case-{esc(str(c.get('case', '')))}'><b>{esc(str(c.get('case', '?')))}</b></a>: "
        f"{esc(str(c.get('error') or 'no reason recorded'))}</li>"
        for c in failed
    )
    return f"<section id='failures' class='failures'><h2>{len(failed)} failed</h2><ul>{items}</ul></section>"


def _table(pairs: list[tuple[str, str]], css: str) -> str:
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in pairs)
    return f"<table class='{css}'>{rows}</table>" if rows else "<p class='muted'>not recorded</p>"


def _text(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return "–" if value is None or value == "" else str(value)


def _run_section(run: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    """The run's identity, options and timings (stage totals over the cases, and any `*_s` or
    `seconds` values the run recorded)."""
    identity = [(label, _text(run[key])) for key, label in RUN_FIELDS if key in run]
    options = _dict(run.get("options"))
    option_pairs = [(str(k), _text(v)) for k, v in sorted(options.items())]
    totals, stage_sums = [], []
    for stage in STAGES:
        values = [v for v in (_number(c.get(f"{stage}_s")) for c in cases) if v is not None]
        if values:
            stage_sums.append(sum(values))
            totals.append((f"{stage} (all cases)", f"{stage_sums[-1]:.2f} s"))
    if stage_sums:
        totals.append(("total of the stages", f"{sum(stage_sums):.2f} s"))
    for key, value in sorted(run.items()):
        if (key.endswith("_s") or key in ("seconds", "elapsed", "wall_seconds")) and _number(value) is not None:
            totals.append((key, f"{_number(value):.2f} s"))
    spec = run.get("model_spec")
    spec_html = ""
    if isinstance(spec, dict) and spec:
        pairs = [(str(k), _text(v)) for k, v in sorted(spec.items())]
        spec_html = f"<details><summary>model spec</summary>{_table(pairs, 'kv')}</details>"
    return (
        "<section class='run'><div><h2>Run</h2>" + _table(identity, "kv") + spec_html + "</div>"
        "<div><h2>Options</h2>" + _table(option_pairs, "kv") + "</div>"
        "<div><h2>Timings</h2>" + _table(totals, "kv") + "</div></section>"
    )


def _thumbnail(output: Path, case: str) -> str:
    name = f"{case}{PREVIEW_SUFFIX}"
    if not case or not (output / name).is_file():
        return "<span class='muted'>no preview</span>"
    href = esc(quote(name))
    return f"<a href='{href}'><img src='{href}' loading='lazy' alt='preview of {esc(case)}' class='thumb'></a>"


def _sort_value(key: str, row: dict[str, Any]) -> str:
    if key == "status":
        return str(STATUS_ORDER.get(str(row.get("status")), 3))
    if key == "needs_review":
        return "1" if _truthy(row.get("needs_review")) else "0"
    if key == "seconds":
        value = _case_seconds(row)
    elif key == "case":
        return str(row.get("case", ""))
    else:
        value = _number(row.get(key))
    return "" if value is None else repr(value)


def _case_row(output: Path, row: dict[str, Any]) -> str:
    case, status = str(row.get("case", "")), str(row.get("status", "unknown"))
    review = _truthy(row.get("needs_review")) and status == "ok"
    css = f"status-{esc(status)}" + (" review" if review else "")
    note = row.get("error") if status != "ok" else row.get("review_reason")
    cells = {
        "case": f"<b>{esc(case or '?')}</b>",
        "status": f"<span class='badge {esc(status)}'>{esc(status)}</span>",
        "needs_review": ("<span class='badge review'>yes</span>" if review else "no") if status == "ok" else "–",
        "expected_dice": _fmt(row.get("expected_dice"), 2),
        "tumour_ml": _fmt(row.get("tumour_ml"), 1),
        "mean_confidence": _fmt(row.get("mean_confidence"), 3),
        "low_confidence_fraction": _fmt(row.get("low_confidence_fraction"), 3),
        "seconds": _fmt(_case_seconds(row), 2),
    }
    tds = "".join(f"<td data-sort='{esc(_sort_value(k, row))}'>{cells[k]}</td>" for k, _, _ in COLUMNS)
    return (
        f"<tr id='case-{esc(case)}' class='{css}'><td>{_thumbnail(output, case)}</td>{tds}"
        f"<td class='note'>{esc(str(note or ''))}</td></tr>"
    )


def _cases_table(output: Path, cases: list[dict[str, Any]]) -> str:
    """Failed first, then those needing review, then the rest; by case name within each."""
    order = sorted(
        cases,
        key=lambda c: (
            STATUS_ORDER.get(str(c.get("status")), 3),
            not _truthy(c.get("needs_review")),
            str(c.get("case", "")),
        ),
    )
    headers = "".join(
        f"<th data-key='{k}' data-kind='{kind}'><button type='button'>{esc(label)}</button></th>"
        for k, label, kind in COLUMNS
    )
    body = "".join(_case_row(output, c) for c in order) or "<tr><td colspan='9'>no cases</td></tr>"
    return (
        "<section><h2>Cases</h2><p class='muted'>Click a column header to sort; click again to reverse.</p>"
        f"<table id='cases'><thead><tr><th>preview</th>{headers}<th>reason</th></tr></thead>"
        f"<tbody>{body}</tbody></table></section>"
    )


def render_report_page(output_folder: Path | str, report_json: dict[str, Any]) -> str:
    """The HTML of the report page for the run in `output_folder` (used to find the previews)."""
    output = Path(output_folder)
    document = report_json if isinstance(report_json, dict) else {}
    cases = [c for c in document.get("cases") or [] if isinstance(c, dict)]
    run = _dict(document.get("run"))
    title = f"CEDS segmentation report: {output.name or output}"
    body = (
        f"<h1>{esc(title)}</h1>"
        + _summary(document, cases)
        + _failures(cases)
        + _run_section(run, cases)
        + _cases_table(output, cases)
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body>{body}<script>{_SCRIPT}</script></body></html>"
    )


def write_report_page(output_folder: Path | str, report_json: dict[str, Any]) -> Path:
    """Write ``report.html`` into `output_folder` (atomically) from the report document
    `report_json` (the content of report.json); returns its path.

    Raises `OutputError` when the file cannot be written."""
    path = Path(output_folder) / REPORT_PAGE
    try:
        write_atomic_text(path, render_report_page(output_folder, report_json))
    except OSError as err:
        raise OutputError(f"{path}: cannot be written: {err.strerror or err}") from None
    log.debug("report page: %s", path)
    return path


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 8px}h2{font-size:16px;margin:16px 0 6px}
.summary .pill{display:inline-block;padding:3px 10px;border-radius:12px;margin-right:6px;font-weight:600}
.pill.ok{background:#dff3e1;color:#1b5e20}.pill.failed{background:#fde0e0;color:#b71c1c}
.pill.skipped{background:#eceff1;color:#455a64}.pill.review{background:#fff3cd;color:#7a5a00}
.alert{background:#fff3cd;border:1px solid #e0b000;padding:8px;border-radius:4px}
.failures{background:#fdecea;border:2px solid #d32f2f;color:#b71c1c;padding:4px 16px;border-radius:6px}
.failures a{color:#b71c1c}
.run{display:flex;gap:24px;flex-wrap:wrap}.run>div{flex:1 1 300px}
table.kv{border-collapse:collapse}table.kv th{text-align:left;font-weight:500;color:#555;padding:1px 12px 1px 0}
table.kv td{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
#cases{border-collapse:collapse;width:100%;background:#fff}
#cases th,#cases td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
#cases th button{font:inherit;font-weight:600;border:0;background:none;cursor:pointer;padding:0}
#cases th[aria-sort=ascending] button::after{content:" \\25B2"}
#cases th[aria-sort=descending] button::after{content:" \\25BC"}
tr.status-failed{background:#fdecea}tr.status-skipped{background:#f1f3f4;color:#666}
tr.review{background:#fff8e1}
.badge{padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.badge.ok{background:#c8e6c9;color:#1b5e20}.badge.failed{background:#d32f2f;color:#fff}
.badge.skipped{background:#cfd8dc;color:#37474f}.badge.review{background:#ffca28;color:#4e3b00}
img.thumb{height:120px;display:block;border-radius:3px;background:#262626}
.muted{color:#888}.note{max-width:420px}
"""

# Sorting on header click (missing numbers last in both directions), "#sort=key[:desc]" on load,
# and, for checks, the count of thumbnails loaded and broken on <body data-images-*>.
_SCRIPT = """
(function(){
var table=document.getElementById('cases');if(!table)return;
var body=table.tBodies[0];
function sortBy(th,dir){
 var i=th.cellIndex,num=th.dataset.kind==='num',rows=Array.prototype.slice.call(body.rows);
 rows.sort(function(a,b){
  var x=a.cells[i].dataset.sort,y=b.cells[i].dataset.sort;
  if(x===undefined||y===undefined)return 0;
  if(num){if(x===''&&y==='')return 0;if(x==='')return 1;if(y==='')return -1;return dir*(parseFloat(x)-parseFloat(y));}
  return dir*x.localeCompare(y);});
 rows.forEach(function(r){body.appendChild(r);});
 Array.prototype.forEach.call(table.tHead.rows[0].cells,function(c){c.removeAttribute('aria-sort');});
 th.setAttribute('aria-sort',dir>0?'ascending':'descending');}
Array.prototype.forEach.call(table.querySelectorAll('th[data-key] button'),function(b){
 b.addEventListener('click',function(){var th=b.parentNode;
  sortBy(th,th.getAttribute('aria-sort')==='ascending'?-1:1);});});
var m=/sort=([a-z_]+)(:desc)?/.exec(location.hash);
if(m){var th=table.querySelector('th[data-key="'+m[1]+'"]');
 if(th){th.querySelector('button').click();if(m[2])th.querySelector('button').click();}}
var imgs=document.images,done=0,ok=0,bad=[];
function mark(img){done++;if(img.naturalWidth>0)ok++;else bad.push(img.getAttribute('src'));
 document.body.dataset.imagesTotal=imgs.length;document.body.dataset.imagesLoaded=ok;
 document.body.dataset.imagesBroken=bad.join(' ');}
document.body.dataset.imagesTotal=imgs.length;document.body.dataset.imagesLoaded=0;
Array.prototype.forEach.call(imgs,function(img){
 if(img.complete)mark(img);
 else{img.addEventListener('load',function(){mark(img);});img.addEventListener('error',function(){mark(img);});}});
})();
"""

"""The folder report: one row per case, written as report.csv and report.json (atomically).

The report is a record of the output folder, not of the last run: each run merges its rows into
the rows already there (under `lock.report_lock`, so shards of one folder each add theirs). A case
a run skipped because its outputs exist keeps the row of the run that made them (status ok, its
figures and review flag); every row names the run (`run_id`) and model (`model`, the artifact's
SHA-256) that made it. `runs` in report.json lists every run's settings (a run that writes the
report several times, as a watch does, keeps one entry).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ceds_deploy.errors import OutputError
from ceds_deploy.inference.lock import report_lock
from ceds_deploy.io import write_atomic_text

log = logging.getLogger(__name__)

STAGES = ("read", "preprocess", "infer", "restore", "write", "review")


@dataclass
class CaseRow:
    case: str
    status: str  # ok | failed | skipped
    error: str = ""
    input_path: str = ""
    input_shape: str = ""
    input_spacing: str = ""
    windows: int = 0
    tumour_ml: float = math.nan
    mean_confidence: float = math.nan
    low_confidence_fraction: float = math.nan
    expected_dice: float = math.nan  # from the calibrated confidence map (qa.review); nan: model not calibrated
    needs_review: bool = False
    review_reason: str = ""
    seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    backend: str = ""
    device: str = ""
    run_id: str = ""  # the run that made this row (segment_folder's run id)
    model: str = ""  # SHA-256 of the model artifact that made the outputs

    def flat(self) -> dict[str, Any]:
        row = asdict(self)
        seconds = row.pop("seconds")
        row.update({f"{stage}_s": round(seconds.get(stage, 0.0), 4) for stage in STAGES})
        return row


STATUSES = ("ok", "failed", "skipped")
DONE_BEFORE = "outputs exist (use --overwrite to redo)"  # a skipped row's reason when an earlier run made them
REPORT_CSV, REPORT_JSON = "report.csv", "report.json"


def status_counts(rows: list[CaseRow]) -> dict[str, int]:
    """How many rows have each status."""
    return {status: sum(r.status == status for r in rows) for status in STATUSES}


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def read_report(output: Path) -> dict[str, Any]:
    """The folder's report.json as written ({} when there is none); an unreadable one is logged and
    treated as absent (it is replaced by the next write)."""
    path = Path(output) / REPORT_JSON
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("%s: earlier report cannot be read (%s); starting a new one", path, err)
        return {}
    return document if isinstance(document, dict) else {}


def ok_cases(output: Path) -> set[str]:
    """The cases the folder's report says were segmented (their outputs are ours)."""
    rows = read_report(output).get("cases", [])
    return {str(r.get("case")) for r in rows if isinstance(r, dict) and r.get("status") == "ok"}


def is_done_before(row: CaseRow) -> bool:
    """A row that only says the case's outputs exist from an earlier run (it keeps that run's row)."""
    return row.status == "skipped" and row.error == DONE_BEFORE


def merge_rows(earlier: list[dict[str, Any]], rows: list[CaseRow]) -> list[dict[str, Any]]:
    """Flat rows of the folder: this run's rows replace earlier ones of the same case, except a
    case skipped because its outputs exist, which keeps an earlier ok row. Sorted by case."""
    columns = list(CaseRow("", "").flat().keys())
    merged = {str(r.get("case")): {c: r.get(c) for c in columns} for r in earlier if isinstance(r, dict)}
    for row in rows:
        before = merged.get(row.case)
        if is_done_before(row) and before and before.get("status") == "ok":
            continue
        merged[row.case] = row.flat()
    return [merged[case] for case in sorted(merged)]


def _csv_text(flat: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns = list(CaseRow("", "").flat().keys())
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in flat:
        writer.writerow(
            {k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}
        )
    return buffer.getvalue()


def write_report(output: Path, rows: list[CaseRow], run_info: dict[str, Any], html: bool = False) -> tuple[Path, Path]:
    """Merge this run's `rows` into the folder's report and write report.csv and report.json
    atomically, under the report lock, and with `html` report.html (`qa.report_page`). Returns
    (csv path, json path); raises `OutputError` naming the file when it cannot be written
    (read-only folder, full disk)."""
    output = Path(output)
    csv_path, json_path = output / REPORT_CSV, output / REPORT_JSON
    target = output
    try:
        with report_lock(output):
            before = read_report(output)
            flat = merge_rows(before.get("cases", []), rows)
            this_run = run_info.get("run_id")  # a watch updates its own entry round after round
            runs = [
                r
                for r in before.get("runs", [])
                if isinstance(r, dict) and not (this_run and r.get("run_id") == this_run)
            ]
            runs.append(run_info)
            counts = {status: sum(r.get("status") == status for r in flat) for status in STATUSES}
            document = {
                "run": run_info,
                "runs": runs,
                "counts": counts,
                "needs_review": [r["case"] for r in flat if r.get("status") == "ok" and r.get("needs_review")],
                "cases": flat,
            }
            target = csv_path
            write_atomic_text(csv_path, _csv_text(flat))
            target = json_path
            safe = _json_safe(document)
            write_atomic_text(json_path, json.dumps(safe, indent=2))
            from ceds_deploy.qa.report_page import REPORT_PAGE, write_report_page

            if html or (output / REPORT_PAGE).exists():  # a page left from an earlier run shows this report too
                write_report_page(output, safe)
    except OSError as err:
        raise OutputError(f"{target}: cannot write the report: {err.strerror or err}") from None
    return csv_path, json_path


def record_run(
    output: Path, rows: list[CaseRow], run_info: dict[str, Any], work: Callable[[], bool], html: bool = False
) -> tuple[Path, Path]:
    """Run `work` (which fills `rows` and returns whether it was interrupted), then write the report.
    When `work` raises, the cases finished so far are recorded (a run interrupted) and the error
    goes on; a report that cannot be written then is logged, not raised over it."""
    try:
        interrupted = work()
    except BaseException:
        try:
            write_report(output, rows, {**run_info, "interrupted": True}, html=html)
        except OutputError as err:
            log.error("%s", err)
        raise
    return write_report(output, rows, {**run_info, "interrupted": interrupted}, html=html)

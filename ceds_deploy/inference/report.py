"""The run report: one row per case, written as report.csv and report.json (atomically)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ceds_deploy.io import write_atomic_text

STAGES = ("read", "preprocess", "infer", "restore", "write")


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
    needs_review: bool = False
    review_reason: str = ""
    seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    backend: str = ""
    device: str = ""

    def flat(self) -> dict[str, Any]:
        row = asdict(self)
        seconds = row.pop("seconds")
        row.update({f"{stage}_s": round(seconds.get(stage, 0.0), 4) for stage in STAGES})
        return row


STATUSES = ("ok", "failed", "skipped")


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


def write_report(output: Path, rows: list[CaseRow], run_info: dict[str, Any]) -> tuple[Path, Path]:
    rows = sorted(rows, key=lambda r: r.case)
    flat = [r.flat() for r in rows]
    buffer = io.StringIO()
    columns = list(CaseRow("", "").flat().keys())
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in flat:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    counts = status_counts(rows)
    document = {"run": run_info, "counts": counts,
                "needs_review": [r.case for r in rows if r.status == "ok" and r.needs_review],
                "cases": flat}
    csv_path, json_path = Path(output) / "report.csv", Path(output) / "report.json"
    write_atomic_text(csv_path, buffer.getvalue())
    write_atomic_text(json_path, json.dumps(_json_safe(document), indent=2))
    return csv_path, json_path

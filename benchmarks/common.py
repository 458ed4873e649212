"""Shared bits of the benchmark scripts: machine description, tables, JSON output, peak memory."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict:
    import numpy
    import torch

    info = {
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torch_threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    try:
        import monai
        import onnxruntime

        info.update(monai=monai.__version__, onnxruntime=onnxruntime.__version__)
    except ImportError:
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gb=round(props.total_memory / 2**30, 1),
            compute_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
        )
    return info


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def print_table(title: str, rows: list[dict], columns: list[str] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    columns = columns or (list(rows[0]) if rows else [])
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*[f"{row.get(c):.4g}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns])
    Console(width=max(120, 14 * len(columns))).print(table)


def write_json(path: Path, document: dict) -> Path:
    from ceds_deploy.io import write_atomic_text

    path = Path(path)
    write_atomic_text(path, json.dumps(document, indent=2, default=str))
    return path

"""What Python's cyclic garbage collector costs a cold `ceds segment` while it imports: fresh
interpreters import what the command imports before its first scan (the backends, the inference
pipeline and the model loader, so torch, numpy and the readers' packages), with the collector on, as
Python starts, or paused by the CLI's `collection_paused`; interleaved.

    .venv/bin/python benchmarks/import_collections.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402

PROBE = """
import json, sys, time
start = time.perf_counter()
from contextlib import nullcontext
from ceds_deploy.cli import collection_paused
with collection_paused() if sys.argv[1] == "paused" else nullcontext():
    import ceds_deploy.backends, ceds_deploy.inference, ceds_deploy.models, nibabel, SimpleITK, pydicom
print(json.dumps({"seconds": time.perf_counter() - start}))
"""
WAYS = ("collector on", "paused")


def one_import(way: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "paused" if way == "paused" else "on"], capture_output=True, text=True, check=True
    )
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/import_collections.json"))
    args = parser.parse_args(argv)
    seconds: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way in WAYS:
            seconds[way].append(one_import(way))
    rows = [
        {
            "imports": way,
            "median s": round(statistics.median(v), 3),
            "min s": round(min(v), 3),
            "max s": round(max(v), 3),
        }
        for way, v in seconds.items()
    ]
    print_table("the imports before a cold run's first scan, a fresh interpreter each", rows)
    saved = statistics.median(seconds["collector on"]) - statistics.median(seconds["paused"])
    print(f"paused saves {saved:.3f} s (medians)")
    write_json(
        args.json,
        {"machine": machine(), "args": vars(args) | {"json": str(args.json)}, "summary": rows, "seconds": seconds},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 20's comparison as a user runs it: each way over the same folder as a cold process, on the
CPU, interleaved and repeated: `ceds segment`, the speed-aware MONAI script and the MONAI script with
MONAI's defaults (`benchmarks/monai_gpu_reference.py --device cpu [--speed-aware]`). Wall time from
launch to exit, each way's own per-stage seconds, and the masks' Dice against the speed-aware way.

    python benchmarks/cold_cpu_ways.py --model RUN/checkpoints/best_teacher.pt --repeats 2

The scans are `benchmarks/end_to_end.py`'s (`--cases 2 --size full --seed 7`: 512x512x300 and
300x512x512). Measure on a quiet machine: the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402
from benchmarks.end_to_end import make_scans  # noqa: E402
from benchmarks.gpu_cold import report_summary, run_cold  # noqa: E402

WAYS = ("ceds segment", "MONAI speed-aware", "MONAI defaults")


def command(way: str, scans: Path, out: Path, model: Path, ceds_args: list[str] | None = None) -> list[str]:
    if way == "ceds segment":
        run = [sys.executable, "-m", "ceds_deploy.cli.app", "segment", str(scans), str(out), "--model", str(model)]
        return [*run, *(ceds_args or [])]
    script = Path(__file__).resolve().parent / "monai_gpu_reference.py"
    extra = ["--speed-aware"] if way == "MONAI speed-aware" else []
    run = [sys.executable, str(script), str(scans), str(out), "--model", str(model), "--device", "cpu"]
    return [*run, "--json", str(out.with_suffix(".json")), *extra]


def masks_dice(ours: Path, theirs: Path) -> dict[str, float]:
    """Dice of each case's mask between two output folders (ours named by case, theirs by scan file)."""
    from ceds_deploy.io import read_scan
    from ceds_deploy.qa.metrics import dice

    result = {}
    for mask in sorted(theirs.glob("*.nii.gz")):
        a = read_scan(ours / mask.name, dtype=None).array > 0
        result[mask.name] = float(dice(a, read_scan(mask, dtype=None).array > 0))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--size", default="full", choices=["small", "full"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ceds-bench")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/cold_cpu_ways.json"))
    parser.add_argument("--ceds-args", default="", help='more `ceds segment` options, one string ("--precision bf16")')
    parser.add_argument("--ways", nargs="*", default=list(WAYS), help=f"of {WAYS}")
    args = parser.parse_args(argv)
    scans = make_scans(args.work / "scans", args.cases, args.size, args.seed)[0].parent
    load_before = os.getloadavg()
    runs: list[dict] = []
    for repeat in range(args.repeats):
        for way in args.ways:  # interleaved: a load that comes and goes hits every way alike
            out = args.work / "cold" / f"{way.replace(' ', '-')}-{repeat}"
            shutil.rmtree(out, ignore_errors=True)  # a folder with outputs would be skipped, not timed
            result = run_cold(command(way, scans, out, args.model, args.ceds_args.split()), out, args.timeout_s)
            result.update(way=way, repeat=repeat)
            if way == "ceds segment":
                result.update(report_summary(out))
            elif out.with_suffix(".json").is_file():
                result["script"] = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
            runs.append(result)
    walls = {w: [r["wall_s"] for r in runs if r["way"] == w and r["returncode"] == 0] for w in WAYS}
    medians = {w: statistics.median(v) if v else None for w, v in walls.items()}
    ours, aware = args.work / "cold" / "ceds-segment-0", args.work / "cold" / "MONAI-speed-aware-0"
    summary = {
        "wall_s": walls,
        "median_wall_s": medians,
        "speedup_vs_speed_aware": medians["MONAI speed-aware"] / medians["ceds segment"]
        if medians["ceds segment"] and medians["MONAI speed-aware"]
        else None,
        "speedup_vs_defaults": medians["MONAI defaults"] / medians["ceds segment"]
        if medians["ceds segment"] and medians["MONAI defaults"]
        else None,
        "mask_dice_vs_speed_aware": masks_dice(ours, aware),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    print_table(
        "cold processes over the folder (seconds)", [{"way": w, "runs": walls[w], "median": medians[w]} for w in WAYS]
    )
    print(json.dumps(summary, indent=1))
    write_json(
        args.json,
        {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "summary": summary},
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What a calibrated model costs `ceds segment` on the CPU (every `ceds train` run is calibrated at its
end): the confidence map's calibration step alone, the reference path (`Calibration.apply`, then
`quantize_confidence`) against `calibrate_and_quantize` on a restored-layout map (same values, checked),
and cold `ceds segment` runs of a model and its calibrated copy over the same folder, interleaved.

    python benchmarks/calibration_cost.py --model M --calibrated M_CAL --scans FOLDER [--repeats 2]

M_CAL comes from `ceds calibrate M DATA --out M_CAL`; FOLDER from `benchmarks/end_to_end.py`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402
from benchmarks.gpu_cold import report_summary, run_cold  # noqa: E402


def calibration_step(calibrated: Path, shape: tuple[int, int, int], repeats: int) -> dict:
    """Seconds of the reference path and of the table path on one random map in the restored layout."""
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.transforms.confidence import calibrate_and_quantize, quantize_confidence

    calibration = read_spec(calibrated).calibration
    assert calibration is not None, f"{calibrated} has no calibration"
    rng = np.random.default_rng(0)
    raw = np.ascontiguousarray(rng.random(shape[::-1], dtype=np.float32)).T  # x fastest, as restored
    mask = np.ascontiguousarray((rng.random(shape[::-1]) > 0.99).astype(np.uint8)).T
    times: dict[str, list[float]] = {"reference": [], "tables": []}
    for _ in range(repeats):
        expected = raw.copy(order="K")
        start = time.perf_counter()
        calibration.apply(expected, mask)
        quantize_confidence(expected)
        times["reference"].append(time.perf_counter() - start)
        fast = raw.copy(order="K")
        start = time.perf_counter()
        calibrate_and_quantize(fast, mask, calibration)
        times["tables"].append(time.perf_counter() - start)
        assert np.array_equal(fast, expected), "the table path must give the reference values"
    return {"shape": list(shape), "seconds": times, "identical": True}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--calibrated", type=Path, required=True)
    parser.add_argument("--scans", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/calibration_cost.json"))
    args = parser.parse_args(argv)
    step = calibration_step(args.calibrated, (512, 512, 300), args.repeats)
    work = Path(tempfile.mkdtemp(prefix="ceds-calibration-cost-"))
    runs = []
    for repeat in range(args.repeats):
        for label, model in (("model", args.model), ("calibrated", args.calibrated)):
            out = work / f"{label}-{repeat}"
            command = [sys.executable, "-m", "ceds_deploy.cli.app", "segment", str(args.scans), str(out)]
            result = run_cold([*command, "--model", str(model)], out, 600)
            runs.append({"model": label, "repeat": repeat, **result, **report_summary(out)})
    walls = {
        k: [r["wall_s"] for r in runs if r["model"] == k and r["returncode"] == 0] for k in ("model", "calibrated")
    }
    summary = {
        "calibration_step_median_s": {k: statistics.median(v) for k, v in step["seconds"].items()},
        "cold_segment_wall_s": walls,
        "cold_segment_median_s": {k: statistics.median(v) for k, v in walls.items() if v},
    }
    print_table(
        "calibration step on a 512x512x300 map (s)", [{"way": k, **{"runs": v}} for k, v in step["seconds"].items()]
    )
    print_table("cold ceds segment over the folder (s)", [{"model": k, "runs": v} for k, v in walls.items()])
    settings = {k: str(v) for k, v in vars(args).items()}
    write_json(args.json, {"machine": machine(), "args": settings, "step": step, "runs": runs, "summary": summary})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Which prepared case the backend takes next: the largest scan first (the pipeline's order) against
the order the readers finished them in (the order before), in one warm process, interleaved.

    python benchmarks/case_order.py SCANS_DIR --model MODEL [--io-workers 3] [--repeats 3] [--device cpu]

The last case's restore and write follow the run's last window with nothing to overlap them, so a
small scan should end the run. Per run: wall, the order the backend took the cases in, and the tail
(from the last batch of windows to the end). With one I/O worker (a 2-core CPU's default) at most one
case waits, so the two orders are the same there: use several.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # ceds_deploy: the installed one
from benchmarks.common import machine, print_table, write_json  # noqa: E402

ORDERS = ("largest first", "as read")


def run_once(scans: Path, out: Path, backend, workers: int, order: str) -> dict:
    from ceds_deploy.inference import SegmentOptions, segment_folder
    from ceds_deploy.inference import pipeline as pipeline_module

    taken: list[str] = []
    last_batch = [0.0]
    real_jobs, real_read = pipeline_module.Pipeline._jobs, pipeline_module.Pipeline._read_one

    def jobs(self):
        for job in real_jobs(self):
            taken.append(job.key)
            yield job

    def read_as_before(self, case):  # every scan ranks alike: the queue gives them in arrival order
        job = real_read(self, case)
        case.voxels = 0
        return job

    def progress(event) -> None:
        if event.name == "windows":
            last_batch[0] = time.perf_counter()

    pipeline_module.Pipeline._jobs = jobs  # type: ignore[method-assign]
    if order == "as read":
        pipeline_module.Pipeline._read_one = read_as_before  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        segment_folder(scans, out, backend, SegmentOptions(io_workers=workers or None), progress=progress)
        end = time.perf_counter()
    finally:
        pipeline_module.Pipeline._jobs, pipeline_module.Pipeline._read_one = real_jobs, real_read  # type: ignore[method-assign]
    return {"order": order, "wall_s": end - start, "tail_s": end - last_batch[0], "taken": taken}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", type=Path)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--io-workers", type=int, default=3, help="0: the machine's default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/case_order.json"))
    args = parser.parse_args(argv)
    from ceds_deploy.inference import SegmentOptions, segment_folder
    from ceds_deploy.models import open_backend

    work = Path(tempfile.mkdtemp(prefix="ceds-case-order-"))
    runs = []
    backend, why = open_backend(args.model, device=args.device)
    try:
        with backend:
            warm_scan = work / "warm-scan"
            warm_scan.mkdir()
            shutil.copy(min(args.scans.glob("*.nii.gz"), key=lambda p: p.stat().st_size), warm_scan)
            segment_folder(warm_scan, work / "warm-out", backend, SegmentOptions())
            for repeat in range(args.repeats):
                for order in ORDERS if repeat % 2 == 0 else ORDERS[::-1]:
                    out = work / f"out-{repeat}-{order.replace(' ', '-')}"
                    runs.append(run_once(args.scans, out, backend, args.io_workers, order) | {"repeat": repeat})
                    shutil.rmtree(out)
                    print(f"{order}: {runs[-1]['wall_s']:.2f} s, tail {runs[-1]['tail_s']:.2f} s, {runs[-1]['taken']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        order: {key: statistics.median(r[key] for r in runs if r["order"] == order) for key in ("wall_s", "tail_s")}
        for order in ORDERS
    }
    print_table("median seconds", [{"order": k, **v} for k, v in summary.items()])
    write_json(
        args.json,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "backend": why,
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

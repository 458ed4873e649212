"""Restoring a full-size confidence map in a fresh process: the output array on numpy's huge pages
or on small ones (ceds_deploy.memory), and the resampling chunk of 8 Mi or 1 Mi voxels (32 or 4 MiB
float32 temporaries). Each try is a new process, so every scan-sized array is a first touch, as in a
cold `ceds segment`; the ways are interleaved, and each process also restores the map a second time
(memory it has touched before).

    python benchmarks/end_to_end.py --cases 2 --size full --seed 7 --work /tmp/ceds-bench   # the scans
    python benchmarks/fresh_memory.py --scan /tmp/ceds-bench/scans/bench_full_7_001.nii.gz --repeats 5
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

WAYS = {  # (output array on small pages, chunk voxels)
    "huge pages, 8 Mi-voxel chunks (before)": (False, 1 << 23),
    "huge pages, 1 Mi-voxel chunks": (False, 1 << 20),
    "small pages, 8 Mi-voxel chunks": (True, 1 << 23),
    "small pages, 1 Mi-voxel chunks (now)": (True, 1 << 20),
}

ONE_PROCESS = """
import json, sys, time
import numpy as np, torch
from ceds_deploy.io import read_scan
from ceds_deploy.spec import ModelSpec
from ceds_deploy.transforms import resample, restore
from ceds_deploy.transforms.preprocess import prepare_scan_on
small_pages, chunk = sys.argv[2] == "1", int(sys.argv[3])
resample.SCAN_CHUNK_VOXELS = chunk
if not small_pages:
    restore.fresh_zeros = lambda shape, dtype: np.zeros(shape, dtype)  # numpy's allocation: huge pages
spec = ModelSpec(roi_size=(32, 32, 32), target_spacing=(3.0, 3.0, 3.0), width=4)
volume = read_scan(sys.argv[1], dtype=None)
_, mapping = prepare_scan_on(volume, spec, "cpu")
del volume
grid = torch.rand((1, *mapping.model_geometry.shape), generator=torch.Generator().manual_seed(0))
seconds = []
for _ in range(2):
    start = time.perf_counter()
    restored = restore.restore_to_source(grid, mapping, fill=1.0)
    seconds.append(time.perf_counter() - start)
    checksum = float(restored[0, ::7, ::7, ::7].astype(np.float64).sum())
    del restored
print(json.dumps({"first_s": seconds[0], "again_s": seconds[1], "checksum": checksum}))
"""


def one_try(scan: Path, small_pages: bool, chunk: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", ONE_PROCESS, str(scan), "1" if small_pages else "0", str(chunk)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", type=Path, required=True, help="a full-size .nii.gz scan")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/fresh_memory.json"))
    args = parser.parse_args(argv)
    tries: dict[str, list[dict]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way, (small_pages, chunk) in WAYS.items():
            tries[way].append(one_try(args.scan, small_pages, chunk))
    checksums = {t["checksum"] for runs in tries.values() for t in runs}
    rows = [
        {
            "way": way,
            "first restore, median s": round(statistics.median(t["first_s"] for t in runs), 3),
            "first, min-max s": f"{min(t['first_s'] for t in runs):.3f}-{max(t['first_s'] for t in runs):.3f}",
            "second restore, median s": round(statistics.median(t["again_s"] for t in runs), 3),
        }
        for way, runs in tries.items()
    ]
    print_table(f"restoring a confidence map of {args.scan.name}, a fresh process per try", rows)
    print(f"same values in every way: {len(checksums) == 1}")
    write_json(
        args.json,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "same_values": len(checksums) == 1,
            "summary": rows,
            "tries": tries,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

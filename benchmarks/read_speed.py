"""Reading a .nii.gz scan: the direct NIfTI-1 path (ISA-L into one array, `io.read._nifti_voxels`)
against ITK's reader and its copy (the path it replaced, forced here), and ISA-L's decompression of
the same file alone (the floor), interleaved, on this machine.

    python benchmarks/read_speed.py SCAN.nii.gz [SCAN ...] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scans", type=Path, nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/read_speed.json"))
    args = parser.parse_args(argv)
    from isal import igzip

    import ceds_deploy.io.read as read_module
    from ceds_deploy.io import read_scan

    direct = read_module._nifti_voxels
    read_scan(args.scans[0], dtype=None)  # imports (nibabel, SimpleITK, ISA-L) before any timing
    rows = []
    for scan in args.scans:
        times: dict[str, list[float]] = {"direct": [], "itk": [], "isal_decompress_only": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            fast = read_scan(scan, dtype=None).array
            times["direct"].append(time.perf_counter() - start)
            read_module._nifti_voxels = lambda path, claim: None  # type: ignore[assignment]  # ITK's reader
            try:
                start = time.perf_counter()
                slow = read_scan(scan, dtype=None).array
                times["itk"].append(time.perf_counter() - start)
            finally:
                read_module._nifti_voxels = direct
            start = time.perf_counter()
            igzip.decompress(scan.read_bytes())
            times["isal_decompress_only"].append(time.perf_counter() - start)
            assert fast.dtype == slow.dtype and np.array_equal(fast, slow), "both paths must read the same voxels"
        rows.append(
            {"scan": scan.name, "shape": list(fast.shape), **{k: statistics.median(v) for k, v in times.items()}}
        )
        rows[-1]["runs"] = times
    print_table("reading a .nii.gz (median seconds)", [{k: v for k, v in r.items() if k != "runs"} for r in rows])
    write_json(args.json, {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

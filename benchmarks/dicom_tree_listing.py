"""How long `find_scans` takes on a DICOM tree: every file's header read with pydicom, grouped by
SeriesInstanceUID, each CT series' slice grid checked. A tree of S series x N slices (64 x 64
pixels, written with pydicom from a phantom crop) in patients/studies/series folders.

    .venv/bin/python -m benchmarks.dicom_tree_listing [--series 10] [--slices 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, print_table, write_json
from ceds_deploy.io import find_scans
from ceds_deploy.synthetic import make_case
from ceds_deploy.volume import Volume

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers_dicom import write_ct_series  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dicom_tree_listing.json"))
    args = parser.parse_args()
    image, _ = make_case(0, 0, "small")
    array = np.resize(image.array[32:96, 32:96, :], (64, 64, args.slices))
    volume = Volume(array, image.geometry.with_(shape=(64, 64, args.slices)))
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for s in range(args.series):
            write_ct_series(Path(root) / f"P{s % 3}" / f"ST{s}" / "SE1", volume, patient_id=f"P{s % 3}")
        for attempt in range(3):
            started = time.perf_counter()
            listing = find_scans(root)
            seconds = time.perf_counter() - started
            assert len(listing.scans) == args.series, listing.skipped
            files = args.series * args.slices
            rows.append(
                {
                    "run": attempt + 1,
                    "files": files,
                    "seconds": round(seconds, 3),
                    "ms_per_file": round(1000 * seconds / files, 3),
                }
            )
    print_table("find_scans on a DICOM tree", rows)
    write_json(args.out, {"machine": machine(), "series": args.series, "slices": args.slices, "runs": rows})


if __name__ == "__main__":
    main()

"""Time and peak resident memory of `ceds segment` against scan size, up to 512x512x600.

Each size runs in its own process so its peak memory is its own. The scans are a full-size
phantom whose slices are repeated or cut to the wanted count, so the body's share of the voxels
stays about the same and cost should grow linearly with the voxels.

    python benchmarks/scaling.py --model RUN/checkpoints/best_teacher.pt
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402

CHILD = """
import json, resource, sys, time
from pathlib import Path
from ceds_deploy.artifacts import read_spec, artifact_kind
from ceds_deploy.backends import create_backend, resolve_backend
from ceds_deploy.inference import SegmentOptions, segment_folder
scan, out, model, backend = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
spec = read_spec(model)
name, _ = resolve_backend(backend, artifact_kind(model), "cpu")
start = time.perf_counter()
with create_backend(name, model, spec) as engine:
    run = segment_folder(scan, out, engine, SegmentOptions(overwrite=True))
row = run.rows[0]
print(json.dumps({"seconds": time.perf_counter() - start, "stages": row.seconds, "windows": row.windows,
                  "status": row.status, "error": row.error, "backend": engine.description,
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def scan_of_size(base, slices: int, inplane: int):
    from ceds_deploy.volume import Volume

    array = base.array
    z = np.resize(np.arange(array.shape[2]), slices)  # repeat slices cyclically
    array = array[:, :, z]
    if inplane != array.shape[0]:
        step = array.shape[0] / inplane
        idx = (np.arange(inplane) * step).astype(int)
        array = array[idx][:, idx]
        spacing = (base.spacing[0] * step, base.spacing[1] * step, base.spacing[2])
    else:
        spacing = base.spacing
    geometry = base.geometry.with_(shape=array.shape, spacing=spacing)
    return Volume(np.ascontiguousarray(array), geometry)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--sizes", nargs="+", default=["256x256x150", "512x512x150", "512x512x300", "512x512x600"])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/scaling.json"))
    args = parser.parse_args(argv)

    from ceds_deploy.io import write_volume
    from ceds_deploy.synthetic import make_case
    from ceds_deploy.transforms.orientation import canonical_reorientation, reorient_array, reorient_geometry
    from ceds_deploy.volume import Volume

    image, _ = make_case(2000, seed=3, size="full")
    r = canonical_reorientation(image.geometry)  # a standard axial layout for the slice repeat
    base = Volume(np.ascontiguousarray(reorient_array(image.array, r)), reorient_geometry(image.geometry, r))
    work = Path(tempfile.mkdtemp(prefix="ceds-scaling-"))
    rows = []
    for size in args.sizes:
        nx, ny, nz = (int(v) for v in size.split("x"))
        volume = scan_of_size(base, nz, nx)
        folder = work / size
        folder.mkdir()
        path = write_volume(folder / f"scan_{size}.nii.gz", volume.array.astype(np.int16), volume.geometry)
        body = int(np.count_nonzero(volume.array > -500))
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(work / f"out_{size}"), str(args.model), args.backend],
            capture_output=True,
            encoding="utf-8",
        )
        if done.returncode != 0:
            print(done.stderr[-2000:])
            raise SystemExit(f"segment failed for {size}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(
            {
                "size": size,
                "mvoxels": volume.array.size / 1e6,
                "body_mvoxels": body / 1e6,
                "windows": result["windows"],
                "seconds": result["seconds"],
                "s_per_body_mvoxel": result["seconds"] / (body / 1e6),
                "peak_rss_gb": result["peak_rss_gb"],
                **{f"{k}_s": v for k, v in result["stages"].items()},
                "backend": result["backend"],
            }
        )
        print(rows[-1])
    print_table(
        "ceds segment: cost against scan size",
        rows,
        [
            "size",
            "mvoxels",
            "body_mvoxels",
            "windows",
            "seconds",
            "s_per_body_mvoxel",
            "peak_rss_gb",
            "read_s",
            "preprocess_s",
            "infer_s",
            "restore_s",
            "write_s",
        ],
    )
    write_json(args.json, {"machine": machine(), "model": str(args.model), "rows": rows})
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Writing a confidence map's gzip data: ISA-L's IGzipFile (one stream) against its threaded writer
(1 MiB blocks, as pigz) on 1 and 2 threads, interleaved; the threaded bytes must not depend on the
thread count.

    python benchmarks/gzip_write.py --map OUT/case_confidence.nii.gz --repeats 5
    python benchmarks/gzip_write.py --repeats 5     # a synthetic 512x512x300 map in steps of 1/1024
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, write_json  # noqa: E402


def synthetic_map(shape=(300, 512, 512)) -> np.ndarray:
    """About half the voxels at one value (air), the rest a smooth field, in steps of 1/1024."""
    rng = np.random.default_rng(0)
    coarse = rng.random((shape[0] // 10 + 2, shape[1] // 16 + 2, shape[2] // 16 + 2), dtype=np.float32)
    field = np.kron(coarse, np.ones((10, 16, 16), np.float32))[: shape[0], : shape[1], : shape[2]]
    field[:, :, : shape[2] // 2] = 1.0
    return np.round(field * 1024) / np.float32(1024)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--map", type=Path, default=None, help="a .nii(.gz) confidence map (default: synthetic)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/gzip_write.json"))
    args = parser.parse_args(argv)
    from isal import igzip, igzip_threaded

    if args.map is not None:
        import nibabel

        array = np.asarray(nibabel.load(args.map).dataobj, dtype=np.float32)
    else:
        array = synthetic_map()
    data = np.ascontiguousarray(array).data.cast("B")
    ways = {
        "IGzipFile": lambda path: igzip.IGzipFile(path, "wb", compresslevel=1, mtime=0),
        "threaded, 1 thread": lambda path: igzip_threaded.open(path, "wb", compresslevel=1, threads=1),
        "threaded, 2 threads": lambda path: igzip_threaded.open(path, "wb", compresslevel=1, threads=2),
    }
    seconds: dict[str, list[float]] = {way: [] for way in ways}
    digests: dict[str, str] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.repeats):
            for way, opener in ways.items():
                path = Path(work) / "map.gz"
                start = time.perf_counter()
                with opener(path) as fh:
                    fh.write(data)
                seconds[way].append(time.perf_counter() - start)
                written = path.read_bytes()
                digests[way], sizes[way] = hashlib.sha256(written).hexdigest(), len(written)
    same = digests["threaded, 1 thread"] == digests["threaded, 2 threads"]
    for way in ways:
        median = statistics.median(seconds[way])
        print(f"{way:22s} {median:.3f} s (median of {args.repeats}), {sizes[way] / 2**20:.1f} MiB")
    print(f"threaded bytes the same for 1 and 2 threads: {same}")
    write_json(
        args.json,
        {
            "machine": machine(),
            "map": str(args.map) if args.map else "synthetic 512x512x300",
            "raw_mib": len(data) / 2**20,
            "seconds": seconds,
            "median_s": {way: statistics.median(v) for way, v in seconds.items()},
            "compressed_bytes": sizes,
            "threaded_bytes_independent_of_threads": same,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

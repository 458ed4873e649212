"""The paper's full-width network on the CPU: how many windows each way computes, and what that costs.

A full-width (16) window of 112x112x80 takes about 12 s on a 2-core CPU, so running the reference
way on realistic scans would take tens of minutes per scan. The network time is the window count
times the cost of a window, and both are measurable without that wait: this script counts the
windows exactly, on the same scans, for the reference way (MONAI Orientation, Spacing to 1 mm,
ScaleIntensityRange, CropForeground, SpatialPad, then `sliding_window_inference`'s dense grid at
overlap 0.25) and for `ceds segment` (its body crop and window plan, air windows skipped, and the
opt-in levers), and multiplies by seconds per window measured by `window_throughput.py` (the
reference runs 4 windows a batch, `ceds segment` its CPU default of 1 at this size).

    python benchmarks/full_width_projection.py --throughput benchmarks/results/window_throughput_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402
from benchmarks.end_to_end import make_scans, reference_preprocessing  # noqa: E402


def reference_window_count(path: Path, spec) -> tuple[int, tuple[int, ...]]:
    """Windows of the reference way: its pre-processing, then MONAI's dense grid (our plan_windows
    reproduces sliding_window_inference's positions; tests/test_windows_stitch.py checks it)."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

    from ceds_deploy.inference.windows import plan_windows

    load = Compose([LoadImaged("image", reader="NibabelReader"), EnsureChannelFirstd("image")])
    data = reference_preprocessing(spec)(load({"image": str(path)}))
    shape = tuple(int(n) for n in data["image"].shape[1:])
    return len(plan_windows(shape, spec.roi_size, 0.25)), shape


def ours_window_count(path: Path, spec, overlap: float, skip_air: bool) -> tuple[int, tuple[int, ...]]:
    from ceds_deploy.inference import SegmentOptions
    from ceds_deploy.inference.segment import window_plan_for
    from ceds_deploy.io import read_scan
    from ceds_deploy.transforms.preprocess import prepare_scan

    image, _ = prepare_scan(read_scan(path, dtype=None), spec)
    return len(window_plan_for(image, spec, SegmentOptions(overlap=overlap, skip_air=skip_air))), image.shape


def seconds_per_window(throughput: dict, width: int, batch: int, channels_last: bool) -> float | None:
    """torch fp32 seconds per window in the layout asked for: the backend's CPU default for ceds
    segment, contiguous for the reference (MONAI calls the network in PyTorch's default layout);
    either when only one exists."""
    rows = [
        r
        for r in throughput["rows"]
        if r["backend"].startswith("torch fp32") and r["width"] == width and r["batch"] == batch and "s_per_window" in r
    ]
    preferred = [r for r in rows if ("channels-last" in r["backend"]) == channels_last]
    return float((preferred or rows)[0]["s_per_window"]) if rows else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--throughput",
        type=Path,
        default=Path("benchmarks/results/window_throughput_cpu.json"),
        help="window_throughput.py JSON with torch fp32 rows for width 16",
    )
    parser.add_argument("--cases", type=int, default=2)
    parser.add_argument("--size", default="full", choices=["small", "full"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ceds-bench")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/full_width_projection.json"))
    args = parser.parse_args(argv)

    from ceds_deploy.backends.torch_backend import CPU_CHANNELS_LAST_MAX_WIDTH
    from ceds_deploy.spec import ModelSpec

    spec = ModelSpec()  # the paper's network: width 16, 112x112x80 at 1 mm
    throughput = json.loads(args.throughput.read_text(encoding="utf-8"))
    ours_batch = 1  # the CPU default at this window size (Backend.default_batch_size_for)
    ref_batch = 4 if seconds_per_window(throughput, spec.width, 4, False) else 2
    ref_s = seconds_per_window(throughput, spec.width, ref_batch, False)
    ours_s = seconds_per_window(throughput, spec.width, ours_batch, spec.width <= CPU_CHANNELS_LAST_MAX_WIDTH)
    if ref_s is None or ours_s is None:
        raise SystemExit(f"{args.throughput} lacks torch fp32 rows for width {spec.width}")
    rows = []
    for path in make_scans(args.work / "scans", args.cases, args.size, args.seed):
        ref_windows, ref_shape = reference_window_count(path, spec)
        row = {"case": path.name, "reference_grid": "x".join(map(str, ref_shape)), "reference_windows": ref_windows}
        for name, overlap, skip_air in (
            ("ours", 0.25, True),
            ("ours_overlap0.1", 0.1, True),
            ("ours_no_skip", 0.25, False),
        ):
            count, shape = ours_window_count(path, spec, overlap, skip_air)
            row[f"{name}_windows"] = count
            if name == "ours":
                row["ours_grid"] = "x".join(map(str, shape))
        row["reference_network_s"] = ref_windows * ref_s
        row["ours_network_s"] = row["ours_windows"] * ours_s
        row["network_ratio"] = row["reference_network_s"] / row["ours_network_s"]
        row["network_ratio_overlap0.1"] = row["reference_network_s"] / (row["ours_overlap0.1_windows"] * ours_s)
        rows.append(row)
    print_table(
        f"full width {spec.width}, window {spec.roi_size} at {spec.target_spacing} mm: windows, and network "
        f"seconds at {ref_s:.1f} s/window (reference, batch {ref_batch}) and {ours_s:.1f} s/window (ours, batch "
        f"{ours_batch}) from {args.throughput.name}",
        rows,
    )
    write_json(
        args.json,
        {
            "machine": machine(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "spec": spec.to_dict(),
            "seconds_per_window": {
                "reference": ref_s,
                "reference_batch": ref_batch,
                "ours": ours_s,
                "ours_batch": ours_batch,
            },
            "rows": rows,
        },
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Seconds per window for each backend, precision, batch size and width, against the CPU's (or
GPU's) measured convolution ceiling.

The ceiling is a large 5x5x5 Conv3d of the kind the network is made of, timed in the same run;
"fraction" is the network's achieved FLOP/s over it. FLOPs come from the meta-device counter
(2 per multiply-add). Writes JSON and prints a table.

    python benchmarks/window_throughput.py --widths 4 8 16 --batches 1 2 --roi 112 112 80
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, peak_rss_gb, print_table, write_json  # noqa: E402


def timed(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def conv_ceiling(device: str, dtype, repeats: int) -> float:
    """FLOP/s of a large 5x5x5 conv3d (32 -> 32 channels, 64x64x48): what the hardware gives this op,
    the better of the contiguous and channels-last layouts (the backends run channels-last)."""
    import torch

    flops = 2 * 32 * 32 * 125 * 64 * 64 * 48
    best = 0.0
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        conv = torch.nn.Conv3d(32, 32, 5, padding=2, bias=False).to(device).eval().to(memory_format=layout)
        x = torch.randn(1, 32, 64, 64, 48, device=device).contiguous(memory_format=layout)

        def run():
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
                conv(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        best = max(best, flops / timed(run, repeats))
    return best


def make_checkpoint(width: int, roi, folder: Path, spacing: float | None = None) -> Path:
    """A CEDS network of `width` with its seeded initial weights (timing only: the arithmetic per
    window does not depend on the weights); `spacing` (mm, isotropic) else the spec's default."""
    import torch

    from ceds_deploy.checkpoint import save_checkpoint
    from ceds_deploy.network import CedsNet, CedsNetConfig
    from ceds_deploy.spec import ModelSpec

    torch.manual_seed(0)
    config = CedsNetConfig(width=width)
    net = CedsNet(config).eval()
    spacing_field = {} if spacing is None else {"target_spacing": (spacing,) * 3}
    spec = ModelSpec(roi_size=tuple(roi), width=width, **spacing_field)
    path = folder / f"w{width}.pt"
    save_checkpoint(
        path,
        {
            "spec": spec.to_dict(),
            "net_config": dataclasses.asdict(config),
            "teacher": net.state_dict(),
            "student": net.state_dict(),
        },
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--roi", type=int, nargs=3, default=[112, 112, 80])
    # torch-PRECISION[-graph][-contiguous|-cl][-original]: -graph replays CUDA graphs; -contiguous / -cl
    # force channels-last off / on (default: the backend's choice); -original runs the network as
    # trained instead of its CPU form (network/cpu_form.py)
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["torch-fp32", "torch-bf16", "onnxruntime"],
        help="torch-fp32 torch-tf32 torch-bf16 torch-fp16 (a -graph suffix replays a CUDA graph, -original "
        "skips the CPU form) onnxruntime tensorrt",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/window_throughput.json"))
    args = parser.parse_args(argv)

    import torch

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends import create_backend
    from ceds_deploy.errors import CedsError
    from ceds_deploy.network import CedsNet, CedsNetConfig, count_flops

    work = Path(tempfile.mkdtemp(prefix="ceds-throughput-"))
    cuda = args.device.startswith("cuda")
    if cuda:  # strict fp32 ceiling; tf32 gets its own
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
    ceilings = {"fp32": conv_ceiling(args.device, None, args.repeats)}
    if any("bf16" in b for b in args.backends):
        ceilings["bf16"] = conv_ceiling(args.device, torch.bfloat16, args.repeats)
    if cuda:
        ceilings["fp16"] = conv_ceiling(args.device, torch.float16, args.repeats)
        torch.backends.cudnn.allow_tf32 = True
        ceilings["tf32"] = conv_ceiling(args.device, None, args.repeats)
    rows = []
    voxels = args.roi[0] * args.roi[1] * args.roi[2]
    for width in args.widths:
        flops = count_flops(CedsNet(CedsNetConfig(width=width)).eval(), (1, 1, *args.roi))
        checkpoint = make_checkpoint(width, args.roi, work)
        spec = read_spec(checkpoint)
        onnx_path = None
        for name in args.backends:
            kind, _, precision = name.partition("-")
            original = precision.endswith("-original")
            precision = precision.removesuffix("-original")
            # The channels-last lever forced off (-contiguous) or on (-cl); neither: the backend's choice.
            layout = {"-contiguous": False, "-cl": True}.get("-" + precision.rpartition("-")[2])
            precision = precision.removesuffix("-contiguous").removesuffix("-cl")
            graph = precision.endswith("-graph")
            precision = precision.removesuffix("-graph")
            artifact, options = checkpoint, {}
            if kind == "torch":
                options = {"precision": precision or "fp32", "cuda_graph": graph, "channels_last": layout}
                options["cpu_form"] = not original
            elif kind == "tensorrt":
                options = {"cuda_graph": graph}
            else:
                if onnx_path is None:
                    from ceds_deploy.export.onnx_export import export_checkpoint

                    onnx_path = work / f"w{width}.onnx"
                    export_checkpoint(checkpoint, onnx_path, validate=False)
                artifact = onnx_path
            for batch in args.batches:
                try:
                    backend = create_backend(kind, artifact, spec, device=args.device, max_batch_size=batch, **options)
                    if cuda:
                        torch.cuda.reset_peak_memory_stats()
                    with backend:
                        x = torch.rand(batch, 1, *args.roi)

                        def call():
                            backend.infer(x)
                            if cuda:
                                torch.cuda.synchronize()

                        seconds = timed(call, args.repeats, warmup=3 if cuda else 1)
                except CedsError as err:
                    rows.append({"backend": name, "width": width, "batch": batch, "note": str(err)})
                    continue
                per_window = seconds / batch
                ceiling = ceilings.get(precision if precision in ceilings else "fp32")
                rows.append(
                    {
                        "backend": backend.description,
                        "width": width,
                        "batch": batch,
                        "s_per_window": per_window,
                        "mvoxels_per_s": voxels / per_window / 1e6,
                        "gflop_per_window": flops / 1e9,
                        "gflops_achieved": flops / per_window / 1e9,
                        "ceiling_gflops": ceiling / 1e9,
                        "fraction_of_ceiling": flops / per_window / ceiling,
                        "peak_rss_gb": peak_rss_gb(),
                        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
                    }
                )
    print_table(
        f"window throughput, ROI {tuple(args.roi)}, {args.device}",
        rows,
        [
            "backend",
            "width",
            "batch",
            "s_per_window",
            "mvoxels_per_s",
            "gflops_achieved",
            "ceiling_gflops",
            "fraction_of_ceiling",
            "peak_rss_gb",
            "peak_gpu_gb",
            "note",
        ],
    )
    write_json(
        args.json,
        {
            "machine": machine(),
            "roi": args.roi,
            "ceilings_gflops": {k: v / 1e9 for k, v in ceilings.items()},
            "rows": rows,
        },
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

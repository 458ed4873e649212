"""fp32 vs fp16 (mixed-precision) ONNX export at the paper's width: file size, the export's parity
gate against torch fp32, and ONNX Runtime CPU time per 112x112x80 window (informative: the CPU
provider is not where fp16 pays; TensorRT on a GPU is).

    python benchmarks/fp16_onnx.py --width 16 --out benchmarks/results/fp16_onnx.json

The network has random weights (seeded) with non-trivial BatchNorm statistics unless --checkpoint
gives a trained one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402


def random_network(width: int, seed: int = 0):
    from ceds_deploy.network import CedsNet, CedsNetConfig

    torch.manual_seed(seed)
    net = CedsNet(CedsNetConfig(width=width)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 0.6)
                m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
    return net


def ort_seconds_per_window(path: Path, roi, threads: int, repeats: int) -> list[float]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(0, 1, (1, 1, *roi)).astype(np.float32)
    session.run(None, {"image": x})  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {"image": x})
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--roi", type=int, nargs=3, default=(112, 112, 80))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fp16_onnx.json"))
    args = parser.parse_args()

    from ceds_deploy.export.onnx_export import export_network
    from ceds_deploy.spec import ModelSpec

    torch.set_num_threads(args.threads)
    if args.checkpoint:
        from ceds_deploy.checkpoint import load_network

        net, spec = load_network(args.checkpoint)
        weights = f"checkpoint {args.checkpoint.name}"
    else:
        net, spec = random_network(args.width), ModelSpec(width=args.width, roi_size=tuple(args.roi))
        weights = "random (seeded), non-trivial BatchNorm statistics"
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "fp16"):
            out = Path(tmp) / f"model-{precision}.onnx"
            start = time.perf_counter()
            result = export_network(net, spec, out, precision=precision, log=print)
            seconds = time.perf_counter() - start
            times = ort_seconds_per_window(out, spec.roi_size, args.threads, args.repeats)
            report = result.parity
            results[precision] = {
                "size_bytes": result.size_bytes,
                "export_and_gate_seconds": round(seconds, 1),
                "histogram": result.histogram,
                "parity": report.to_dict(),
                "ort_cpu_seconds_per_window": [round(t, 3) for t in times],
            }
            rows.append(
                {
                    "precision": precision,
                    "size MB": result.size_bytes / 1e6,
                    "max |dp|": report.max_prob_diff,
                    "max |dconf|": report.max_confidence_diff,
                    "argmax agreement": report.argmax_agreement,
                    "ORT CPU s/window (median)": statistics.median(times),
                }
            )
    results["fp16_over_fp32_size"] = round(results["fp16"]["size_bytes"] / results["fp32"]["size_bytes"], 4)
    print_table(f"fp32 vs fp16 ONNX, width {spec.width}, ROI {spec.roi_size}", rows)
    write_json(
        args.out,
        {
            "benchmark": "fp16_onnx",
            "machine": machine(),
            "weights": weights,
            "width": spec.width,
            "roi": list(spec.roi_size),
            "threads": args.threads,
            "results": results,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

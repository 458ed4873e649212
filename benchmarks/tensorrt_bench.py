"""TensorRT against PyTorch (fp32 and fp16 autocast) and ONNX Runtime (CPU), one window batch at a time.

Exports the checkpoint (or a random-weight network of --width) to ONNX with the usual check
against PyTorch, builds a TensorRT engine twice (the second build reuses the timing cache),
checks the engine against ONNX Runtime, then times every backend on the same windows. Prints a
table and writes JSON. TensorRT parts are skipped with the reason where TensorRT or a CUDA GPU
is missing; PyTorch on CUDA is still timed when there is a GPU.

    python benchmarks/tensorrt_bench.py --width 16 --roi 112 112 80 --batch 1:4:8 --out trt.json
    python benchmarks/tensorrt_bench.py --checkpoint RUN/checkpoints/best_teacher.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402


def random_checkpoint(folder: Path, width: int, roi: tuple[int, int, int], seed: int = 0) -> Path:
    """A CEDS network with random weights and non-trivial BatchNorm statistics (speed does not
    depend on the weights; parity is more telling when BatchNorm folding has work to do)."""
    import torch

    from ceds_deploy.checkpoint import save_checkpoint
    from ceds_deploy.network import CedsNet, CedsNetConfig
    from ceds_deploy.spec import ModelSpec

    torch.manual_seed(seed)
    net = CedsNet(CedsNetConfig(width=width)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    spec = ModelSpec(roi_size=roi, width=width)
    path = folder / f"random_w{width}.pt"
    save_checkpoint(
        path,
        {
            "spec": spec.to_dict(),
            "net_config": dataclasses.asdict(net.config),
            "teacher": net.state_dict(),
            "student": net.state_dict(),
        },
    )
    return path


def time_backend(backend, batch, iters: int, warmup: int) -> dict:
    """Milliseconds per call (median over `iters`, after `warmup` calls), synchronised on CUDA."""
    import torch

    sync = torch.cuda.synchronize if backend.device.startswith("cuda") and torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        backend(batch)
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        backend(batch)
        sync()
        times.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(times)
    return {"ms_per_batch": ms, "windows_per_s": batch.shape[0] / (ms / 1000), "iters": iters}


def run(args) -> dict:
    import torch

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ceds_deploy.backends.torch_backend import TorchBackend
    from ceds_deploy.errors import BackendUnavailableError
    from ceds_deploy.export.engine_cache import BatchProfile
    from ceds_deploy.export.onnx_export import export_checkpoint
    from ceds_deploy.export.parity import random_windows

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ceds-trt-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else random_checkpoint(work, args.width, tuple(args.roi))
    spec = read_spec(checkpoint)
    profile = BatchProfile.parse(args.batch)
    result: dict = {
        "machine": machine(),
        "checkpoint": str(checkpoint),
        "roi": list(spec.roi_size),
        "width": spec.width,
        "batch_profile": str(profile),
        "timings": [],
        "skipped": [],
    }
    say = print

    onnx_path = work / "model.onnx"
    start = time.perf_counter()
    exported = export_checkpoint(checkpoint, onnx_path, opset=args.opset, log=say)
    fp16_path = work / "model-fp16.onnx"  # strongly typed engines run the ONNX file's own precision
    export_checkpoint(checkpoint, fp16_path, opset=args.opset, precision="fp16", log=say)
    result["export"] = {
        "seconds": time.perf_counter() - start,
        "size_mb": exported.size_bytes / 1e6,
        "nodes": exported.histogram,
        "parity": exported.parity.to_dict(),
    }

    batch = torch.from_numpy(random_windows(spec.roi_size, profile.opt, seed=1))
    rows = result["timings"]
    cuda = torch.cuda.is_available()
    if cuda:
        for precision in ("fp32", "fp16"):
            with TorchBackend(checkpoint, spec, device="cuda", precision=precision, max_batch_size=profile.opt) as b:
                rows.append(
                    {
                        "backend": "torch",
                        "precision": precision,
                        "device": "cuda",
                        "batch": profile.opt,
                        **time_backend(b, batch, args.iters, args.warmup),
                    }
                )
    else:
        result["skipped"].append("torch on CUDA: no CUDA GPU (timed torch on the CPU instead)")
        with TorchBackend(checkpoint, spec, device="cpu", precision="fp32", max_batch_size=1) as b:
            rows.append(
                {
                    "backend": "torch",
                    "precision": "fp32",
                    "device": "cpu",
                    "batch": 1,
                    **time_backend(b, batch[:1], args.cpu_iters, 1),
                }
            )
    with OnnxRuntimeBackend(onnx_path, spec, device="cpu", max_batch_size=1) as b:
        rows.append(
            {
                "backend": "onnxruntime",
                "precision": "fp32",
                "device": "cpu",
                "batch": 1,
                **time_backend(b, batch[:1], args.cpu_iters, 1),
            }
        )

    try:
        from ceds_deploy.backends.tensorrt_runtime import require_tensorrt
        from ceds_deploy.export.tensorrt_build import BuildOptions, build_checked_engine, build_engine

        require_tensorrt("cuda")
    except BackendUnavailableError as err:
        result["skipped"].append(f"TensorRT: {err}")
    else:
        from ceds_deploy.backends.tensorrt_backend import TensorRTBackend

        cache = work / "timing.cache"
        cache.unlink(missing_ok=True)
        options = BuildOptions(batch=profile, workspace_gb=args.workspace_gb, timing_cache=cache)
        built = build_checked_engine(fp16_path, work / "model.engine", options, log=say)
        result["tensorrt"] = {
            "build_seconds": built.seconds,
            "parity": built.parity.to_dict(),
            "sidecar": built.sidecar,
        }
        if args.second_build:
            again = build_engine(fp16_path, work / "again.engine", options)
            result["tensorrt"]["second_build_seconds"] = again.seconds
            result["tensorrt"]["timing_cache_bytes"] = again.timing_cache_loaded_bytes
            say(f"second build with the timing cache: {again.seconds:.1f} s (first {built.seconds:.1f} s)")
        for graph in (False, True):
            with TensorRTBackend(built.engine, spec, cuda_graph=graph, max_batch_size=profile.opt) as b:
                rows.append(
                    {
                        "backend": "tensorrt" + (" + CUDA graph" if graph else ""),
                        "precision": "fp16",
                        "device": "cuda",
                        "batch": profile.opt,
                        **time_backend(b, batch, args.iters, args.warmup),
                    }
                )
    reference = next((r for r in rows if r["backend"] == "torch" and r["precision"] == "fp32"), None)
    for row in rows:
        row["speedup_vs_torch_fp32"] = (
            reference["ms_per_batch"] / row["ms_per_batch"] * row["batch"] / reference["batch"] if reference else None
        )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="A ceds checkpoint (default: random weights of --width).")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--roi", type=int, nargs=3, default=[112, 112, 80])
    parser.add_argument("--batch", default="1:4:8", help="TensorRT profile MIN:OPT:MAX; timings use OPT.")
    parser.add_argument("--opset", type=int, default=17)
    parser.add_argument("--workspace-gb", type=float, default=4.0)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--cpu-iters", type=int, default=2, help="ONNX Runtime CPU calls (slow: a reference only).")
    parser.add_argument(
        "--no-second-build",
        dest="second_build",
        action="store_false",
        help="Skip the second engine build that shows the timing cache at work.",
    )
    parser.add_argument("--workdir", help="Keep the checkpoint, ONNX file and engines here.")
    parser.add_argument("--out", default="tensorrt_bench.json")
    args = parser.parse_args(argv)
    result = run(args)
    print_table(
        f"CEDS width {result['width']}, window {'x'.join(map(str, result['roi']))} "
        f"({result['machine'].get('gpu', result['machine']['cpu'])})",
        result["timings"],
        ["backend", "precision", "device", "batch", "ms_per_batch", "windows_per_s", "speedup_vs_torch_fp32"],
    )
    print(
        f"export: {result['export']['seconds']:.1f} s, {result['export']['size_mb']:.1f} MB; "
        f"ONNX Runtime vs torch max |diff| {result['export']['parity']['max_prob_diff']:.2e}"
    )
    if "tensorrt" in result:
        p = result["tensorrt"]["parity"]
        print(
            f"TensorRT fp16 vs ONNX Runtime: max |diff| probabilities {p['max_prob_diff']:.2e}, "
            f"confidence {p['max_confidence_diff']:.2e}, argmax Dice {p['dice']:.5f}"
        )
    for reason in result["skipped"]:
        print(f"skipped: {reason}")
    print(f"wrote {write_json(Path(args.out), result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

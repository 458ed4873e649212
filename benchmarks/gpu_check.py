"""Everything GPU-specific, checked and timed in one run (for the few minutes a GPU is lent).

1. the GPU tests (`tests/test_gpu.py`: CUDA graph vs eager, GPU vs CPU stitching and resampling);
2. window throughput of the full-width network and width 8: torch fp32 (strict), tf32, bf16, fp16,
   fp16 replayed as a CUDA graph, batches 1/2/4, against the card's measured conv3d ceiling,
   and the fp16-vs-fp32 difference of the outputs;
3. end to end: `ceds segment` on full-size phantoms (512x512, up to 300 slices) with pre-processing,
   stitching and resampling on the GPU; per-stage seconds, wall per case in a folder run, and the
   pure network time of the same windows for the 1.2x target;
4. TensorRT, where it is installed (it is skipped with the reason otherwise).

    python benchmarks/gpu_check.py --out OUT_DIR [--cases 3]

Writes OUT_DIR/gpu_check.json and the JSON of each part; prints tables as it goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402

ROI = (112, 112, 80)


def _make_phantom(args) -> str:
    index, folder, size = args
    from ceds_deploy.io import write_volume
    from ceds_deploy.synthetic import make_case

    image, _ = make_case(index, seed=7, size=size)
    path = Path(folder) / f"full_{index:03d}.nii.gz"
    write_volume(path, image.array, image.geometry)
    return f"{path.name} {image.shape}"


def make_phantoms(folder: Path, cases: int, size: str = "full") -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=cases) as pool:
        return list(pool.map(_make_phantom, [(i, str(folder), size) for i in range(cases)]))


def full_width_checkpoint(folder: Path, width: int = 16) -> Path:
    """A full-width CEDS network with its initial weights (timing only: the arithmetic per window
    does not depend on the weights; the masks it draws mean nothing)."""
    import torch

    from ceds_deploy.checkpoint import save_checkpoint
    from ceds_deploy.network import CedsNet, CedsNetConfig
    from ceds_deploy.spec import ModelSpec

    torch.manual_seed(0)
    config = CedsNetConfig(width=width)
    net = CedsNet(config).eval()
    spec = ModelSpec(roi_size=ROI, width=width, target_spacing=(1.0, 1.0, 1.0))
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


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def precision_difference(checkpoint: Path, device: str) -> dict:
    """fp16 (and bf16, tf32) against strict fp32 on the same windows: max |diff| of probabilities."""
    import torch

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends import create_backend

    spec = read_spec(checkpoint)
    torch.manual_seed(1)
    x = torch.rand(2, 1, *ROI)
    outputs = {}
    precisions = ("fp32", "tf32", "bf16", "fp16") if device.startswith("cuda") else ("fp32",)
    for precision in precisions:
        with create_backend("torch", checkpoint, spec, device=device, max_batch_size=2, precision=precision) as b:
            out = b.infer(x)
            outputs[precision] = (torch.softmax(out.seg_logits, 1)[:, 1].cpu(), out.confidence.cpu())
    ref_p, ref_c = outputs["fp32"]
    return {
        p: {
            "max_prob_diff": float((o[0] - ref_p).abs().max()),
            "max_conf_diff": float((o[1] - ref_c).abs().max()),
            "argmax_agreement": float(((o[0] > 0.5) == (ref_p > 0.5)).float().mean()),
        }
        for p, o in outputs.items()
        if p != "fp32"
    }


def end_to_end(
    scans: Path,
    checkpoint: Path,
    out: Path,
    precision: str,
    graph: bool,
    batch: int,
    device: str,
    io_workers: int | None = None,
) -> dict:
    import torch

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends import create_backend
    from ceds_deploy.inference import SegmentOptions, segment_folder

    spec = read_spec(checkpoint)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with create_backend(
        "torch", checkpoint, spec, device=device, max_batch_size=batch, precision=precision, cuda_graph=graph
    ) as backend:
        # Warm-up on the first scan (cuDNN autotuning, graph capture) so the timed run is steady state.
        first = sorted(scans.glob("*.nii.gz"))[0]
        warm = out / "warm"
        segment_folder(first, warm, backend, SegmentOptions(overwrite=True))
        sync(device)
        start = time.perf_counter()
        run = segment_folder(scans, out / "run", backend, SegmentOptions(overwrite=True, io_workers=io_workers))
        sync(device)
        wall = time.perf_counter() - start
        description = backend.description
    rows = [
        {
            "case": r.case,
            "status": r.status,
            "error": r.error,
            "shape": r.input_shape,
            "windows": r.windows,
            **{f"{k}_s": round(v, 3) for k, v in r.seconds.items()},
        }
        for r in run.rows
    ]
    return {
        "backend": description,
        "batch": batch,
        "io_workers": run_info_workers(out / "run"),
        "wall_s": wall,
        "cases": len(rows),
        "wall_per_case_s": wall / max(1, len(rows)),
        "windows": sum(r["windows"] or 0 for r in rows),
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "rows": rows,
    }


def run_info_workers(folder: Path):
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))["run"].get("io_workers")


def network_only(checkpoint: Path, precision: str, graph: bool, batch: int, windows: int, device: str) -> float:
    """Seconds the backend alone needs for `windows` windows (full batches, inputs already on the GPU)."""
    import torch

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends import create_backend

    spec = read_spec(checkpoint)
    with create_backend(
        "torch", checkpoint, spec, device=device, max_batch_size=batch, precision=precision, cuda_graph=graph
    ) as backend:
        x = torch.rand(batch, 1, *spec.roi_size, device=device)
        for _ in range(3):
            backend.infer(x)
        sync(device)
        calls = max(1, -(-windows // batch))
        start = time.perf_counter()
        for _ in range(calls):
            backend.infer(x)
        sync(device)
        return time.perf_counter() - start


def stage(results: dict, name: str, fn) -> None:
    print(f"\n=== {name}", flush=True)
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as err:  # noqa: BLE001 - one broken part must not lose the others' numbers
        traceback.print_exc()
        results[name] = {"error": f"{type(err).__name__}: {err}"}
    results.setdefault("stage_seconds", {})[name] = round(time.perf_counter() - start, 1)
    print(f"=== {name} done in {results['stage_seconds'][name]} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip: tests throughput e2e tensorrt")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a CPU dry run of the script itself: width 4, small phantoms, no throughput part",
    )
    args = parser.parse_args(argv)

    import torch

    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check here (use --smoke for a CPU dry run)")
        return 2
    if args.smoke:
        args.skip = [*args.skip, "throughput", "tests"]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ceds-gpu-"))
    results: dict = {"machine": machine()}
    print(json.dumps(results["machine"], indent=1), flush=True)

    def save() -> None:
        write_json(out / "gpu_check.json", results)

    if "tests" not in args.skip:

        def tests():
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/test_gpu.py"],
                capture_output=True,
                encoding="utf-8",
            )
            print(proc.stdout[-3000:], proc.stderr[-2000:])
            return {"returncode": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}

        stage(results, "tests", tests)
        save()

    if "throughput" not in args.skip:
        from benchmarks import window_throughput

        def throughput():
            path = out / "window_throughput_gpu.json"
            window_throughput.main(
                [
                    "--device",
                    "cuda",
                    "--widths",
                    "16",
                    "8",
                    "--batches",
                    "1",
                    "2",
                    "4",
                    "--repeats",
                    "10",
                    "--backends",
                    "torch-fp32",
                    "torch-tf32",
                    "torch-bf16",
                    "torch-fp16",
                    "torch-fp16-graph",
                    "--json",
                    str(path),
                ]
            )
            return json.loads(path.read_text(encoding="utf-8"))

        stage(results, "throughput", throughput)
        save()

    checkpoint = full_width_checkpoint(work, width=4 if args.smoke else 16)
    stage(results, "precision", lambda: precision_difference(checkpoint, device))
    save()

    if "e2e" not in args.skip:
        scans = work / "scans"
        stage(results, "phantoms", lambda: make_phantoms(scans, args.cases, "small" if args.smoke else "full"))
        e2e = {}
        variants = (
            (("fp32", False, 2, None),)
            if args.smoke
            else (("fp16", True, 4, None), ("fp16", True, 4, 1), ("fp16", False, 4, None), ("tf32", False, 4, None))
        )
        for precision, graph, batch, io_workers in variants:
            key = f"{precision}{'-graph' if graph else ''}-b{batch}-io{io_workers or 'default'}"

            def run(precision=precision, graph=graph, batch=batch, io_workers=io_workers):
                result = end_to_end(scans, checkpoint, work / key, precision, graph, batch, device, io_workers)
                result["network_only_s"] = network_only(checkpoint, precision, graph, batch, result["windows"], device)
                result["network_per_case_s"] = result["network_only_s"] / max(1, result["cases"])
                result["ratio_to_network"] = result["wall_s"] / result["network_only_s"]
                return result

            stage(e2e, key, run)
            results["end_to_end"] = e2e
            save()
        table = [
            {
                "run": k,
                "backend": v.get("backend"),
                "io_workers": v.get("io_workers"),
                "cases": v.get("cases"),
                "windows": v.get("windows"),
                "wall_per_case_s": v.get("wall_per_case_s"),
                "network_per_case_s": v.get("network_per_case_s"),
                "ratio_to_network": v.get("ratio_to_network"),
                "peak_gpu_gb": v.get("peak_gpu_gb"),
                "error": v.get("error", ""),
            }
            for k, v in e2e.items()
            if k != "stage_seconds"
        ]
        print_table("ceds segment end to end on the GPU (folder run, steady state)", table)
        for k, v in e2e.items():
            if isinstance(v, dict) and "rows" in v:
                print_table(f"per case stages: {k}", v["rows"])

    if "tensorrt" not in args.skip:

        def tensorrt():
            try:
                import tensorrt  # noqa: F401
            except ImportError as err:
                return {"skipped": f"TensorRT is not installed here ({err})"}
            proc = subprocess.run(
                [
                    sys.executable,
                    "benchmarks/tensorrt_bench.py",
                    "--width",
                    "16",
                    "--roi",
                    "112",
                    "112",
                    "80",
                    "--batch",
                    "1:4:8",
                ],
                capture_output=True,
                encoding="utf-8",
            )
            print(proc.stdout[-4000:], proc.stderr[-2000:])
            return {"returncode": proc.returncode, "output_tail": proc.stdout[-2000:]}

        stage(results, "tensorrt", tensorrt)
    save()
    print(f"\nwrote {out / 'gpu_check.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Everything GPU-specific, checked and timed in one run (for the few minutes a GPU is lent): issue 15.

On the three full-size phantoms `make_case(3000 + i, seed=11, size="full")` (written as .nii.gz) and
the paper's width-16 network with random weights (timing only):

- cold_floor: a fresh process's fixed costs (`cuda_first_calls.py`: import, CUDA context, model
  load, the first convolution call, first and steady calls per batch with cuDNN autotuning off/on);
- cold_cli: `ceds segment scans out --model w16.pt --device cuda` in a fresh process, as a user runs
  it (3 times; `--cli-extra` adds one run with other options): wall, time to first mask, the
  report's startup and per-stage seconds;
- cold_monai: a plain MONAI script (`benchmarks/monai_gpu_reference.py`) in a fresh process (2 times),
  each segmenting the folder twice (its second pass is the MONAI warm figure);
- warm: our pipeline in this process after a warm-up scan (`end_to_end`), fp16 batch 4, eager and
  CUDA graph, cuDNN autotuned, with its timeline of progress events, each scan alone, and (eager)
  the scans 4 times over in one folder; the network alone on the same windows beside it
  (`network_alone`: fp16, channels-last, batch 4) and the ratios;
- watch: `ceds segment --watch` in a fresh process, the other scans dropped in one by one: the time
  from each rename to its mask, against that scan's warm time alone;
- train: training steps (`--train-steps`, 50) at the paper's width and patch in fp32 and mixed
  precision (auto): steps/s and step times by phase before and after a validation.

Optional parts (`--parts ... tests throughput precision tensorrt restore_profile train_dice`): the GPU
tests, window throughput per precision, fp16/bf16/tf32 against fp32 outputs, TensorRT,
`restore_profile.py` on the largest phantom (each step after a case's last window, alone on the idle
GPU), `precision_dice.py` (CEDS trained on the phantom benchmark in fp32 and mixed precision side
by side, seed 0: Dice on the held-out scans) and `case_order.py` (the largest prepared scan first
against the readers' order, warm, interleaved). Every part runs in its own
try/except (an error is recorded in the JSON, the others go on), and parts that would start after
`--budget-s` are skipped and say so.

    python benchmarks/gpu_check.py --out OUT_DIR              # on a GPU machine, about 6 minutes
    python benchmarks/gpu_check.py --out OUT_DIR --smoke      # the same parts on the CPU, tiny sizes

Writes OUT_DIR/gpu_check.json after every part; prints tables as it goes. On a machine without
monai, nibabel, SimpleITK or isal, install the bundle `benchmarks/gpu_wheels.sh` builds first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# Appended, not first: on the GPU machine ceds_deploy comes from the installed wheel (PYTHONPATH), whose
# ceds_deploy.training the source folder's ceds_deploy/ lacks; only `benchmarks` comes from here.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from benchmarks import gpu_cold, restore_profile  # noqa: E402
from benchmarks.common import machine, print_table, write_json  # noqa: E402

ROI = (112, 112, 80)


PHANTOM_FIRST_INDEX, PHANTOM_SEED = 3000, 11  # issue 15's scans: 206, 129 and 67 slices of 512x512


def _make_phantom(args) -> str:
    index, folder, size, seed = args
    from ceds_deploy.io import write_volume
    from ceds_deploy.synthetic import make_case

    image, _ = make_case(index, seed=seed, size=size)
    path = Path(folder) / f"{size}_{index:04d}.nii.gz"
    write_volume(path, image.array, image.geometry)
    return f"{path.name} {image.shape}"


def make_phantoms(
    folder: Path, cases: int, size: str = "full", first: int = PHANTOM_FIRST_INDEX, seed: int = PHANTOM_SEED
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=cases) as pool:
        return list(pool.map(_make_phantom, [(first + i, str(folder), size, seed) for i in range(cases)]))


def full_width_checkpoint(folder: Path, width: int = 16, roi: tuple[int, int, int] = ROI, spacing: float = 1.0) -> Path:
    """The paper's network with its initial weights (timing only; the masks it draws mean nothing)."""
    from benchmarks.window_throughput import make_checkpoint

    return make_checkpoint(width, roi, folder, spacing)


def largest_scan(scans: Path) -> Path:
    return max(scans.glob("*.nii.gz"), key=lambda p: p.stat().st_size)


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
    x = torch.rand(2, 1, *spec.roi_size)
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
    autotune: bool = True,
    repeat: int = 0,
    side_streams: bool = True,
) -> dict:
    """Our folder run in this process after a warm-up scan (the steady state), with its timeline of
    progress events, then each scan alone in a folder (the warm time a watched scan is held to)."""
    import torch

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends import create_backend
    from ceds_deploy.inference import SegmentOptions, segment_folder

    spec = read_spec(checkpoint)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    options = {"cudnn_benchmark": autotune} if cuda else {}
    timeline: list[tuple[float, str, int, str]] = []
    with create_backend(
        "torch", checkpoint, spec, device=device, max_batch_size=batch, precision=precision, cuda_graph=graph, **options
    ) as backend:
        # Warm-up on the first scan (cuDNN autotuning, graph capture) so the timed run is steady state.
        first = sorted(scans.glob("*.nii.gz"))[0]
        warm = out / "warm"
        segment_folder(first, warm, backend, SegmentOptions(overwrite=True))
        sync(device)
        start = time.perf_counter()

        def record(event) -> None:
            timeline.append(
                (round(time.perf_counter() - start, 4), event.name, event.count, event.info.get("case", ""))
            )

        options = SegmentOptions(overwrite=True, io_workers=io_workers, side_streams=side_streams)
        run = segment_folder(scans, out / "run", backend, options, progress=record)
        sync(device)
        wall = time.perf_counter() - start
        many = _many_scans(scans, out / "many", repeat) if repeat else None
        many_wall = None
        if many is not None:
            sync(device)
            started = time.perf_counter()
            segment_folder(many, out / "many-run", backend, options)
            sync(device)
            many_wall = time.perf_counter() - started
        single = {}
        for scan in sorted(scans.glob("*.nii.gz")):
            one = out / f"single-{scan.name}"
            started = time.perf_counter()
            segment_folder(scan, one, backend, options)
            sync(device)
            single[scan.name] = time.perf_counter() - started
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
        "side_streams": side_streams,
        "batch": batch,
        "io_workers": run_info_workers(out / "run"),
        "wall_s": wall,
        "cases": len(rows),
        "wall_per_case_s": wall / max(1, len(rows)),
        "windows": sum(r["windows"] or 0 for r in rows),
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "rows": rows,
        "single_scan_s": single,
        "repeat": repeat,
        "many_scans_wall_s": many_wall,  # the scans `repeat` times over in one folder run
        "timeline": [t for t in timeline if t[1] != "windows"] + windows_every(timeline, 10),
    }


def _many_scans(scans: Path, folder: Path, repeat: int) -> Path:
    """A folder holding every scan `repeat` times under other names (hard links): a longer folder run,
    in which the first read and the last write weigh less than in three scans."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(repeat):
        for scan in sorted(scans.glob("*.nii.gz")):
            os.link(scan, folder / f"r{k}_{scan.name}")
    return folder


def windows_every(timeline: list, every: int) -> list:
    """Every `every`-th "windows" event (batches done), to keep the JSON short."""
    batches = [t for t in timeline if t[1] == "windows"]
    return batches[::every] + batches[-1:]


def run_info_workers(folder: Path):
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))["run"].get("io_workers")


def network_only(checkpoint: Path, precision: str, graph: bool, batch: int, windows: int, device: str) -> float:
    """Seconds the backend alone needs for `windows` windows (full batches, inputs already on the GPU,
    cuDNN autotuned like the warm pipeline)."""
    import torch

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends import create_backend

    spec = read_spec(checkpoint)
    options = {"cudnn_benchmark": True} if device.startswith("cuda") else {}
    with create_backend(
        "torch", checkpoint, spec, device=device, max_batch_size=batch, precision=precision, cuda_graph=graph, **options
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


def gpu_tests() -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests/test_gpu.py"],
        capture_output=True,
        encoding="utf-8",
    )
    print(proc.stdout[-3000:], proc.stderr[-2000:])
    return {"returncode": proc.returncode, "summary": proc.stdout.strip().splitlines()[-1:]}


def throughput(out: Path) -> dict:
    from benchmarks import window_throughput

    path = out / "window_throughput_gpu.json"
    backends = ["torch-fp32", "torch-tf32", "torch-bf16", "torch-fp16", "torch-fp16-graph"]
    window_throughput.main(
        ["--device", "cuda", "--widths", "16", "8", "--batches", "1", "2", "4", "--repeats", "10"]
        + ["--backends", *backends, "--json", str(path)]
    )
    return json.loads(path.read_text(encoding="utf-8"))


def tensorrt() -> dict:
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        return {"skipped": f"TensorRT is not installed here ({err})"}
    command = [sys.executable, "benchmarks/tensorrt_bench.py", "--width", "16", "--roi", "112", "112", "80"]
    proc = subprocess.run([*command, "--batch", "1:4:8"], capture_output=True, encoding="utf-8")
    print(proc.stdout[-4000:], proc.stderr[-2000:])
    return {"returncode": proc.returncode, "output_tail": proc.stdout[-2000:]}


def warm(scans: Path, checkpoint: Path, work: Path, device: str, smoke: bool) -> dict:
    """Our pipeline warm (after a warm-up scan) per variant, each with the network alone on the same
    windows; `network_alone` is the issue's reference (fp16, channels-last, batch 4, eager)."""
    # (precision, CUDA graph, batch, side streams); the last: readers and writers on the network's stream
    variants = (
        (("fp32", False, 2, True),)
        if smoke
        else (("fp16", False, 4, True), ("fp16", True, 4, True), ("fp16", False, 4, False))
    )
    results: dict = {}
    for precision, graph, batch, side in variants:
        key = f"{precision}{'-graph' if graph else ''}-b{batch}{'' if side else '-one-stream'}"

        def run(precision=precision, graph=graph, batch=batch, side=side, key=key):
            repeat = 4 if (precision, graph, batch, side) == variants[0] else 0
            result = end_to_end(
                scans, checkpoint, work / key, precision, graph, batch, device, repeat=repeat, side_streams=side
            )
            result["network_only_s"] = network_only(checkpoint, precision, graph, batch, result["windows"], device)
            result["ratio_to_network"] = result["wall_s"] / result["network_only_s"]
            if result["many_scans_wall_s"]:  # the same windows `repeat` times: steady-state throughput
                result["many_scans_ratio_to_network"] = result["many_scans_wall_s"] / (
                    repeat * result["network_only_s"]
                )
            return result

        stage(results, key, run)
    first = results.get(f"{variants[0][0]}-b{variants[0][2]}", {})
    if "network_only_s" in first:
        results["network_alone"] = {
            "windows": first["windows"],
            "seconds": first["network_only_s"],
            "ms_per_window": 1000 * first["network_only_s"] / max(1, first["windows"]),
            "precision": variants[0][0],
            "batch": variants[0][2],
        }
    table = [
        {
            k: v.get(k)
            for k in ("backend", "side_streams", "cases", "windows", "wall_s", "network_only_s", "ratio_to_network")
        }
        for v in results.values()
        if isinstance(v, dict) and "wall_s" in v
    ]
    print_table("our pipeline, warm (folder run after a warm-up scan)", table)
    return results


def watch(results: dict, scans: Path, checkpoint: Path, work: Path, device: str, timeout: float) -> dict:
    """The CLI's --watch (gpu_cold.watched), each dropped scan's latency against its warm time alone
    (the warm part's single_scan_s, same backend settings as the watch: default batch, cuDNN autotuned)."""
    result = gpu_cold.watched(scans, checkpoint, work, device, timeout)
    warm_runs = [v for v in results.get("warm", {}).values() if isinstance(v, dict) and "single_scan_s" in v]
    single = warm_runs[0]["single_scan_s"] if warm_runs else {}
    result["ratio_to_warm_single"] = {
        name: latency / single[name] for name, latency in result["dropped"].items() if latency and name in single
    }
    return result


def cold_floor(checkpoint: Path, work: Path, device: str, timeout: float) -> dict:
    """benchmarks/cuda_first_calls.py in a fresh process: the fixed costs of a cold CUDA process."""
    target = work / "first-calls.json"
    script = Path(__file__).resolve().parent / "cuda_first_calls.py"
    command = [sys.executable, str(script), str(checkpoint), "--device", device, "--json", str(target)]
    result = gpu_cold.run_cold(command, work / "first-calls", timeout)
    if target.is_file():
        result["times"] = json.loads(target.read_text(encoding="utf-8"))
    return result


def train(work: Path, device: str, smoke: bool, steps: int = 50) -> dict:
    """Training steps at the paper's width and patch in fp32 and mixed precision (train_speed)."""
    from benchmarks.train_speed import make_training_cohort, train_steps

    labeled = 2 if smoke else 5
    data = make_training_cohort(work / "train-data", labeled)
    sizes = (
        dict(steps=4, width=2, patch=(32, 32, 16), spacing=4.0)
        if smoke
        else dict(steps=steps, width=16, patch=ROI, spacing=1.0)
    )
    runs: dict = {}
    for precision in ("fp32",) if smoke else ("fp32", "auto"):

        def run(precision=precision):
            return train_steps(data, work, device=device, precision=precision, prefetch=1, labeled=labeled, **sizes)

        stage(runs, precision, run)
    return runs


def train_dice(work: Path, device: str, smoke: bool, timeout: float) -> dict:
    """CEDS trained on the phantom benchmark in fp32 and mixed precision side by side (precision_dice)."""
    from benchmarks import precision_dice

    out = work / "precision-dice"
    command = ["--out", str(out), "--device", device, "--side-by-side", "--timeout-s", str(timeout), "--threads", "6"]
    precision_dice.main(command + (["--smoke"] if smoke else []))
    return json.loads((out / "precision_dice.json").read_text(encoding="utf-8"))


def case_order(scans: Path, checkpoint: Path, out: Path, device: str) -> dict:
    """The largest prepared scan first against the readers' order, warm, interleaved (case_order)."""
    from benchmarks import case_order as order_bench

    path = out / "case_order.json"
    order_bench.main(
        [str(scans), "--model", str(checkpoint), "--device", device, "--io-workers", "0", "--json", str(path)]
    )
    return json.loads(path.read_text(encoding="utf-8"))


PARTS = ("phantoms", "cold_floor", "cold_cli", "cold_monai", "warm", "watch", "train")
OPTIONAL_PARTS = ("tests", "throughput", "precision", "tensorrt", "restore_profile", "train_dice", "case_order")


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--device", default=None, help="cuda (default) or cpu (with --smoke)")
    parser.add_argument("--parts", nargs="*", default=list(PARTS), help=f"of {PARTS + OPTIONAL_PARTS}")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to leave out")
    parser.add_argument("--cli-repeats", type=int, default=3)
    parser.add_argument("--monai-repeats", type=int, default=2)
    parser.add_argument(
        "--cli-extra", default="", help='one more cold CLI run with these options, as one string ("--batch-size 4")'
    )
    parser.add_argument("--train-steps", type=int, default=50)
    parser.add_argument("--train-dice-timeout-s", type=float, default=240.0, help="limit of the train_dice runs")
    parser.add_argument("--budget-s", type=float, default=450.0, help="no part starts after this many seconds")
    parser.add_argument("--timeout-s", type=float, default=150.0, help="limit of one cold process")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a dry run of the script itself: one small phantom, width 4 at 4 mm, one run of each cold part",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Long: runs the parts in order, each in `stage` (its error recorded, the JSON rewritten after it)."""
    args = parse_args(argv)
    began = time.perf_counter()
    import torch

    device = args.device or ("cpu" if args.smoke else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check here (use --smoke --device cpu for a CPU dry run)")
        return 2
    if args.smoke:
        args.cases, args.cli_repeats, args.monai_repeats = 2, 1, 1
    parts = [p for p in args.parts if p not in args.skip]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ceds-gpu-"))
    results: dict = {"machine": machine(), "device": device, "smoke": args.smoke, "parts": parts}
    print(json.dumps(results["machine"], indent=1), flush=True)
    scans = work / "scans"
    checkpoint = (
        full_width_checkpoint(work, width=4, roi=(32, 32, 32), spacing=4.0)
        if args.smoke
        else full_width_checkpoint(work, width=16)
    )
    size = "small" if args.smoke else "full"
    runs = {
        "tests": gpu_tests,
        "throughput": lambda: throughput(out),
        "precision": lambda: precision_difference(checkpoint, device),
        "phantoms": lambda: make_phantoms(scans, args.cases, size),
        "cold_floor": lambda: cold_floor(checkpoint, work, device, args.timeout_s),
        "cold_cli": lambda: gpu_cold.cold_cli(
            scans, checkpoint, work, device, args.cli_repeats, args.timeout_s, args.cli_extra.split()
        ),
        "cold_monai": lambda: gpu_cold.cold_monai(scans, checkpoint, work, device, args.monai_repeats, args.timeout_s),
        "warm": lambda: warm(scans, checkpoint, work, device, args.smoke),
        "watch": lambda: watch(results, scans, checkpoint, work, device, args.timeout_s),
        "train": lambda: train(work, device, args.smoke, args.train_steps),
        "restore_profile": lambda: restore_profile.profile(largest_scan(scans), checkpoint, device),
        "tensorrt": tensorrt,
        "case_order": lambda: case_order(scans, checkpoint, out, device),
        "train_dice": lambda: train_dice(work, device, args.smoke, args.train_dice_timeout_s),
    }
    for part in parts:
        if part not in runs:
            results[part] = {"error": f"unknown part {part!r}; known: {', '.join(runs)}"}
        elif time.perf_counter() - began > args.budget_s:
            results[part] = {"skipped": f"time budget of {args.budget_s:.0f} s spent before this part"}
        else:
            stage(results, part, runs[part])
        results["total_s"] = round(time.perf_counter() - began, 1)
        write_json(out / "gpu_check.json", results)
    print(json.dumps(summary(results), indent=1))
    print(f"\nwrote {out / 'gpu_check.json'}")
    return 0


def summary(results: dict) -> dict:
    """The headline figures of issue 15, where their parts ran."""
    cli, monai, warm_runs = results.get("cold_cli", {}), results.get("cold_monai", {}), results.get("warm", {})
    train_runs = results.get("train", {})
    return {
        "cold_cli_wall_s": cli.get("wall_s"),
        "cold_cli_first_mask_s": cli.get("first_mask_s"),
        "cold_monai_wall_one_pass_s": monai.get("wall_one_pass_s"),
        "cold_monai_first_mask_s": monai.get("first_mask_s"),
        "monai_warm_pass_s": monai.get("warm_pass_s"),
        "warm_wall_s": {k: v.get("wall_s") for k, v in warm_runs.items() if isinstance(v, dict) and "wall_s" in v},
        "warm_ratio_to_network": {
            k: v.get("ratio_to_network") for k, v in warm_runs.items() if isinstance(v, dict) and "wall_s" in v
        },
        "many_scans_ratio_to_network": {
            k: v.get("many_scans_ratio_to_network")
            for k, v in warm_runs.items()
            if isinstance(v, dict) and v.get("many_scans_ratio_to_network")
        },
        "network_alone": warm_runs.get("network_alone"),
        "watch_dropped_s": results.get("watch", {}).get("dropped"),
        "watch_ratio_to_warm_single": results.get("watch", {}).get("ratio_to_warm_single"),
        "train_steps_per_s": {
            k: (v.get("precision"), v.get("steady_steps_per_s"))
            for k, v in train_runs.items()
            if isinstance(v, dict) and k != "stage_seconds"
        },
        "train_dice": {
            precision: {
                "trained_in": row["trained_in"],
                "best_teacher_dice": row["best_teacher"]["dice"],
                "dice_minus_fp32": row["best_teacher"].get("dice_minus_fp32", {}).get("mean"),
            }
            for precision, row in results.get("train_dice", {}).get("comparison", {}).items()
        },
        "total_s": results.get("total_s"),
    }


if __name__ == "__main__":
    raise SystemExit(main())

"""Where a cold GPU process's fixed cost goes, measured in one fresh process (run by gpu_check.py):
importing torch, the CUDA context, loading the network to the device, the first convolution call
(cuDNN handles, lazy kernel loading), and per batch size the first and steady calls with cuDNN
autotuning off and on (fp16 autocast, channels-last, as the torch backend runs them).

    python benchmarks/cuda_first_calls.py CHECKPOINT [--device cuda] [--json OUT.json]
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402


def _timed(fn, device: str) -> float:
    import torch

    start = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batches", type=int, nargs="*", default=[8, 4, 2])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    device = args.device
    cuda = device.startswith("cuda")
    times: dict = {"python_start_to_main_s": time.perf_counter() - STARTED}

    start = time.perf_counter()
    import torch

    times["import_torch_s"] = time.perf_counter() - start
    times["cuda_context_s"] = _timed(lambda: torch.zeros(1, device=device), device)

    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.checkpoint import load_network
    from ceds_deploy.network import CedsInference

    start = time.perf_counter()
    spec = read_spec(args.checkpoint)
    net, _ = load_network(args.checkpoint, "teacher", map_location=device)
    wrapper = CedsInference(net).eval().to(device).to(memory_format=torch.channels_last_3d)
    if cuda:
        torch.cuda.synchronize()
    times["model_load_s"] = time.perf_counter() - start

    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else torch.autocast("cpu", enabled=False)

    def call(batch: int):
        x = torch.rand(batch, 1, *spec.roi_size, device=device).contiguous(memory_format=torch.channels_last_3d)

        def run():
            with torch.inference_mode(), autocast:
                wrapper(x)

        return run

    saved = torch.backends.cudnn.benchmark
    rows = []
    try:
        for benchmark in (False, True):
            torch.backends.cudnn.benchmark = benchmark
            for batch in args.batches:
                run = call(batch)
                first = _timed(run, device)
                steady = [_timed(run, device) for _ in range(5)]
                rows.append({"cudnn_benchmark": benchmark, "batch": batch, "first_s": first, "steady_s": min(steady)})
                print(rows[-1], flush=True)
    finally:
        torch.backends.cudnn.benchmark = saved
    times["calls"] = rows
    times["total_s"] = time.perf_counter() - STARTED
    print(json.dumps(times, indent=1))
    if args.json:
        args.json.write_text(json.dumps(times, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Cold-start pieces of `ceds segment`, each measured on its own:

- imports: seconds for a fresh `python -c "import ..."` of the segment path (the CLI, the folder run,
  the model opener), with and without the network module (which imports MONAI), and torch alone;
- model load: a checkpoint of the given width loaded the old way (network built with random
  initialisation, then the weights loaded) and by `load_network` (mapped file, meta-device build);
- the last batch: seconds per call of a batch of 1..B windows on this device, to see whether
  padding a short batch to the full batch is free here (it is done on CUDA only).

    python benchmarks/cold_start.py --width 16 --out benchmarks/results/cold_start.json
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402

IMPORT_SETS = {
    "torch": "torch",
    "segment path without the network": "ceds_deploy.cli.app, ceds_deploy.inference, ceds_deploy.models",
    "segment path with the network (torch backend)": "ceds_deploy.cli.app, ceds_deploy.inference, "
    "ceds_deploy.models, ceds_deploy.network",
}


def import_seconds(modules: str, repeats: int) -> list[float]:
    """Wall seconds of fresh interpreters importing `modules`, minus an empty interpreter's."""
    times = []
    for _ in range(repeats):
        for code in ("pass", f"import {modules}"):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            elapsed = time.perf_counter() - started
            if code == "pass":
                empty = elapsed
        times.append(elapsed - empty)
    return times


def model_load(width: int, device: str, repeats: int) -> dict:
    import torch

    from ceds_deploy.checkpoint import load_checkpoint, load_network, save_checkpoint
    from ceds_deploy.network import CedsNet, CedsNetConfig
    from ceds_deploy.spec import ModelSpec

    config = CedsNetConfig(width=width)
    net = CedsNet(config).eval()
    spec = ModelSpec(roi_size=(32, 32, 32), target_spacing=(3.0, 3.0, 3.0), width=width)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        state = net.state_dict()
        payload = {"spec": spec.to_dict(), "net_config": dataclasses.asdict(config), "teacher": state}
        save_checkpoint(path, {**payload, "student": state})
        old, new = [], []
        for _ in range(repeats):
            started = time.perf_counter()
            loaded = load_checkpoint(path, device)
            rebuilt = CedsNet(config)
            rebuilt.load_state_dict(loaded["teacher"])
            rebuilt.to(device)
            old.append(time.perf_counter() - started)
            started = time.perf_counter()
            load_network(path, "teacher", map_location=device)
            new.append(time.perf_counter() - started)
    del torch
    return {"width": width, "device": device, "random_init_then_load_s": old, "load_network_s": new}


def batch_call_seconds(width: int, device: str, max_batch: int, roi: int, repeats: int) -> list[dict]:
    import torch

    from ceds_deploy.backends.torch_backend import TorchBackend
    from ceds_deploy.network import CedsNet, CedsNetConfig
    from ceds_deploy.spec import ModelSpec

    spec = ModelSpec(roi_size=(roi, roi, roi), target_spacing=(3.0, 3.0, 3.0), width=width)
    net = CedsNet(CedsNetConfig(width=width)).eval()
    rows = []
    with TorchBackend.from_module(net, spec, device=device, max_batch_size=max_batch) as backend:
        for batch in range(1, max_batch + 1):
            x = torch.rand(batch, 1, roi, roi, roi)
            backend(x)  # first call of this shape
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                backend(x)
                if device != "cpu":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            best = min(times)  # the least disturbed call: other jobs share this machine's cores
            rows.append(
                {"batch": batch, "call_s": best, "per_window_s": best / batch, "median_s": statistics.median(times)}
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-width", type=int, default=4, help="network width for the batch timing")
    parser.add_argument("--roi", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cold_start.json"))
    args = parser.parse_args()
    imports = {name: import_seconds(modules, args.repeats) for name, modules in IMPORT_SETS.items()}
    print_table(
        "imports (s, fresh interpreter, minus an empty one)",
        [{"set": k, "median_s": round(statistics.median(v), 3), "min_s": round(min(v), 3)} for k, v in imports.items()],
    )
    load = model_load(args.width, args.device, args.repeats)
    print_table(
        f"model load, width {args.width} on {args.device} (s)",
        [
            {"way": "random init, then load", "median_s": round(statistics.median(load["random_init_then_load_s"]), 3)},
            {
                "way": "load_network (mapped, meta build)",
                "median_s": round(statistics.median(load["load_network_s"]), 3),
            },
        ],
    )
    batches = batch_call_seconds(args.batch_width, args.device, args.max_batch, args.roi, args.repeats * 3)
    print_table(f"one call per batch size, width {args.batch_width}, {args.roi}^3 windows on {args.device}", batches)
    load_average = os.getloadavg()  # other jobs running beside this one inflate every figure
    write_json(
        args.out,
        {
            "machine": machine(),
            "load_average": load_average,
            "imports_s": imports,
            "model_load": load,
            "batch_calls": batches,
        },
    )


if __name__ == "__main__":
    main()

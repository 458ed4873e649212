"""One folder segmented three ways: a single `ceds segment` process, torchrun with N ranks, and a
local Ray instance (one task per scan); the wall time of each, and whether every output file is
byte-identical to the single run's.

    python benchmarks/launchers.py --cases 6 --ranks 2 --json benchmarks/results/launchers_cpu.json

On a CPU this measures what the launchers cost (start-up, model loads per rank or task), not a
speed-up: the point of torchrun and Ray is more GPUs or machines. Every run gets one OpenMP thread
per process (Ray sets that for a 1-CPU task), so the outputs can be compared exactly. The model is
a seeded width-4 network with the test suite's tiny spec unless --model is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, write_json  # noqa: E402


def make_inputs(root: Path, cases: int, model: Path | None) -> tuple[Path, Path]:
    import torch

    from ceds_deploy.checkpoint import save_checkpoint
    from ceds_deploy.io import write_volume
    from ceds_deploy.network import CedsNet, CedsNetConfig
    from ceds_deploy.spec import ModelSpec
    from ceds_deploy.synthetic import make_case

    scans = root / "scans"
    scans.mkdir()
    for index in range(cases):
        image, _ = make_case(index, 5, "small")
        write_volume(scans / f"case{index:03d}.nii.gz", image.array, image.geometry)
    if model is None:
        model = root / "tiny.pt"
        torch.manual_seed(0)
        config = CedsNetConfig(width=4)
        state = CedsNet(config).eval().state_dict()
        spec = ModelSpec(roi_size=(32, 32, 32), target_spacing=(2.0, 2.0, 2.0), width=4)
        payload = {"spec": spec.to_dict(), "net_config": dataclasses.asdict(config), "teacher": state, "student": state}
        save_checkpoint(model, payload)
    return scans, model


def timed(command: list[str]) -> tuple[float, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, encoding="utf-8", env=env)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
    return time.perf_counter() - started, done.returncode


def digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.endswith(".nii.gz")
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=6)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray run (ray not installed)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ceds-launchers-") as tmp:
        root = Path(tmp)
        scans, model = make_inputs(root, args.cases, args.model)
        segment = ["segment", str(scans)]
        cli = [sys.executable, "-m", "ceds_deploy.cli"]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.ranks)]
        runs = {
            "single": cli + segment + [str(root / "single"), "--model", str(model)],
            f"torchrun_{args.ranks}": torchrun
            + ["-m", "ceds_deploy.cli"]
            + segment
            + [str(root / "torchrun"), "--model", str(model)],
        }
        if not args.no_ray:
            runs["ray_local"] = cli + segment + [str(root / "ray"), "--model", str(model), "--ray", "local"]
        folders = {"single": root / "single", f"torchrun_{args.ranks}": root / "torchrun", "ray_local": root / "ray"}
        results = {}
        for name, command in runs.items():
            load_before = os.getloadavg()[0]  # other jobs on the machine: the times are only comparable under like load
            seconds, code = timed(command)
            same = digests(folders[name]) == digests(folders["single"])
            results[name] = {
                "wall_s": round(seconds, 2),
                "exit_code": code,
                "outputs_identical_to_single": same,
                "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
            print(f"{name:12s} {seconds:7.1f} s  exit {code}  identical to single: {same}")
    if args.json:
        document = {"machine": machine(), "cases": args.cases, "ranks": args.ranks, "runs": results}
        write_json(args.json, {**document, "model": str(args.model or "tiny width-4")})


if __name__ == "__main__":
    main()

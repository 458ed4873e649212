"""Training-step time of the demo's network with OpenMP threads spinning (the default) or sleeping
(OMP_WAIT_POLICY=PASSIVE) when idle, on an idle machine and beside CPU-bound busy loops: the
measurement behind `ceds`'s choice (`ceds_deploy.cli.app.patient_openmp_threads`).

    python benchmarks/openmp_wait_policy.py --json benchmarks/results/openmp_wait_policy.json

Each measurement is a fresh process (the policy is read when torch loads OpenMP) timing semi-
supervised steps of the demo recipe's network on phantom patches.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, print_table, write_json  # noqa: E402

STEP_PROBE = r"""
import json, os, sys, time
import torch
from ceds_deploy.demo.recipe import TESTED_RECIPE
from ceds_deploy.training.batches import step_seeds
from ceds_deploy.training.config import resolve_config
from ceds_deploy.training.loop import Trainer

data, run, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
trainer = Trainer(resolve_config(None, TESTED_RECIPE.training_config(data)), run)
times = []
for step, indices in enumerate(trainer.sampler.epoch(0)[:steps]):
    torch_seed, transform_seed = step_seeds(0, 0, step)
    torch.manual_seed(torch_seed)
    batch = trainer.batches.make(indices, transform_seed, "cpu")
    start = time.perf_counter()
    trainer.stepper.run("warmup" if step < 2 else "semi", batch, 0.5)
    if step >= 4:
        times.append(time.perf_counter() - start)
print(json.dumps({"seconds_per_step": sorted(times)[len(times) // 2], "load": os.getloadavg()[0]}))
"""
BUSY_LOOP = "import time\nend = time.monotonic() + 600\nwhile time.monotonic() < end: pass"


def measure(data: Path, work: Path, policy: str | None, busy: int, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(busy)]
    try:
        done = subprocess.run(
            [sys.executable, "-c", STEP_PROBE, str(data), str(work / f"run-{policy}-{busy}"), str(steps)],
            env=env,
            capture_output=True,
            encoding="utf-8",
            check=True,
            timeout=900,
        )
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    return {"policy": policy or "default (spin)", "busy_loops": busy, **json.loads(done.stdout.splitlines()[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="steps per measurement (the first 4 untimed)")
    parser.add_argument("--busy", type=int, default=2, help="busy loops for the loaded measurements")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from ceds_deploy.synthetic import make_cohort

    with tempfile.TemporaryDirectory(prefix="ceds-omp-") as tmp:
        work = Path(tmp)
        data = make_cohort(work / "data", cases=20, labeled=16, test=0, seed=0)  # 13 steps an epoch
        rows = [
            measure(data, work, policy, busy, args.steps) for busy in (0, args.busy) for policy in (None, "PASSIVE")
        ]
    print_table("seconds per training step (median)", rows, ["policy", "busy_loops", "seconds_per_step", "load"])
    if args.json:
        write_json(args.json, {"machine": machine(), "steps": args.steps, "rows": rows})
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How long a `ceds` process takes to exit after its work, with and without `gc.freeze()` first.

Each run is a fresh process that imports what `ceds segment` imports, runs the width-4 network's
CPU form on one batch, prints the time and ends; the exit is the time from that print to the
process's end as the parent sees it. Both ways interleaved.

    python benchmarks/exit_cost.py --repeats 5 --json benchmarks/results/exit_cost.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, write_json  # noqa: E402

CHILD = """
import gc, sys, time
import torch
import ceds_deploy.inference, ceds_deploy.models, ceds_deploy.io.write
from ceds_deploy.network import CedsNet, CedsNetConfig
from ceds_deploy.network.cpu_form import CpuInference
with torch.inference_mode():
    CpuInference(CedsNet(CedsNetConfig(width=4)).eval())(torch.zeros(4, 1, 32, 32, 32))
if sys.argv[1] == "freeze":
    gc.freeze()
print(time.time(), flush=True)
"""


def exit_seconds(way: str) -> float:
    process = subprocess.run([sys.executable, "-c", CHILD, way], capture_output=True, text=True, check=True)
    ended = time.time()
    return ended - float(process.stdout.split()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/exit_cost.json"))
    args = parser.parse_args(argv)
    seconds: dict[str, list[float]] = {"plain": [], "freeze": []}
    for _ in range(args.repeats):
        for way in seconds:
            seconds[way].append(exit_seconds(way))
    summary = {way: statistics.median(values) for way, values in seconds.items()}
    for way, values in seconds.items():
        print(f"{way:7s} exit {summary[way]:.3f} s (median of {len(values)}: {', '.join(f'{v:.3f}' for v in values)})")
    write_json(args.json, {"machine": machine(), "exit_s": seconds, "median_exit_s": summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

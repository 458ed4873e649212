"""`ceds demo --fresh` as a user runs it (one cold CLI process), optionally with CPU-bound busy loops
beside it, and the numbers that say whether it worked: the four held-out Dice values, their mean,
the wall time, the stage times and the exit code.

    python benchmarks/demo_check.py --out /tmp/demo-quiet --json benchmarks/results/demo_quiet.json
    python benchmarks/demo_check.py --out /tmp/demo-busy --busy 2 --json benchmarks/results/demo_busy.json

The busy loops are plain Python `while True` processes (one core each), started before the demo
and killed when it ends; the load average is sampled every 10 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, write_json  # noqa: E402

BUSY_LOOP = "import time\nend = time.monotonic() + float(__import__('sys').argv[1])\nwhile time.monotonic() < end: pass"


def run(out: Path, busy: int, limit_s: float) -> dict:
    """Run the demo with `busy` busy loops beside it; the loops stop by themselves after `limit_s`."""
    loops = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP, str(limit_s)]) for _ in range(busy)]
    loads: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(10.0):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        ceds = Path(sys.executable).with_name("ceds")
        done = subprocess.run([str(ceds), "demo", "--out", str(out), "--fresh"], timeout=limit_s)
    finally:
        wall = time.perf_counter() - started
        stop.set()
        for loop in loops:
            loop.kill()
            loop.wait()
    record = json.loads((out / "demo.json").read_text(encoding="utf-8")) if (out / "demo.json").is_file() else {}
    dice = {c["case"]: c["dice"] for c in record.get("cases", [])}
    return {
        "exit_code": done.returncode,
        "wall_seconds": round(wall, 1),
        "busy_loops": busy,
        "load_average_during": [round(v, 2) for v in loads],
        "dice": dice,
        "mean_dice": sum(dice.values()) / len(dice) if dice else None,
        "stages": record.get("stages"),
        "verdict": record.get("verdict"),
        "recipe": record.get("recipe"),
        "training": record.get("training"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="demo folder (started fresh)")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound busy loops beside the demo")
    parser.add_argument("--limit-minutes", type=float, default=60.0, help="give up after this long")
    parser.add_argument("--json", type=Path, help="where to write the result")
    args = parser.parse_args(argv)
    result = {
        "machine": machine(),
        "command": "ceds demo --out OUT --fresh",
        **run(args.out, args.busy, args.limit_minutes * 60),
    }
    print(
        json.dumps({k: result[k] for k in ("exit_code", "wall_seconds", "busy_loops", "dice", "mean_dice")}, indent=2)
    )
    if args.json:
        write_json(args.json, result)
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""What a cold `ceds segment` pays for imports: fresh interpreters, each timing one import after torch.

    .venv/bin/python benchmarks/import_cost.py --repeats 3 --json benchmarks/results/import_cost.json

Rows: `monai.networks.nets.vnet` (what the torch path imported before network/vnet_blocks.py) and
`ceds_deploy.network` (what it imports now); each after `import torch`, in a new process, so the
figure is that import's own cost. Also records whether the network module pulls MONAI in.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, write_json  # noqa: E402

PROBE = """
import json, sys, time
import torch
start = time.perf_counter()
import {module}
print(json.dumps({{"seconds": time.perf_counter() - start, "monai_loaded": "monai" in sys.modules}}))
"""
MODULES = ("monai.networks.nets.vnet", "ceds_deploy.network")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/import_cost.json"))
    args = parser.parse_args(argv)
    rows = []
    for _ in range(args.repeats):
        for module in MODULES:  # interleaved, so both see the same machine load
            done = subprocess.run(
                [sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True, check=True
            )
            rows.append({"module": module, **json.loads(done.stdout.strip().splitlines()[-1])})
    for row in rows:
        print(f"{row['module']:28s} {row['seconds']:.3f} s  monai loaded: {row['monai_loaded']}")
    write_json(args.json, {"machine": machine(), "repeats": args.repeats, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

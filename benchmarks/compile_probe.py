"""torch.compile (inductor's CPU code) against eager for the CEDS network, same weights, one process.

    .venv/bin/python benchmarks/compile_probe.py --json benchmarks/results/compile_probe_cpu.json

Per (width, window, batch): compile time (first call), the largest output difference, and the
best of 5 timed calls of each way, twice, interleaved. Random seeded weights: the arithmetic per
window does not depend on them. A probe for issue 20 (is inductor the lever for 1.5x?), not a
setting `ceds segment` uses.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import machine, write_json  # noqa: E402
from benchmarks.window_throughput import timed  # noqa: E402

CASES = ((4, 32, 8), (16, 64, 2))  # (width, cubic window, batch)


def probe(width: int, window: int, batch: int) -> dict:
    import torch

    from ceds_deploy.network import CedsNet, CedsNetConfig

    torch.manual_seed(0)
    net = CedsNet(CedsNetConfig(width=width, dropout=0.0)).eval()
    x = torch.randn(batch, 1, window, window, window)
    with torch.inference_mode():
        eager_out = net(x)
        start = time.perf_counter()
        compiled = torch.compile(net, dynamic=False)
        compiled_out = compiled(x)
        row = {
            "width": width,
            "window": window,
            "batch": batch,
            "compile_s": time.perf_counter() - start,
            "max_abs_diff": max(float((a - b).abs().max()) for a, b in zip(eager_out, compiled_out)),
            "passes": [],
        }
        for _ in range(2):
            eager = timed(lambda: net(x), repeats=5, warmup=2) / batch
            fast = timed(lambda: compiled(x), repeats=5, warmup=2) / batch
            row["passes"].append({"eager_ms_per_window": 1e3 * eager, "compiled_ms_per_window": 1e3 * fast})
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/compile_probe_cpu.json"))
    args = parser.parse_args(argv)
    rows = [probe(*case) for case in CASES]
    for r in rows:
        for p in r["passes"]:
            print(
                f"width {r['width']} window {r['window']}^3 batch {r['batch']}: eager {p['eager_ms_per_window']:.1f} "
                f"ms/window, compiled {p['compiled_ms_per_window']:.1f} "
                f"({p['eager_ms_per_window'] / p['compiled_ms_per_window']:.2f}x; compile {r['compile_s']:.1f} s)"
            )
    write_json(args.json, {"machine": machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does mixed-precision training cost Dice? CEDS trained on the phantom benchmark in fp32 and in mixed
precision, same cohort and seed, each scored on the held-out scans.

    python benchmarks/precision_dice.py --out OUT [--device cuda] [--seeds 0 1 2] \
        [--precisions fp32 auto] [--side-by-side] [--timeout-s 600]

Each (seed, precision) is one `benchmarks/train_methods.py --methods ceds` run in OUT/<precision>
(the demo recipe: width 4, 32^3 patches at 3 mm, 800 steps; 4 labeled, 2 validation and 24
unlabeled scans, 12 held-out test scans), scored through `segment_volume` in fp32 whatever the
training precision. A finished run is not run again. `auto` is bf16 on a GPU that has it (the
default there) and fp32 on the CPU, so a CPU comparison names `bf16`. `--side-by-side` trains the
precisions of a seed at once (on a GPU, whose small-patch steps leave it mostly idle); a run still
going at `--timeout-s` is stopped and its last logged epoch reported.

Writes OUT/precision_dice.json: per precision the mean Dice, HD95 and confidence AUROC over the
test scans (best and final teacher), training seconds, and per test scan the Dice difference from
fp32 (mean, wins, losses, largest, Wilcoxon p).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # ceds_deploy: the installed one
from benchmarks.common import machine, print_table, write_json  # noqa: E402
from benchmarks.train_methods import finite_mean, wilcoxon_p  # noqa: E402

TRAIN_METHODS = Path(__file__).resolve().parent / "train_methods.py"
WEIGHTS = ("best_teacher", "final_teacher")
SHOWN = ("dice", "hd95", "auroc_confidence", "empty_masks")
SMOKE = ["--iterations", "8", "--unlabeled", "2", "--test", "2", "--validations", "1", "--width", "2"]


def train_command(out: Path, seed: int, precision: str, device: str, threads: int | None, smoke: bool) -> list[str]:
    command = [sys.executable, str(TRAIN_METHODS), "--out", str(out), "--seeds", str(seed), "--methods", "ceds"]
    command += ["--device", device, "--precision", precision]
    if threads:
        command += ["--threads", str(threads)]
    return command + (SMOKE if smoke else [])


def last_logged_epoch(out: Path, seed: int) -> dict[str, str] | None:
    """The last row of a run's metrics.csv (how far a stopped run got), with its header's names."""
    metrics = out / "runs" / f"seed{seed}" / "ceds" / "metrics.csv"
    if not metrics.is_file():
        return None
    lines = metrics.read_text(encoding="utf-8").splitlines()
    return None if len(lines) < 2 else dict(zip(lines[0].split(","), lines[-1].split(",")))


def run_seed(args: argparse.Namespace, seed: int) -> dict:
    """Train the seed's runs that are not done yet (at once with --side-by-side); their exit codes."""
    todo = [p for p in args.precisions if not run_result(args.out / p, seed)]
    outcome: dict = {}
    batches = [todo] if args.side_by_side else [[p] for p in todo]
    for batch in batches:
        started = time.perf_counter()
        procs = {}
        for precision in batch:
            folder = args.out / precision
            folder.mkdir(parents=True, exist_ok=True)
            log = (folder / f"seed{seed}.log").open("w", encoding="utf-8")
            command = train_command(folder, seed, precision, args.device, args.threads, args.smoke)
            procs[precision] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
        for precision, (proc, log) in procs.items():
            left = args.timeout_s - (time.perf_counter() - started)
            try:
                code: int | str = proc.wait(timeout=max(left, 1.0))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = "timeout"
            log.close()
            outcome[precision] = {
                "returncode": code,
                "wall_s": round(time.perf_counter() - started, 1),
                "last_epoch": last_logged_epoch(args.out / precision, seed),
            }
            print(f"seed {seed} {precision}: rc {code}, {outcome[precision]['wall_s']} s", flush=True)
    return outcome


def run_result(folder: Path, seed: int) -> dict | None:
    """The seed's CEDS result in a train_methods.json, with that run's settings; None before it exists."""
    path = folder / "train_methods.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    result = saved["results"].get(f"seed{seed}", {}).get("ceds")
    if result is None:
        return None
    trained_in = (last_logged_epoch(folder, seed) or {}).get("precision")  # what `auto` resolved to
    return {**result, "trained_in": trained_in, "settings": saved["settings"], "machine": saved["machine"]}


def compare(results: dict[str, dict[int, dict]], reference: str = "fp32") -> dict:
    """Per precision and weights: means over every test scan of every seed; per-scan Dice differences
    from `reference` where both ran."""
    table: dict = {}
    for precision, seeds in results.items():
        row: dict = {
            "seeds": sorted(seeds),
            "trained_in": sorted({str(seeds[s]["trained_in"]) for s in seeds}),
            "train_seconds": [seeds[s]["train_seconds"] for s in sorted(seeds)],
        }
        for weights in WEIGHTS:
            cases = [c for s in sorted(seeds) for c in seeds[s][weights].values()]
            row[weights] = {
                metric: finite_mean(c[metric] for c in cases) for metric in ("dice", "hd95", "auroc_confidence")
            } | {
                "cases": len(cases),
                "empty_masks": sum(1 for c in cases if not math.isfinite(c["hd95"])),
                "dice_per_seed": [finite_mean(c["dice"] for c in seeds[s][weights].values()) for s in sorted(seeds)],
            }
            if precision != reference and reference in results:
                diffs = [
                    seeds[s][weights][case]["dice"] - results[reference][s][weights][case]["dice"]
                    for s in sorted(seeds)
                    if s in results[reference]
                    for case in seeds[s][weights]
                ]
                row[weights]["dice_minus_" + reference] = {
                    "cases": len(diffs),
                    "mean": sum(diffs) / len(diffs) if diffs else float("nan"),
                    "wins": sum(d > 0 for d in diffs),
                    "losses": sum(d < 0 for d in diffs),
                    "largest": max(diffs, key=abs) if diffs else float("nan"),
                    "wilcoxon_p": wilcoxon_p(diffs),
                }
        table[precision] = row
    return table


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="work folder: one train_methods folder per precision")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    p.add_argument("--side-by-side", action="store_true", help="train a seed's precisions at once")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of each training process")
    p.add_argument("--timeout-s", type=float, default=float("inf"), help="stop a seed's runs after this long")
    p.add_argument("--smoke", action="store_true", help="a dry run: width 2, 8 steps, 2 test scans")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = {seed: run_seed(args, seed) for seed in args.seeds}
    results = {
        precision: {s: r for s in args.seeds if (r := run_result(args.out / precision, s))}
        for precision in args.precisions
    }
    table = compare(results)
    rows = [
        {"precision": p, "weights": w, "seeds": len(t["seeds"]), **{k: v for k, v in t[w].items() if k in SHOWN}}
        for p, t in table.items()
        for w in WEIGHTS
    ]
    print_table("held-out test scans (means over scans and seeds)", rows)
    document = {
        "command": "benchmarks/precision_dice.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "device": args.device,
        "runs": runs,
        "settings": {p: next(iter(r.values()))["settings"] for p, r in results.items() if r},
        "comparison": table,
        "test_scans": {p: {s: r["best_teacher"] for s, r in seeds.items()} for p, seeds in results.items()},
    }
    path = write_json(args.out / "precision_dice.json", document)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

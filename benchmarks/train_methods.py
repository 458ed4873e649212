"""Supervised, mean teacher and CEDS over several seeds, on few labels and many unlabeled scans.

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/train_methods.py --out bench_methods \
        [--seeds 0 1 2] [--iterations 800]

Per seed: a cohort of phantoms made with that seed (4 labeled training scans, 2 labeled validation
scans, 24 unlabeled scans, 12 held-out test scans, size "small"), then the three methods trained on
it with that training seed and the same budget. Every step draws the same labeled volume and
patches in all three (supervised batches hold that labeled volume only, the others add one
unlabeled volume).

Recipe: the demo's short-run recipe (`ceds_deploy.demo.recipe.DemoSettings`: width 4, 32^3 patches
at 3 mm, batch 2, SGD lr 0.08 -> 1e-3 poly, EMA decay 0.95, dropout 0, 2 patches per volume),
800 steps. The paper's recipe (lr 0.01, EMA 0.99, dropout 0.5, 8000 epochs) does not fit a CPU:
at 200 steps it barely leaves the all-background solution.

Scored on the held-out scans through `segment_volume` (the code path of `ceds segment`, torch
backend, largest component kept as the demo does), for the validation-selected teacher
(best_teacher.pt, the checkpoint a user exports) and the final teacher (last.pt): Dice, HD95 (mm,
on the scan's grid; inf when one mask is empty), the confidence map's AUROC for the voxels the mask
gets right (body voxels) and that of max(p, 1 - p). Each test case carries what makes it hard: its
tumour volume, whether it touches a vessel, contrast, and the mass's HU.

Writes OUT/train_methods.json after every finished run (a stopped run resumes where it stopped),
and a summary: per method the mean and spread over seeds, and a paired comparison per test case
(CEDS minus mean teacher, CEDS minus supervised: mean difference, wins/losses, Wilcoxon p).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

METHODS = ("supervised", "mean-teacher", "ceds")
PAIRS = (("ceds", "mean-teacher"), ("ceds", "supervised"), ("mean-teacher", "supervised"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from ceds_deploy.demo.recipe import DemoSettings

    demo = DemoSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench_methods"), help="work folder (cohorts, runs, results)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="cohort and training seeds")
    p.add_argument("--iterations", type=int, default=demo.iterations, help="training steps per method (the budget)")
    p.add_argument("--width", type=int, default=demo.width)
    p.add_argument("--patch", type=int, nargs=3, default=demo.patch, metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, default=demo.spacing, help="isotropic model spacing, mm")
    p.add_argument("--patches-per-volume", type=int, default=demo.patches_per_volume)
    p.add_argument("--lr", type=float, default=demo.lr, help="SGD learning rate (paper 0.01: too slow here)")
    p.add_argument("--ema-decay", type=float, default=demo.ema_decay, help="teacher EMA decay (paper 0.99)")
    p.add_argument("--dropout", type=float, default=demo.dropout, help="V-Net dropout (paper 0.5)")
    p.add_argument("--labeled", type=int, default=4, help="labeled training scans")
    p.add_argument("--val", type=int, default=2, help="extra labeled scans for validation and model selection")
    p.add_argument("--unlabeled", type=int, default=24)
    p.add_argument("--test", type=int, default=12)
    p.add_argument("--validations", type=int, default=8, help="validations per run")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto", help="training precision: auto (mixed on a GPU), fp32, bf16, fp16")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="only merge the train_methods.json of these work folders (seeds run as separate processes) into OUT",
    )
    return p.parse_args(argv)


def make_cohort_once(args: argparse.Namespace, seed: int) -> Path:
    from ceds_deploy.synthetic import make_cohort

    root = args.out / f"cohort_seed{seed}"
    wanted = {"cases": args.labeled + args.val + args.unlabeled, "labeled": args.labeled + args.val, "test": args.test}
    stamp = root / "benchmark_cohort.json"
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == wanted:
        return root
    make_cohort(root, seed=seed, size="small", **wanted)
    stamp.write_text(json.dumps(wanted))
    return root


def split_cases(root: Path, n_val: int):
    """(validation case ids, test LabeledCases) from the cohort's dataset.json."""
    from ceds_deploy.io import case_id
    from ceds_deploy.training.data import LabeledCase

    data = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    labeled = [case_id(Path(item["image"])) for item in data["training"]]
    val = labeled[len(labeled) - n_val :] if n_val else []
    tests = [
        LabeledCase(case_id(Path(img)), root / img, root / lab) for img, lab in zip(data["test"], data["test_labels"])
    ]
    return val, tests


def train_one(method: str, root: Path, val: list[str], seed: int, args: argparse.Namespace) -> Path:
    from ceds_deploy.training.config import TrainConfig
    from ceds_deploy.training.loop import CHECKPOINT_DIR, resume_training, start_training

    run = args.out / "runs" / f"seed{seed}" / method
    epochs = -(-args.iterations // args.labeled)  # one labeled volume per step
    config = TrainConfig(
        data_dir=str(root),
        method=method,
        width=args.width,
        patch=tuple(args.patch),
        spacing=(args.spacing,) * 3,
        iterations=args.iterations,
        seed=seed,
        lr=args.lr,
        min_lr=min(args.lr, 1e-3),
        ema_decay=args.ema_decay,
        dropout=args.dropout,
        batch_size=1 if method == "supervised" else 2,
        patches_per_volume=args.patches_per_volume,
        val_cases=tuple(val),
        val_fraction=0.0,
        val_every=max(1, epochs // max(1, args.validations)),
        rotate90_prob=0.1 if args.patch[0] == args.patch[1] else 0.0,
        device=args.device,
        precision=args.precision,
    )
    last = run / CHECKPOINT_DIR / "last.pt"
    if last.is_file():
        resume_training(run)
    else:
        start_training(config, run)
    return run


def case_traits(case, seed: int) -> dict:
    """What makes a test case hard: tumour volume (mL), touching a vessel, contrast, mass HU."""
    import numpy as np

    from ceds_deploy.io import read_scan
    from ceds_deploy.synthetic.case import generate_case

    label = read_scan(case.label)
    voxel_ml = float(np.prod(label.geometry.spacing)) / 1000.0
    index = int(case.name.rsplit("_", 1)[-1])
    info = generate_case(index, seed, "small", tissue=False).info
    return {
        "tumour_ml": float(np.count_nonzero(label.array)) * voxel_ml,
        "touches_vessel": bool(info["mass_touches_vessel"]),
        "contrast": bool(info["contrast"]),
        "mass_base_hu": float(info["mass_base_hu"]),
    }


def score_checkpoint(checkpoint: Path, tests, device: str) -> dict:
    """Per test case: Dice, HD95 and AUROCs of one teacher through `segment_volume`."""
    from ceds_deploy.backends.torch_backend import TorchBackend
    from ceds_deploy.checkpoint import load_network
    from ceds_deploy.inference import SegmentOptions, segment_volume
    from ceds_deploy.io import read_scan
    from ceds_deploy.qa.metrics import hausdorff95
    from ceds_deploy.training.cache import read_label
    from ceds_deploy.training.validate import score_case

    net, spec = load_network(checkpoint, "teacher")
    # Scored on the raw confidence map: `ceds train` now stores a calibration fitted on the validation
    # cases, and benchmarks/calibration.py measures that one on its own.
    spec = dataclasses.replace(spec, calibration=None)
    options = SegmentOptions(batch_size=4, largest_component=True, save_probabilities=True)
    cases = {}
    with TorchBackend.from_module(net, spec, device=device, max_batch_size=4, precision="fp32") as backend:
        for n, case in enumerate(tests):
            image = read_scan(case.image)
            label = read_label(case, image).array
            seg = segment_volume(image, backend, options)
            body = image.array > spec.crop_threshold_hu
            d, a, m = score_case(seg.mask, seg.confidence, label, body, seed=n, probabilities=seg.probabilities)
            hd = hausdorff95(seg.mask > 0, label > 0, image.geometry.spacing)
            cases[case.name] = {"dice": d, "hd95": hd, "auroc_confidence": a, "auroc_maxprob": m}
    return cases


def evaluate_run(run: Path, tests, device: str) -> dict:
    from ceds_deploy.checkpoint import load_checkpoint

    last = run / "checkpoints" / "last.pt"
    best = run / "checkpoints" / "best_teacher.pt"
    payload = load_checkpoint(last)
    out = {
        "steps": payload["global_step"],
        "train_seconds": sum(row["seconds"] for row in payload["history"]),  # steps only, over resumes
        "final_teacher": score_checkpoint(last, tests, device),
    }
    if best.is_file():
        out["best_teacher"] = score_checkpoint(best, tests, device)
        out["best_teacher_epoch"] = load_checkpoint(best)["best"].get("teacher_epoch")
    return out


def finite_mean(values) -> float:
    """Mean of the finite values (HD95 is inf when a mask is empty; those are counted separately)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def wilcoxon_p(diffs: list[float]) -> float:
    """Wilcoxon signed-rank p of paired differences (NaN below 6 non-zero ones)."""
    from scipy.stats import wilcoxon

    nonzero = [d for d in diffs if d != 0]
    return float(wilcoxon(nonzero).pvalue) if len(nonzero) >= 6 else float("nan")


def _spread(values: list[float]) -> dict:
    import numpy as np

    a = np.asarray(values, dtype=float)
    return {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if a.size > 1 else 0.0, "per_seed": a.tolist()}


def summarize(results: dict, weights: str = "best_teacher") -> dict:
    """Per method: mean and spread over seeds of the per-seed means; paired per-case differences."""
    methods = sorted({m for seed in results.values() for m in seed}, key=METHODS.index)
    table = {}
    for m in methods:
        runs = [seed[m][weights] for seed in results.values() if m in seed]
        per_seed = {
            metric: [finite_mean([c[metric] for c in run.values()]) for run in runs]
            for metric in ("dice", "hd95", "auroc_confidence", "auroc_maxprob")
        }
        table[m] = {metric: _spread(v) for metric, v in per_seed.items()}
        table[m]["empty_masks"] = sum(1 for run in runs for c in run.values() if not math.isfinite(c["hd95"]))
    paired = {}
    for a, b in PAIRS:
        diffs = [
            seed[a][weights][case]["dice"] - seed[b][weights][case]["dice"]
            for seed in results.values()
            if a in seed and b in seed
            for case in seed[a][weights]
        ]
        if not diffs:
            continue
        paired[f"{a} - {b}"] = {
            "cases": len(diffs),
            "mean_dice_difference": sum(diffs) / len(diffs),
            "wins": sum(d > 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs),
            "wilcoxon_p": wilcoxon_p(diffs),
        }
    return {"weights": weights, "methods": table, "paired_dice": paired}


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"held-out test scans, {summary['weights']} (mean ± sd over seeds)")
    for col in ("method", "Dice", "HD95 mm", "AUROC confidence", "AUROC max-prob", "empty masks"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for method, r in summary["methods"].items():
        cells = [
            f"{r[k]['mean']:.3f} ± {r[k]['sd']:.3f}" for k in ("dice", "hd95", "auroc_confidence", "auroc_maxprob")
        ]
        table.add_row(method, *cells, str(r["empty_masks"]))
    console = Console(width=150)
    console.print(table)
    for pair, p in summary["paired_dice"].items():
        console.print(
            f"{pair}: mean Dice difference {p['mean_dice_difference']:+.3f} over {p['cases']} cases,"
            f" {p['wins']} wins / {p['losses']} losses, Wilcoxon p = {p['wilcoxon_p']:.3g}"
        )


def combine(folders: list[Path], out: Path) -> Path:
    """One train_methods.json from the runs of several work folders, the summary computed anew."""
    from ceds_deploy.io import write_atomic_text

    parts = [json.loads((f / "train_methods.json").read_text(encoding="utf-8")) for f in folders]
    results = {seed: runs for part in parts for seed, runs in part["results"].items()}
    report = {
        "combined_from": [
            {"folder": str(f), "command": p["command"], "date": p["date"]} for f, p in zip(folders, parts)
        ],
        "settings": parts[0]["settings"],
        "machine": parts[0]["machine"],
        "test_cases": {seed: cases for part in parts for seed, cases in part["test_cases"].items()},
        "results": results,
        "summary": {w: summarize(results, w) for w in ("best_teacher", "final_teacher")},
    }
    out.mkdir(parents=True, exist_ok=True)
    write_atomic_text(out / "train_methods.json", json.dumps(report, indent=2) + "\n")
    return out / "train_methods.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        path = combine(args.combine, args.out)
        for weights in ("best_teacher", "final_teacher"):
            print_summary(json.loads(path.read_text(encoding="utf-8"))["summary"][weights])
        print(f"wrote {path}")
        return 0
    import platform

    import torch

    from ceds_deploy.io import write_atomic_text

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result_path = args.out / "train_methods.json"
    saved = json.loads(result_path.read_text(encoding="utf-8")) if result_path.is_file() else {}
    results: dict = saved.get("results", {})
    traits: dict = saved.get("test_cases", {})
    started = time.perf_counter()
    for seed in args.seeds:
        root = make_cohort_once(args, seed)
        val, tests = split_cases(root, args.val)
        key = f"seed{seed}"
        traits[key] = traits.get(key) or {c.name: case_traits(c, seed) for c in tests}
        for method in args.methods:
            if method in results.get(key, {}):
                continue
            run = train_one(method, root, val, seed, args)
            results.setdefault(key, {})[method] = {"validation_cases": val, **evaluate_run(run, tests, args.device)}
            report = {
                "command": "benchmarks/train_methods.py " + " ".join(sys.argv[1:]),
                "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                "machine": {
                    "cpu_threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                },
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "wall_seconds_this_invocation": round(time.perf_counter() - started, 1),
                "test_cases": traits,
                "results": results,
                "summary": {w: summarize(results, w) for w in ("best_teacher", "final_teacher")},
            }
            write_atomic_text(result_path, json.dumps(report, indent=2) + "\n")
            print(f"{key} {method}: done ({time.perf_counter() - started:.0f} s so far)", flush=True)
    saved = json.loads(result_path.read_text(encoding="utf-8"))
    for weights in ("best_teacher", "final_teacher"):
        print_summary(saved["summary"][weights])
    print(f"wrote {result_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

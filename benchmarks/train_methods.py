"""Train `supervised`, `mean-teacher` and `ceds` on one phantom cohort with the same seed and budget,
then segment the held-out test cases with each network through `segment_volume` (the code path of
`ceds segment`, torch backend) and compare.

    .venv/bin/python benchmarks/train_methods.py --out bench_train [--iterations 200] [--threads 2]

Budget (default): 200 steps per method at width 4, 32^3 patches, 3 mm, SGD lr 0.05 for all three
(the paper's 0.01 barely leaves the all-background solution in 200 steps: supervised test Dice 0.00
at lr 0.01 vs 0.10 at lr 0.05). About 3 (supervised) to 10 (mean-teacher, ceds) minutes per method
on one CPU thread.

Cohort (default): 4 labeled + 2 labeled validation + 16 unlabeled training cases, 8 test cases,
size "small". All three runs get the same iterations, seed, width, patch and spacing; every step
draws the same labeled volume and patches in all three (supervised batches hold that labeled
volume only, the others add one unlabeled volume). Reported per method, on the test cases, for the
final (last.pt) teacher and student: mean Dice; AUROC of the confidence map for predicting the
voxels the mask gets right (body voxels); the same AUROC for max(p, 1 - p) of the softmax, the
baseline a confidence head has to beat; and the test Dice of the validation-selected teacher
(best_teacher.pt). supervised and mean-teacher do not train the confidence head, so their
confidence AUROC is that of an untrained head.

Writes OUT/train_methods.json; prints a table. A run stopped midway resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

METHODS = ("supervised", "mean-teacher", "ceds")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench_train"), help="work folder (cohort, runs, results)")
    p.add_argument("--iterations", type=int, default=200, help="training steps per method (the budget)")
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--patch", type=int, nargs=3, default=(32, 32, 32), metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, default=3.0, help="isotropic model spacing, mm")
    p.add_argument("--patches-per-volume", type=int, default=3)
    p.add_argument(
        "--lr",
        type=float,
        default=0.05,
        help="SGD learning rate of both optimizers (paper: 0.01, too slow for a CPU-sized budget)",
    )
    p.add_argument(
        "--ema-decay", type=float, default=0.99, help="teacher EMA decay (paper 0.99; the demo's short runs 0.95)"
    )
    p.add_argument("--dropout", type=float, default=0.5, help="V-Net dropout (paper 0.5; the demo 0.0)")
    p.add_argument("--labeled", type=int, default=4, help="labeled training cases")
    p.add_argument("--val", type=int, default=2, help="extra labeled cases for validation (0: none)")
    p.add_argument("--unlabeled", type=int, default=16)
    p.add_argument("--test", type=int, default=8)
    p.add_argument("--validations", type=int, default=4, help="validations per run")
    p.add_argument("--seed", type=int, default=0, help="training seed (the cohort always uses seed 0)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def make_cohort_once(args: argparse.Namespace) -> Path:
    from ceds_deploy.synthetic import make_cohort

    root = args.out / "cohort"
    wanted = {"cases": args.labeled + args.val + args.unlabeled, "labeled": args.labeled + args.val, "test": args.test}
    stamp = root / "benchmark_cohort.json"
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == wanted:
        return root
    make_cohort(root, seed=0, size="small", **wanted)
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


def train_one(method: str, root: Path, val: list[str], args: argparse.Namespace) -> tuple[Path, float]:
    from ceds_deploy.training.config import TrainConfig
    from ceds_deploy.training.loop import CHECKPOINT_DIR, resume_training, start_training

    run = args.out / "runs" / method
    steps_per_epoch = args.labeled  # one labeled volume per step
    epochs = -(-args.iterations // steps_per_epoch)
    config = TrainConfig(
        data_dir=str(root),
        method=method,
        width=args.width,
        patch=tuple(args.patch),
        spacing=(args.spacing,) * 3,
        iterations=args.iterations,
        seed=args.seed,
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
    )
    start = time.perf_counter()
    last = run / CHECKPOINT_DIR / "last.pt"
    if last.is_file():
        resume_training(run)
    else:
        start_training(config, run)
    return run, time.perf_counter() - start


def evaluate_run(run: Path, tests, device: str) -> dict:
    """Test-set scores of the final teacher and student, and of the validation-selected teacher."""
    from ceds_deploy.checkpoint import load_checkpoint, load_network
    from ceds_deploy.training.validate import validate

    out: dict = {}
    last = run / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    nets = {}
    for weights in ("teacher", "student"):
        nets[weights], spec = load_network(last, weights)
    result = validate(nets, tests, spec, device=device, maxprob=True)
    for name in nets:
        out[name] = {
            "dice": result.mean(name, "dice"),
            "auroc_confidence": result.mean(name, "auroc"),
            "auroc_maxprob": result.mean(name, "auroc_maxprob"),
            "dice_per_case": {c.case: c.dice for c in result.cases if c.network == name},
        }
    best = run / "checkpoints" / "best_teacher.pt"
    if best.is_file():
        net, spec = load_network(best, "teacher")
        picked = validate({"teacher": net}, tests, spec, device=device)
        out["best_teacher"] = {
            "dice": picked.mean("teacher", "dice"),
            "epoch": load_checkpoint(best)["best"].get("teacher_epoch"),
        }
    out["steps"] = payload["global_step"]
    out["train_seconds"] = sum(row["seconds"] for row in payload["history"])  # steps only, over resumes
    return out


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="supervised vs mean-teacher vs CEDS on the phantom test cases (final weights)")
    for col in (
        "method",
        "steps",
        "train min",
        "Dice teacher",
        "Dice student",
        "AUROC conf (teacher)",
        "AUROC max-prob (teacher)",
        "Dice val-best teacher",
    ):
        table.add_column(col, justify="right" if col != "method" else "left")
    fmt = lambda v: "-" if v is None or v != v else f"{v:.3f}"  # noqa: E731 - nan -> '-'
    for method, r in results.items():
        table.add_row(
            method,
            str(r["steps"]),
            f"{r['train_seconds'] / 60:.1f}",
            fmt(r["teacher"]["dice"]),
            fmt(r["student"]["dice"]),
            fmt(r["teacher"]["auroc_confidence"]),
            fmt(r["teacher"]["auroc_maxprob"]),
            fmt(r.get("best_teacher", {}).get("dice")),
        )
    Console(width=150).print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from ceds_deploy.io import write_atomic_text

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    root = make_cohort_once(args)
    val, tests = split_cases(root, args.val)
    results = {}
    for method in args.methods:
        run, seconds = train_one(method, root, val, args)
        results[method] = {"wall_seconds": seconds, **evaluate_run(run, tests, args.device)}
    report = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "threads": torch.get_num_threads(),
        "test_cases": [c.name for c in tests],
        "validation_cases": val,
        "results": results,
    }
    write_atomic_text(args.out / "train_methods.json", json.dumps(report, indent=2) + "\n")
    print_table(results)
    print(f"wrote {args.out / 'train_methods.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

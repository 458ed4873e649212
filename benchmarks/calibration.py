"""Calibration of the confidence map and the review score, measured on held-out cases.

    .venv/bin/python benchmarks/calibration.py RUN/checkpoints/best_teacher.pt [...] --data COHORT \
        --json benchmarks/results/calibration.json [--extra-phantoms 24] [--largest-component]

For each checkpoint: fit the calibration (training.calibrate, isotonic per predicted class) on the
validation cases (--val-cases, else the run's split.json two folders up), then on the held-out cases
(COHORT/imagesTs + labelsTs, plus --extra-phantoms new phantoms of ids never in a cohort) report:
the ECE (15 equal-width bins, voxels of the predicted tumour and within the margin of it) of the raw
and the calibrated map, a reliability diagram PNG beside the JSON, and how well the case score (the
expected Dice from the calibrated map, qa.review) ranks the cases by their true Dice: the AUROC of
(1 - expected Dice) for "Dice below 0.7" and the Spearman correlation of expected and true Dice;
the raw map's mean confidence in the tumour (the old flag's input) beside it. Cases of all
checkpoints are also pooled. The calibration stored in a checkpoint is ignored (refitted here).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

EXTRA_START = 3000  # phantom ids of the extra held-out cases (cohorts use 0.. and 1000..)
BAD_DICE = 0.7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="*", type=Path, help="checkpoints (.pt) of trained runs")
    p.add_argument("--data", type=Path, help="cohort folder: dataset.json/imagesTr/labelsTr/imagesTs/labelsTs")
    p.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="only pool the results of earlier runs (e.g. one per cohort) into --json",
    )
    p.add_argument("--json", type=Path, required=True, help="where the results go (the PNGs beside it)")
    p.add_argument("--val-cases", default=None, help="comma-separated validation case ids to fit on")
    p.add_argument("--extra-phantoms", type=int, default=0, help="new held-out phantoms to add (cached beside --json)")
    p.add_argument(
        "--phantom-dir", type=Path, default=None, help="cache of the extra phantoms (default: beside --json)"
    )
    p.add_argument("--phantom-seed", type=int, default=0, help="cohort seed of the extra phantoms")
    p.add_argument("--weights", default="teacher", choices=("teacher", "student"))
    p.add_argument("--margin", type=float, default=10.0, help="mm around the predicted tumour that counts")
    p.add_argument("--largest-component", action="store_true", help="as ceds segment --largest-component")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return p.parse_args(argv)


def extra_phantoms(folder: Path, count: int, seed: int):
    """`count` phantoms of ids EXTRA_START.. written once under folder/imagesTs + labelsTs."""
    from ceds_deploy.io import write_volume
    from ceds_deploy.synthetic import make_case
    from ceds_deploy.training.calibrate import pick_cases

    for i in range(EXTRA_START, EXTRA_START + count):
        name = f"phantom_{i:04d}_s{seed}.nii.gz"
        if not (folder / "labelsTs" / name).is_file():
            image, label = make_case(i, seed, "small")
            write_volume(folder / "imagesTs" / name, image.array, image.geometry)
            write_volume(folder / "labelsTs" / name, label.array, label.geometry)
    return pick_cases(folder, held_out=True)[:count] if count else []


def validation_ids(checkpoint: Path, given: str | None) -> list[str]:
    if given:
        return [n.strip() for n in given.split(",") if n.strip()]
    split = checkpoint.resolve().parent.parent / "split.json"
    if not split.is_file():
        sys.exit(f"{checkpoint}: no --val-cases and no {split}")
    return list(json.loads(split.read_text(encoding="utf-8"))["validation"])


def evaluate_checkpoint(checkpoint: Path, fit_cases, held_out, args: argparse.Namespace, png: Path) -> dict:
    """Fit on `fit_cases`, score `held_out`; the per-case rows and the ECEs."""
    from ceds_deploy.checkpoint import load_network
    from ceds_deploy.inference import SegmentOptions
    from ceds_deploy.qa.calibration import CalibrationSamples, calibration_region, write_reliability_png
    from ceds_deploy.qa.metrics import dice
    from ceds_deploy.qa.review import expected_dice
    from ceds_deploy.training.calibrate import fit_on_cases, raw_predictions

    options = SegmentOptions(largest_component=args.largest_component)
    net, spec = load_network(checkpoint, args.weights)
    started = time.perf_counter()
    calibration, fit_samples = fit_on_cases(net, spec, fit_cases, options, args.device, args.margin)
    held = CalibrationSamples()
    rows = []
    for p in raw_predictions(net, spec, held_out, options, args.device):
        region = calibration_region(p.mask, p.spacing, args.margin)
        held.add(p.mask, p.confidence, p.label, region)
        tumour = p.mask > 0
        raw_mean = float(p.confidence[tumour].mean()) if tumour.any() else 0.0
        calibrated = calibration.apply(p.confidence.copy(), p.mask)
        rows.append(
            {
                "case": p.case,
                "dice": dice(tumour, p.label > 0),
                "expected_dice": expected_dice(p.mask, calibrated, p.spacing, args.margin),
                "raw_mean_confidence": raw_mean,
            }
        )
    curves = {"raw": held.histogram(), "calibrated": held.histogram(calibration)}
    write_reliability_png(png, curves, f"{checkpoint.name}: {len(rows)} held-out cases (fitted on {len(fit_cases)})")
    return {
        "checkpoint": str(checkpoint),
        "fit_cases": [c.name for c in fit_cases],
        "ece_fit_before": fit_samples.ece(),
        "ece_fit_after": fit_samples.ece(calibration),
        "ece_held_out_before": held.ece(),
        "ece_held_out_after": held.ece(calibration),
        "ece_held_out_by_class_before": {
            name: _class_ece(held, None, k) for k, name in enumerate(("background", "tumour"))
        },
        "ece_held_out_by_class_after": {
            name: _class_ece(held, calibration, k) for k, name in enumerate(("background", "tumour"))
        },
        "held_out_fraction_right_by_class": {
            name: float(held.right[k].sum() / max(held.voxels[k].sum(), 1))
            for k, name in enumerate(("background", "tumour"))
        },
        "held_out_voxels": int(held.voxels.sum()),
        "knots": [len(t) for t in calibration.tables],
        "reliability_png": png.name,
        "seconds": round(time.perf_counter() - started, 1),
        **ranking(rows),
        "cases": rows,
    }


def _class_ece(samples, calibration, k: int) -> float:
    from ceds_deploy.qa.metrics import expected_calibration_error

    one = type(samples)()
    one.voxels[k], one.right[k] = samples.voxels[k], samples.right[k]
    return expected_calibration_error(*one.histogram(calibration))


def ranking(rows: list[dict]) -> dict:
    """How well the scores rank the cases by true Dice."""
    from scipy.stats import spearmanr

    from ceds_deploy.qa.metrics import auroc

    true = np.array([r["dice"] for r in rows])
    bad = true < BAD_DICE
    out: dict = {"cases_n": len(rows), "cases_dice_below_0_7": int(bad.sum())}
    for key in ("expected_dice", "raw_mean_confidence"):
        score = np.array([r[key] for r in rows])
        out[f"auroc_dice_below_0_7_{key}"] = auroc(-score, bad)
        out[f"spearman_{key}"] = float(spearmanr(score, true).statistic) if len(rows) > 2 else float("nan")
    flagged = np.array([r["expected_dice"] < BAD_DICE for r in rows])
    out["flagged_at_0_7"] = int(flagged.sum())
    out["flagged_true_bad"] = int((flagged & bad).sum())
    out["mean_abs_error_expected_dice"] = float(np.mean(np.abs(np.array([r["expected_dice"] for r in rows]) - true)))
    return out


def combine(parts: list[Path], out: Path) -> dict:
    """The checkpoints of several result files in one, pooled anew, with each one's ECE beside."""
    from ceds_deploy.io import write_atomic_text

    loaded = [json.loads(p.read_text(encoding="utf-8")) for p in parts]
    results = [c for part in loaded for c in part["checkpoints"]]
    report = {
        "command": " ".join(sys.argv),
        "combined_from": [{"file": str(p), "command": part["command"]} for p, part in zip(parts, loaded)],
        "ece_definition": loaded[0]["ece_definition"],
        "ece_held_out": [
            {"checkpoint": c["checkpoint"], "before": c["ece_held_out_before"], "after": c["ece_held_out_after"]}
            for c in results
        ],
        "checkpoints": results,
        "pooled": ranking([r for c in results for r in c["cases"]]),
    }
    write_atomic_text(out, json.dumps(report, indent=2, allow_nan=True) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.combine:
        pooled = combine(args.combine, args.json)["pooled"]
        print(f"pooled over {pooled['cases_n']} cases: {json.dumps(pooled)}; wrote {args.json}")
        return 0
    if not args.checkpoints or args.data is None:
        raise SystemExit("give checkpoints and --data (or --combine JSON...)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from ceds_deploy.io import write_atomic_text
    from ceds_deploy.training.calibrate import pick_cases

    held_out = pick_cases(args.data, held_out=True)
    held_out += extra_phantoms(
        args.phantom_dir or args.json.parent / "calibration_phantoms", args.extra_phantoms, args.phantom_seed
    )
    results = []
    for n, checkpoint in enumerate(args.checkpoints):
        fit_cases = pick_cases(args.data, validation_ids(checkpoint, args.val_cases))
        png = args.json.with_name(f"{args.json.stem}_reliability_{n}.png")
        result = evaluate_checkpoint(checkpoint, fit_cases, held_out, args, png)
        results.append(result)
        print(
            f"{checkpoint}: ECE held-out {result['ece_held_out_before']:.3f} -> {result['ece_held_out_after']:.3f}; "
            f"E[Dice] AUROC(Dice<0.7) {result['auroc_dice_below_0_7_expected_dice']:.3f}, "
            f"Spearman {result['spearman_expected_dice']:.3f} over {result['cases_n']} cases"
        )
    pooled = ranking([r for result in results for r in result["cases"]])
    report = {
        "command": " ".join(sys.argv),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "checkpoints"},
        "ece_definition": "15 equal-width bins of confidence; sum of (bin's voxel share) x |fraction right - "
        "mean confidence|; voxels: predicted tumour and within the margin of it",
        "checkpoints": results,
        "pooled": pooled,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_atomic_text(args.json, json.dumps(report, indent=2, allow_nan=True) + "\n")
    print(
        f"pooled over {pooled['cases_n']} cases: AUROC {pooled['auroc_dice_below_0_7_expected_dice']:.3f}; "
        f"wrote {args.json}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

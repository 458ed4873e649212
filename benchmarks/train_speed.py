"""Training speed: steps per second of `ceds train`'s loop in each precision, with and without
batches made ahead, and the step times before and after a validation (a validation must not slow
the steps after it).

    python benchmarks/train_speed.py --out OUT [--device cpu|cuda] [--steps 50] [--width 16]
        [--patch 112 112 80] [--spacing 1] [--precisions fp32 auto] [--prefetch 1 0]

One phantom cohort (size small), one run per (precision, prefetch) with the same seed: `steps`
steps, a validation after the first half. Step times are taken between the trainer's own step
events (each step ends with the losses read back, so GPU work is finished); the first few steps
(cuDNN autotuning, first calls) are reported apart. Writes OUT/train_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # ceds_deploy: the installed one
from benchmarks.common import machine, print_table, write_json  # noqa: E402

SETTLE_STEPS = 3  # first steps left out of the steady-state figures


def make_training_cohort(folder: Path, labeled_train: int, size: str = "small") -> Path:
    """A cohort with `labeled_train` labeled training cases, one validation case and as many unlabeled."""
    from ceds_deploy.synthetic import make_cohort

    cases = 2 * labeled_train + 1
    return make_cohort(folder, cases=cases, labeled=labeled_train + 1, test=0, seed=3, size=size)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _phase_medians(times: list[tuple[int, str, float]]) -> dict[str, float | None]:
    return {phase: _median([t for _, p, t in times if p == phase]) for phase in sorted({p for _, p, _ in times})}


def train_steps(
    data: Path,
    work: Path,
    *,
    device: str,
    precision: str,
    steps: int,
    width: int,
    patch: tuple[int, int, int],
    spacing: float,
    prefetch: int,
    labeled: int,
) -> dict:
    """One run of `steps` steps with a validation after the first half; step times by phase before and
    after that validation, steps per second, the validation's own seconds.

    Long: builds the run, collects the trainer's progress events and summarises them in one place."""
    from ceds_deploy.training.config import TrainConfig
    from ceds_deploy.training.loop import Trainer

    config = TrainConfig(
        data_dir=str(data),
        width=width,
        patch=patch,
        spacing=(spacing,) * 3,
        iterations=steps,
        device=device,
        precision=precision,
        prefetch_batches=prefetch,
        val_fraction=1 / (labeled + 1),  # one validation case
        # an epoch is one step per labeled training case: validate about half way, and at the end
        val_every=max(1, (steps // 2) // labeled),
        seed=0,
    )
    times: list[tuple[int, str, float]] = []  # (step, phase, seconds)
    validations: list[int] = []
    clock = [time.perf_counter()]

    def progress(event) -> None:
        now = time.perf_counter()
        if event.name == "step":
            times.append((len(times) + 1, event.info["phase"], now - clock[0]))
        elif event.name == "validated":
            validations.append(len(times))
        clock[0] = time.perf_counter()

    start = time.perf_counter()
    trainer = Trainer(config, work / f"run-{precision}-prefetch{prefetch}", progress=progress)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    summary = trainer.fit()
    wall = time.perf_counter() - start
    first_validation = validations[0] if validations else steps
    settle = min(SETTLE_STEPS, steps // 4)
    steady = [t for t in times if t[0] > settle]
    before = [t for t in steady if t[0] <= first_validation]
    after = [t for t in steady if first_validation + 1 < t[0]]  # the step right after also reads the next batch
    validation_seconds = [r["validation_seconds"] for r in summary.history if "validation_seconds" in r]
    return {
        "precision_asked": precision,
        "precision": trainer.precision.name,
        "prefetch_batches": prefetch,
        "steps": summary.steps,
        "setup_s": setup,
        "wall_s": wall,
        "first_steps_s": [t for _, _, t in times[:settle]],
        # all steps after the first few, epoch ends (checkpoints) included; and the median step
        "steady_steps_per_s": len(steady) / sum(t for _, _, t in steady) if steady else None,
        "median_step_s": _median([t for _, _, t in steady]),
        "validated_after_steps": validations,
        "validation_s": validation_seconds,
        "median_step_s_before_validation": _phase_medians(before),
        "median_step_s_after_validation": _phase_medians(after),
        "final_loss_total": summary.history[-1].get("loss_total") if summary.history else None,
        "dice_teacher": [r.get("dice_teacher") for r in summary.history if "dice_teacher" in r],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--patch", type=int, nargs=3, default=(112, 112, 80))
    parser.add_argument("--spacing", type=float, default=1.0)
    parser.add_argument("--labeled", type=int, default=5, help="labeled training cases (steps per epoch)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "auto"])
    parser.add_argument("--prefetch", type=int, nargs="+", default=[1])
    parser.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0: leave as is)")
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="ceds-train-speed-"))
    data = make_training_cohort(work / "data", args.labeled)
    runs = []
    for precision in args.precisions:
        for prefetch in args.prefetch:
            runs.append(
                train_steps(
                    data,
                    work,
                    device=args.device,
                    precision=precision,
                    steps=args.steps,
                    width=args.width,
                    patch=tuple(args.patch),
                    spacing=args.spacing,
                    prefetch=prefetch,
                    labeled=args.labeled,
                )
            )
            print_table("training steps", [{k: v for k, v in runs[-1].items() if not isinstance(v, (list, dict))}])
    document = {"machine": machine(), "settings": vars(args) | {"out": str(args.out)}, "runs": runs}
    write_json(args.out / "train_speed.json", document)
    print(f"wrote {args.out / 'train_speed.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

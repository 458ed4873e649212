"""`ceds demo`: phantoms -> CEDS training -> ONNX export -> `ceds segment` -> `ceds evaluate`, in one
folder, each stage timed, complete stages reused on a second run (unless fresh), nothing
half-written left by Ctrl-C (every stage writes atomically and marks itself done last).

Training follows a fixed recipe (`DemoSettings`): a slower or busier machine takes longer and gets
the same model. `minutes` is only an optional cap; a run it stops early is not the tested recipe.
A model below the quality gate (`MIN_MEAN_DICE`, or a held-out case with no tumour found) is
reported as a failure, never as a result.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ceds_deploy.demo.recipe import (
    DEMO_RECIPE,
    DONE_MARKER,
    ESTIMATE_AFTER_STEPS,
    MODEL_CHECKPOINT,
    MODEL_ONNX,
    STAGE_OUTPUTS,
    TRAINING_RECORD,
    DemoSettings,
    check_minutes,
)
from ceds_deploy.demo.verdict import Verdict, judge
from ceds_deploy.errors import ConfigError

# ---------------------------------------------------------------- stages


@dataclass(frozen=True)
class StageOutcome:
    """What a stage did: a `note` for the log and the summary, and whether it `reused` an earlier run's
    complete output."""

    note: str
    reused: bool = False


@dataclass
class StageTimes:
    """The demo's stages so far: (stage, seconds, note) rows, and whether any stage ran instead of being
    reused."""

    rows: list[tuple[str, float, str]] = field(default_factory=list)  # (stage, seconds, note)
    reran: bool = False  # a stage ran (was not reused): every later stage must run too

    def run(self, name: str, out: Path, log: Callable[[str], None], fn: Callable[[], StageOutcome]) -> None:
        """Run `fn` as stage `name` of the demo in `out`, time it, log its outcome with `log` and add its row.
        Once an earlier stage ran, this stage's old outputs are removed first, so `fn` makes them again."""
        if self.reran:
            _remove_outputs(out, name)
        log(f"[bold]{name}[/] ...")
        start = time.perf_counter()
        outcome = fn()
        seconds = time.perf_counter() - start
        self.rows.append((name, seconds, f"reused: {outcome.note}" if outcome.reused else outcome.note))
        if outcome.reused:
            log(
                f"[bold]{name}[/]: reusing complete stage {name} from an earlier run ({outcome.note}); "
                f"--fresh starts over"
            )
        else:
            self.reran = True
            log(f"[bold]{name}[/] {outcome.note} ({seconds:.1f} s)")


def _remove_outputs(out: Path, stage: str) -> None:
    for name in STAGE_OUTPUTS.get(stage, ()):
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _cohort(out: Path, s: DemoSettings) -> StageOutcome:
    from ceds_deploy.synthetic import make_cohort

    data = out / "data"
    if (data / "dataset.json").exists():  # written last by make_cohort
        return StageOutcome(f"phantoms in {data}", reused=True)
    if data.exists():
        shutil.rmtree(data)  # a cohort stopped half-way
    make_cohort(data, cases=s.cases, labeled=s.labeled, test=s.test, seed=s.seed, size="small")
    return StageOutcome(f"{s.cases} training scans ({s.labeled} labeled), {s.test} held-out scans in {data}")


class TrainingClock:
    """Asked after every training step (`Trainer.fit`'s `should_stop`): prints a time estimate once
    `ESTIMATE_AFTER_STEPS` steps are measured, and answers True once the optional deadline passed."""

    def __init__(self, planned_steps: int, say: Callable[[str], None], deadline: float | None = None) -> None:
        self.planned_steps = planned_steps
        self.say = say
        self.deadline = deadline  # time.monotonic() value, or None: no cap
        self._first: tuple[int, float] | None = None  # (steps, time) after the first step (warm-up)
        self.seconds_per_step: float | None = None

    def __call__(self, steps_done: int) -> bool:
        now = time.monotonic()
        if self._first is None:
            self._first = (steps_done, now)
        elif self.seconds_per_step is None and steps_done - self._first[0] >= ESTIMATE_AFTER_STEPS:
            measured = steps_done - self._first[0]
            self.seconds_per_step = (now - self._first[1]) / measured
            left = max(0, self.planned_steps - steps_done)
            self.say(
                f"{measured} steps measured: {self.seconds_per_step:.2f} s a step, so about "
                f"{_duration(left * self.seconds_per_step)} for the {left} steps left (validation adds a "
                f"little; the bar's eta is a running average of the last 30 s of steps)"
            )
        return self.deadline is not None and now >= self.deadline


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def read_training_record(out: Path) -> dict:
    """run/DEMO_TRAINING.json: the recipe the run follows, plus `steps`, `planned`, `stopped_early`,
    `minutes` and `best` once training ended; {} when there is none."""
    path = out / "run" / TRAINING_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _train(out: Path, s: DemoSettings, minutes: float | None, console, started: float) -> StageOutcome:
    from ceds_deploy.cli.display import TrainDisplay
    from ceds_deploy.io import write_atomic_text
    from ceds_deploy.training.config import resolve_config
    from ceds_deploy.training.loop import resume_training, start_training

    run = out / "run"
    record = read_training_record(out)
    if record and record.get("recipe") != s.as_record():
        console.print(f"the recipe changed since {run} was trained: training starts over")
        shutil.rmtree(run)
        record = {}
    if (run / DONE_MARKER).exists():
        if not record.get("stopped_early"):
            return StageOutcome(f"{record.get('steps', '?')} steps in {run}", reused=True)
        console.print(
            f"continuing the training that --minutes stopped after {record['steps']} of "
            f"{record['planned']} steps (--fresh starts over)"
        )
        (run / DONE_MARKER).unlink()
    _say_plan(console, s, minutes)
    say = console.print
    deadline = None if minutes is None else started + minutes * 60
    clock = TrainingClock(s.iterations, say, deadline)
    display = TrainDisplay(console)
    if (run / "checkpoints" / "last.pt").exists():
        with display:
            summary = resume_training(run, progress=display, should_stop=clock)
        note = "resumed, "
    else:
        if run.exists():
            shutil.rmtree(run)  # a run stopped before its first checkpoint: start again
        run.mkdir(parents=True)
        write_atomic_text(run / TRAINING_RECORD, json.dumps({"recipe": s.as_record()}))
        config = resolve_config(None, s.training_config(out / "data"))
        with display:
            summary = start_training(config, run, progress=display, should_stop=clock)
        note = ""
    stopped_early = summary.steps < s.iterations
    record = {
        "recipe": s.as_record(),
        "steps": summary.steps,
        "planned": s.iterations,
        "stopped_early": stopped_early,
        "minutes": minutes,
        "best": {k: v for k, v in summary.best.items() if not k.endswith("_epoch")},
    }
    write_atomic_text(run / TRAINING_RECORD, json.dumps(record))
    write_atomic_text(run / DONE_MARKER, "ok")
    best = ", ".join(f"{k} {v:.3f}" for k, v in record["best"].items())
    if stopped_early:
        console.print(
            f"[yellow]training stopped by --minutes {minutes:g} after {summary.steps} of {s.iterations} steps[/]"
        )
    return StageOutcome(f"{note}{summary.steps} of {s.iterations} steps; best validation Dice {best or '-'}")


def _say_plan(console, s: DemoSettings, minutes: float | None) -> None:
    estimate = (
        f" A time estimate follows after {ESTIMATE_AFTER_STEPS} steps."
        if s.iterations > ESTIMATE_AFTER_STEPS + 1
        else ""
    )
    console.print(
        f"training CEDS with the demo recipe: [bold]{s.iterations} steps[/] (width {s.width}, patch "
        f"{s.patch}, spacing {s.spacing} mm, batch {s.batch_size}); a slower or busier machine "
        f"takes longer and gets the same model.{estimate}"
    )
    if minutes is not None:
        console.print(
            f"[yellow]--minutes {minutes:g}: training stops after {minutes:g} minutes even if the "
            f"{s.iterations} steps are not done. Then quality will suffer and the result is not "
            f"the tested recipe.[/]"
        )


def _export(out: Path) -> StageOutcome:
    from ceds_deploy.artifacts import read_onnx_metadata
    from ceds_deploy.checkpoint import save_inference_checkpoint, sha256_of
    from ceds_deploy.export.onnx_export import export_checkpoint
    from ceds_deploy.spec import ONNX_SPEC_KEY, ModelSpec

    model = out / MODEL_CHECKPOINT
    onnx_path = out / MODEL_ONNX
    if model.exists() and onnx_path.exists():
        spec = ModelSpec.from_json(read_onnx_metadata(onnx_path)[ONNX_SPEC_KEY])
        if spec.source_sha256 == sha256_of(model):
            return StageOutcome(f"{model.name} and {onnx_path.name}", reused=True)
    save_inference_checkpoint(out / "run" / "checkpoints" / "best_teacher.pt", model, weights="teacher")
    result = export_checkpoint(model, onnx_path, weights="teacher")
    parity = result.parity
    check = f"max |diff| of probabilities vs PyTorch {parity.max_prob_diff:.1e}" if parity else "unchecked"
    return StageOutcome(
        f"teacher -> {model} ({model.stat().st_size / 1e6:.1f} MB, inference only) -> "
        f"{onnx_path} ({result.size_bytes / 1e6:.1f} MB, {check})"
    )


def _segment(out: Path, console) -> StageOutcome:
    from ceds_deploy.cli.segment import run_segment
    from ceds_deploy.inference import SegmentOptions
    from ceds_deploy.io import write_atomic_text

    seg = out / "segment"
    if (seg / DONE_MARKER).exists():
        return StageOutcome(f"masks and previews in {seg}", reused=True)
    # Every phantom has one mass, so the largest tumour region is kept (nnU-Net's post-processing
    # for one-lesion tasks); `ceds segment --largest-component` does the same.
    options = SegmentOptions(
        preview=True, html=True, preview_labels=out / "data" / "labelsTs", overwrite=True, largest_component=True
    )
    failed = run_segment(
        out / "data" / "imagesTs", seg, out / MODEL_ONNX, backend="onnxruntime", options=options, console=console
    )
    if failed:
        raise ConfigError(f"{failed} held-out scans failed to segment; see {seg / 'report.csv'}")
    write_atomic_text(seg / DONE_MARKER, "ok")
    return StageOutcome(f"held-out scans segmented with ONNX Runtime into {seg}")


# ---------------------------------------------------------------- the demo


def demo_console(**options):
    """The demo's rich Console: `log` lines carry no source location (no "progress.py:57")."""
    from rich.console import Console

    return Console(log_path=False, **options)


def run_demo(
    out: Path, settings: DemoSettings | None = None, *, minutes: float | None = None, fresh: bool = False, console=None
) -> dict:
    """Run (or finish) the demo in `out` with `settings` (default `DEMO_RECIPE`); `minutes` caps the
    training time. Returns the final rows, stages, the `Verdict` and the page's path."""
    from ceds_deploy.demo.page import final_rows, print_final_summary, write_index

    settings = settings or DEMO_RECIPE
    check_minutes(minutes)
    console = console or demo_console()
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    times = StageTimes()
    log = console.print
    times.run("phantoms", out, log, lambda: _cohort(out, settings))
    train_started = time.monotonic()
    times.run("train", out, log, lambda: _train(out, settings, minutes, console, train_started))
    times.run("export", out, log, lambda: _export(out))
    times.run("segment", out, log, lambda: _segment(out, console))

    scores = {}

    def evaluate() -> StageOutcome:
        from ceds_deploy.qa.evaluate import evaluate_folder

        scores["report"] = evaluate_folder(out / "segment", out / "data" / "labelsTs")
        return StageOutcome(f"scored against labelsTs -> {out / 'segment' / 'evaluation.csv'}")

    times.run("evaluate", out, log, evaluate)
    rows = final_rows(out, scores["report"])
    verdict = judge(rows, read_training_record(out), settings, out)
    index = write_index(out, rows, times.rows, verdict)
    write_demo_record(out, rows, times.rows, verdict, settings)
    print_final_summary(console, rows, times.rows, out, index, verdict)
    return {"rows": rows, "stages": times.rows, "verdict": verdict, "index": index}


DEMO_RECORD = "demo.json"


def write_demo_record(out: Path, rows: list[dict], stages: list, verdict: Verdict, settings: DemoSettings) -> Path:
    """`out/demo.json`: the held-out rows, the stage times, the verdict and the recipe, as data (what
    benchmarks/demo_check.py and a reader of the folder use instead of the printed table)."""
    import dataclasses

    from ceds_deploy.io import write_atomic_text

    document = {
        "cases": rows,
        "stages": [{"stage": n, "seconds": round(t, 2), "note": note} for n, t, note in stages],
        "verdict": dataclasses.asdict(verdict),
        "recipe": settings.as_record(),
        "training": read_training_record(out),
    }
    path = out / DEMO_RECORD
    write_atomic_text(path, json.dumps(document, indent=2, default=str))
    return path

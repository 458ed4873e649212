"""`ceds demo`: phantoms -> CEDS training -> ONNX export -> `ceds segment` -> `ceds evaluate`, in one
folder, each stage timed, complete stages reused on a second run (unless fresh), nothing
half-written left by Ctrl-C (every stage writes atomically and marks itself done last)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ceds_deploy.errors import ConfigError


@dataclass(frozen=True)
class DemoSettings:
    """Sized so a 2-core CPU trains a useful model in a few minutes (see README's demo numbers)."""

    minutes: float = 5.0  # training budget
    cases: int = 24  # training images
    labeled: int = 16
    test: int = 4
    seed: int = 0
    width: int = 4
    patch: tuple[int, int, int] = (32, 32, 32)
    spacing: float = 3.0  # 24-44 mm masses span 8-15 voxels (at 4 mm the model under-segmented them)
    batch_size: int = 2
    # A run of a few hundred steps instead of the paper's 8000 epochs: a higher learning rate, a
    # shorter teacher memory, less dropout for the tiny network, two patches per volume.
    lr: float = 0.08
    ema_decay: float = 0.95
    dropout: float = 0.0
    patches_per_volume: int = 2
    min_iterations: int = 20
    max_iterations: int = 4000

    def __post_init__(self) -> None:
        if self.minutes <= 0:
            raise ConfigError(f"--minutes must be positive, got {self.minutes}")


@dataclass
class StageTimes:
    rows: list[tuple[str, float, str]] = field(default_factory=list)  # (stage, seconds, note)

    def run(self, name: str, log: Callable[[str], None], fn: Callable[[], str]) -> None:
        log(f"[bold]{name}[/] ...")
        start = time.perf_counter()
        note = fn()
        seconds = time.perf_counter() - start
        self.rows.append((name, seconds, note))
        log(f"[bold]{name}[/] {note} ({seconds:.1f} s)")


def seconds_per_iteration(settings: DemoSettings) -> float:
    """Time one student forward+backward plus one teacher forward on a training batch (a short
    calibration, so the training budget in minutes becomes a fixed number of iterations)."""
    import torch

    from ceds_deploy.network import CedsNet, CedsNetConfig

    torch.manual_seed(settings.seed)
    student = CedsNet(CedsNetConfig(width=settings.width)).train()
    teacher = CedsNet(CedsNetConfig(width=settings.width)).eval()
    x = torch.rand(settings.batch_size * settings.patches_per_volume, 1, *settings.patch)

    def step() -> None:
        seg, conf = student(x)
        (seg.mean() + conf.mean()).backward()
        with torch.no_grad():
            teacher(x)

    step()  # warm-up (allocations, oneDNN kernels)
    start = time.perf_counter()
    for _ in range(2):
        step()
    return (time.perf_counter() - start) / 2


def iterations_for(settings: DemoSettings, step_seconds: float) -> int:
    # The calibration step runs every patch through one network call, so it costs about 1.2x a
    # real step (measured on 2 cores); that margin pays for validation and checkpoints.
    wanted = int(settings.minutes * 60 / step_seconds)
    return max(settings.min_iterations, min(settings.max_iterations, wanted))


def _cohort(out: Path, s: DemoSettings) -> str:
    from ceds_deploy.synthetic import make_cohort

    data = out / "data"
    if (data / "dataset.json").exists():  # written last by make_cohort
        return f"reused {data}"
    make_cohort(data, cases=s.cases, labeled=s.labeled, test=s.test, seed=s.seed, size="small")
    return f"{s.cases} training scans ({s.labeled} labeled), {s.test} held-out scans in {data}"


DONE_MARKER = "DEMO_DONE"


def _train(out: Path, s: DemoSettings, console) -> str:
    from ceds_deploy.io import write_atomic_text
    from ceds_deploy.training.config import resolve_config
    from ceds_deploy.training.loop import resume_training, start_training

    run = out / "run"
    if (run / DONE_MARKER).exists():
        return f"reused {run}"
    if (run / "checkpoints" / "last.pt").exists():
        summary = resume_training(run, console=console)
        note = "resumed"
    else:
        if run.exists():
            shutil.rmtree(run)  # a run stopped before its first checkpoint: start again
        step = seconds_per_iteration(s)
        iterations = iterations_for(s, step)
        config = resolve_config(None, {"data_dir": str((out / "data").resolve()), "method": "ceds",
                                       "width": s.width, "patch": s.patch, "spacing": (s.spacing,) * 3,
                                       "iterations": iterations, "batch_size": s.batch_size, "seed": s.seed,
                                       "lr": s.lr, "min_lr": min(s.lr, 1e-3), "ema_decay": s.ema_decay,
                                       "dropout": s.dropout, "patches_per_volume": s.patches_per_volume})
        console.print(f"training CEDS: width {s.width}, patch {s.patch}, spacing {s.spacing} mm, "
                      f"{iterations} iterations (~{step:.2f} s each, measured)")
        summary = start_training(config, run, console=console)
        note = "trained"
    write_atomic_text(run / DONE_MARKER, json.dumps({"best": summary.best, "steps": summary.steps}))
    best = ", ".join(f"{k} {v:.3f}" for k, v in summary.best.items() if not k.endswith("_epoch"))
    return f"{note} {summary.steps} steps; best validation Dice {best}"


def _export(out: Path) -> str:
    from ceds_deploy.artifacts import read_onnx_metadata
    from ceds_deploy.checkpoint import sha256_of
    from ceds_deploy.export.onnx_export import export_checkpoint
    from ceds_deploy.spec import ONNX_SPEC_KEY, ModelSpec

    checkpoint = out / "run" / "checkpoints" / "best_teacher.pt"
    onnx_path = out / "model.onnx"
    if onnx_path.exists():
        spec = ModelSpec.from_json(read_onnx_metadata(onnx_path)[ONNX_SPEC_KEY])
        if spec.source_sha256 == sha256_of(checkpoint):
            return f"reused {onnx_path}"
    result = export_checkpoint(checkpoint, onnx_path, weights="teacher")
    parity = result.parity
    check = f"max |diff| of probabilities vs PyTorch {parity.max_prob_diff:.1e}" if parity else "unchecked"
    return f"teacher -> {onnx_path} ({result.size_bytes / 1e6:.1f} MB, {check})"


def _segment(out: Path, console) -> str:
    from ceds_deploy.inference import SegmentOptions
    from ceds_deploy.cli.segment import run_segment

    seg = out / "segment"
    if (seg / DONE_MARKER).exists():
        return f"reused {seg}"
    # Every phantom has one mass, so the largest tumour region is kept (nnU-Net's post-processing
    # for one-lesion tasks); `ceds segment --largest-component` does the same.
    options = SegmentOptions(preview=True, preview_labels=out / "data" / "labelsTs", overwrite=True,
                             largest_component=True)
    failed = run_segment(out / "data" / "imagesTs", seg, out / "model.onnx", backend="onnxruntime",
                         options=options, console=console)
    if failed:
        raise ConfigError(f"{failed} held-out scans failed to segment; see {seg / 'report.csv'}")
    from ceds_deploy.io import write_atomic_text

    write_atomic_text(seg / DONE_MARKER, "ok")
    return f"held-out scans segmented with ONNX Runtime into {seg}"


def run_demo(out: Path, settings: DemoSettings = DemoSettings(), *, fresh: bool = False, console=None) -> dict:
    """Run (or finish) the demo in `out`; returns the final table rows and where things are."""
    from rich.console import Console

    from ceds_deploy.demo_page import final_rows, print_final_table, write_index

    console = console or Console()
    out = Path(out)
    if fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    times = StageTimes()
    log = console.print
    times.run("phantoms", log, lambda: _cohort(out, settings))
    times.run("train", log, lambda: _train(out, settings, console))
    times.run("export", log, lambda: _export(out))
    times.run("segment", log, lambda: _segment(out, console))

    scores = {}

    def evaluate() -> str:
        from ceds_deploy.qa.evaluate import evaluate_folder

        scores["report"] = evaluate_folder(out / "segment", out / "data" / "labelsTs")
        return f"scored against labelsTs -> {out / 'segment' / 'evaluation.csv'}"

    times.run("evaluate", log, evaluate)
    rows = final_rows(out, scores["report"])
    index = write_index(out, rows, times.rows)
    print_final_table(console, rows, times.rows, out, index)
    return {"rows": rows, "stages": times.rows, "index": index}

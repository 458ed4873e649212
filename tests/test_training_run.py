"""Training end to end on a tiny phantom cohort: one step of each method and phase, the CLI, bad input
caught before training, and resume equality (stopped + resumed == uninterrupted, bit for bit)."""

from __future__ import annotations

import copy
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ceds_deploy.errors import DatasetError
from ceds_deploy.training.config import TrainConfig

TINY = dict(
    width=2, patch=(32, 32, 16), spacing=(4.0, 4.0, 4.0), batch_size=2, patches_per_volume=2, val_fraction=0.25, seed=5
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two OpenMP threads on two shared cores spin against other processes (10x slower here).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    from ceds_deploy.synthetic import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), cases=6, labeled=4, test=0, seed=0, size="small")


def tiny(cohort: Path, **changes) -> TrainConfig:
    return TrainConfig(data_dir=str(cohort), **(TINY | changes))


# ---------------------------------------------------------------------- one step of each method


@pytest.fixture(scope="module")
def trainer(cohort, tmp_path_factory):
    from ceds_deploy.training.loop import Trainer

    return Trainer(tiny(cohort, iterations=10), tmp_path_factory.mktemp("run"))


def _stepper(trainer, method: str, precision=None):
    from ceds_deploy.training.ema import make_teacher
    from ceds_deploy.training.methods import Optimization, Stepper

    config = trainer.config.replace(method=method)
    student = copy.deepcopy(trainer.student)
    teacher = make_teacher(student)
    with torch.no_grad():  # a teacher different from the student, to see what the EMA does
        for p in teacher.parameters():
            p.add_(0.01)
    conf = Optimization.sgd(student.confidence_parameters(), config, 10)
    seg = Optimization.sgd(student.segmentation_parameters(), config, 10)
    scaler = precision.grad_scaler() if precision else trainer.scaler
    return Stepper(config, student, teacher, conf, seg, scaler, trainer.dist, precision)


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _changed(before: list[torch.Tensor], params) -> bool:
    return any(not torch.equal(a, b) for a, b in zip(before, params))


@pytest.mark.parametrize(
    "method, phase",
    [
        ("ceds", "warmup"),
        ("ceds", "refresh"),
        ("ceds", "semi"),
        ("mean-teacher", "warmup"),
        ("mean-teacher", "semi"),
        ("supervised", "semi"),
    ],
)
def test_one_step(trainer, method: str, phase: str) -> None:
    stepper = _stepper(trainer, method)
    stepper.ema_step = 3  # alpha = 0.75 for the semi-supervised teacher update
    batch = trainer.batches.make(trainer.sampler.epoch(0)[0], transform_seed=1, device="cpu")
    assert batch.images.shape == (4, 1, 32, 32, 16) and batch.n_labeled == 2  # 1 labeled + 1 unlabeled volume
    student, teacher = stepper.student, stepper.teacher
    conf0 = _snapshot(student.confidence_parameters())
    seg0 = _snapshot(student.segmentation_parameters())
    teacher0 = _snapshot(teacher.parameters())
    torch.manual_seed(0)
    losses = stepper.run(phase, batch, rampup=0.5)
    assert all(math.isfinite(v) for v in losses.values())

    trains_head = method == "ceds" and phase in ("warmup", "refresh")
    assert _changed(conf0, student.confidence_parameters()) == trains_head
    assert _changed(seg0, student.segmentation_parameters()) == (phase != "refresh")
    assert ("loss_conf" in losses) == trains_head
    assert ("loss_consistency" in losses) == (phase == "semi" and method != "supervised")
    if phase == "refresh":
        assert not _changed(teacher0, teacher.parameters())  # the refresh does not touch the teacher
        assert stepper.ema_step == 3
    elif phase == "warmup":
        # During the warm-up the EMA counter stays where it is (the reference's iter_num).
        assert stepper.ema_step == 3
    else:
        assert stepper.ema_step == 4
        assert losses.get("consistency_weight", 0.5) == 0.5
    if phase != "refresh":
        for t0, t, s in zip(teacher0, teacher.parameters(), student.parameters()):
            assert torch.allclose(t, 0.75 * t0 + 0.25 * s, atol=1e-6)
        for t, s in zip(teacher.buffers(), student.buffers()):
            assert torch.equal(t, s)


def test_gated_and_ungated_consistency_differ(trainer) -> None:
    """The same step with and without the confidence gate: the gate must change the loss."""
    batch = trainer.batches.make(trainer.sampler.epoch(0)[1], transform_seed=2, device="cpu")
    values = {}
    for method in ("ceds", "mean-teacher"):
        stepper = _stepper(trainer, method)
        torch.manual_seed(0)
        values[method] = stepper.run("semi", batch, rampup=1.0)["loss_consistency"]
    assert values["ceds"] < values["mean-teacher"]  # the gate only removes voxels


# ---------------------------------------------------------------------- precision and validation


def _forward_dtypes(net) -> tuple[list[torch.dtype], object]:
    seen: list[torch.dtype] = []
    handle = net.register_forward_hook(lambda _m, _i, out: seen.append(out[0].dtype))
    return seen, handle


@pytest.mark.parametrize(
    "precision, dtype, phases",
    [("bf16", torch.bfloat16, ("warmup", "semi")), ("fp16", torch.float16, ("warmup",))],
)
def test_mixed_precision_steps_keep_losses_weights_and_teacher_in_fp32(trainer, precision, dtype, phases) -> None:
    """The forward passes run in the low precision; losses, gradients, weights and the EMA teacher stay
    float32. fp16 takes the loss-scaling path (GradScaler) that a GPU run takes (CPU autocast runs fp16
    too, so the path is tested here even though users get fp16 on CUDA only)."""
    from ceds_deploy.training.precision import TrainPrecision

    mixed = TrainPrecision(precision, "cpu")
    stepper = _stepper(trainer, "ceds", mixed)
    assert stepper.scaler.is_enabled() == (precision == "fp16")
    batch = trainer.batches.make(trainer.sampler.epoch(0)[0], transform_seed=1, device="cpu")
    seen, handle = _forward_dtypes(stepper.student)
    try:
        for phase in phases:  # warmup: both optimizers on one scaler; semi: student twice and the teacher
            seg0 = _snapshot(stepper.student.parameters())
            torch.manual_seed(0)
            losses = stepper.run(phase, batch, rampup=1.0)
            assert all(math.isfinite(v) for v in losses.values()), (phase, losses)
            assert _changed(seg0, stepper.student.parameters()), phase
    finally:
        handle.remove()
    assert seen and set(seen) == {dtype}
    for net in (stepper.student, stepper.teacher):
        assert {p.dtype for p in net.parameters()} == {torch.float32}
    if precision == "fp16":
        assert stepper.scaler.get_scale() > 1.0


def test_bf16_training_runs_on_the_cpu_and_records_its_precision(cohort, tmp_path) -> None:
    from ceds_deploy.training.loop import start_training

    summary = start_training(tiny(cohort, iterations=2, precision="bf16", val_fraction=0.0), tmp_path / "run")
    assert summary.steps == 2
    for row in summary.history:
        assert row["precision"] == "bf16"
        assert math.isfinite(row["loss_total"])
    header, *rows = (tmp_path / "run" / "metrics.csv").read_text(encoding="utf-8").splitlines()
    column = header.split(",").index("precision")
    assert {r.split(",")[column] for r in rows} == {"bf16"}
    assert "precision: bf16" in (tmp_path / "run" / "config.yaml").read_text(encoding="utf-8")
    payload = _payload(tmp_path / "run")
    assert {t.dtype for t in payload["teacher"].values() if t.is_floating_point()} == {torch.float32}


def test_a_non_finite_loss_stops_the_run_with_the_step_and_precision(cohort, tmp_path) -> None:
    from ceds_deploy.errors import CedsError
    from ceds_deploy.training.loop import Trainer

    trainer = Trainer(tiny(cohort, iterations=3, precision="bf16"), tmp_path / "run")
    with torch.no_grad():
        next(trainer.student.parameters()).fill_(math.nan)  # what a garbage gradient leaves
    with pytest.raises(
        CedsError, match=r"training step 1: the loss is nan in bf16; stopping \(try a lower --lr or --precision fp32\)"
    ):
        trainer.fit()
    assert not (tmp_path / "run" / "checkpoints" / "last.pt").exists()


def test_fp16_training_on_the_cpu_is_refused_with_the_reason(cohort) -> None:
    from ceds_deploy.errors import ConfigError

    with pytest.raises(ConfigError, match="fp16 needs a CUDA device.*on the CPU use bf16"):
        tiny(cohort, precision="fp16")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        tiny(cohort, precision="fp16", device="cuda").replace(device="cpu")  # a GPU run resumed on the CPU


def _training_state(trainer) -> dict:
    from helpers import process_state

    nets = {"student": trainer.student, "teacher": trainer.teacher}
    return {
        "process": process_state(),
        **{
            name: {
                "training": [m.training for m in net.modules()],
                "params": [(p.dtype, p.device, p.requires_grad, p.is_contiguous()) for p in net.parameters()],
                "buffers": [b.clone() for b in net.buffers()],
            }
            for name, net in nets.items()
        },
    }


def test_validation_leaves_training_exactly_as_it_was(trainer) -> None:
    """What made steps slower after a validation on the GPU (cuDNN/TF32 flags left changed) and what
    could (modes, grad, autocast, memory format, weights, BatchNorm statistics): all as before."""
    trainer.student.train(), trainer.teacher.train()
    before = _training_state(trainer)
    weights = copy.deepcopy(trainer.student.state_dict())
    row: dict = {}
    trainer._validate(row)
    assert math.isfinite(row["dice_teacher"])
    after = _training_state(trainer)
    for name in ("student", "teacher"):
        for a, b in zip(before[name].pop("buffers"), after[name].pop("buffers")):
            assert torch.equal(a, b)
    assert after == before
    assert all(torch.equal(v, trainer.student.state_dict()[k]) for k, v in weights.items())


# ---------------------------------------------------------------------- resume equality


def _payload(run: Path) -> dict:
    from ceds_deploy.checkpoint import load_checkpoint

    return load_checkpoint(run / "checkpoints" / "last.pt")


def _assert_same_state(a: dict, b: dict) -> None:
    for key in ("student", "teacher"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for key in ("optimizer_confidence", "optimizer_segmentation"):
        for index, s in a[key]["state"].items():
            assert torch.equal(s["momentum_buffer"], b[key]["state"][index]["momentum_buffer"])
        assert a[key]["param_groups"] == b[key]["param_groups"]
    for key in ("scheduler_confidence", "scheduler_segmentation", "epoch", "global_step", "ema_step", "best"):
        assert a[key] == b[key], key
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in rows]  # noqa: E731
    assert str(strip(a["history"])) == str(strip(b["history"]))  # str(): nan == nan


def resume_config(cohort: Path) -> TrainConfig:
    # 1 labeled case per epoch and step -> steps: warmup, refresh, semi, refresh, semi (EMA steps 0, 1);
    # a validation at epoch 3 in every run, so validating in between is shown not to disturb training.
    return tiny(cohort, labeled=1, epochs=5, val_every=3)


@pytest.fixture(scope="module")
def straight_run(cohort, tmp_path_factory) -> Path:
    from ceds_deploy.training.loop import start_training

    run = tmp_path_factory.mktemp("straight")
    summary = start_training(resume_config(cohort), run)
    assert summary.steps == 5 and [r["phases"] for r in summary.history] == [
        "warmup",
        "refresh",
        "semi",
        "refresh",
        "semi",
    ]
    return run


def test_stopped_and_resumed_run_equals_the_uninterrupted_one(cohort, straight_run, tmp_path) -> None:
    from ceds_deploy.training.loop import resume_training, start_training

    stopped = start_training(resume_config(cohort), tmp_path / "resumed", stop_after_epochs=2)
    assert stopped.epochs == 2
    resumed = resume_training(tmp_path / "resumed")
    assert resumed.epochs == 5
    _assert_same_state(_payload(straight_run), _payload(tmp_path / "resumed"))
    # The logs of the resumed run hold every epoch once.
    lines = (tmp_path / "resumed" / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["1", "2", "3", "4", "5"]


def test_a_finished_run_fits_its_calibration_on_its_validation_cases(straight_run) -> None:
    """The end of a run fits best_teacher.pt's calibration on the validation cases; this 5-step network
    predicts no tumour on them, so there is nothing to fit: calibration.json says so and the raw map stays
    (the fit itself: tests/test_calibration.py)."""
    import json

    from ceds_deploy.checkpoint import load_network

    record = json.loads((straight_run / "calibration.json").read_text(encoding="utf-8"))
    split = json.loads((straight_run / "split.json").read_text(encoding="utf-8"))
    assert record["cases"] == split["validation"] and record["weights"] == "teacher"
    assert record["calibration"] is None and "no tumour predicted" in record["note"]
    assert load_network(straight_run / "checkpoints" / "best_teacher.pt")[1].calibration is None


def test_batches_made_ahead_give_the_same_run_as_batches_made_in_the_step(cohort, straight_run, tmp_path) -> None:
    """The straight run made each batch ahead in a background thread (the default); made in the
    step's own thread, every weight, buffer and logged loss is the same, bit for bit."""
    from ceds_deploy.training.loop import start_training

    assert resume_config(cohort).prefetch_batches >= 1
    start_training(resume_config(cohort).replace(prefetch_batches=0), tmp_path / "inline")
    _assert_same_state(_payload(straight_run), _payload(tmp_path / "inline"))


KILLED = """
import json, sys
import torch
from ceds_deploy.training.config import TrainConfig
from ceds_deploy.training.loop import start_training

torch.set_num_threads(1)
start_training(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2])
"""


@pytest.mark.slow
def test_run_killed_with_sigkill_resumes_to_the_same_weights(cohort, straight_run, tmp_path) -> None:
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    from ceds_deploy.training.loop import resume_training

    script = tmp_path / "train.py"
    script.write_text(KILLED)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.pt"
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(resume_config(cohort).to_dict()), str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and not last.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # as soon as the first epoch is saved: mid-run, maybe mid-write
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert _payload(run)["epoch"] < 5  # killed before the end
    leftover = run / "checkpoints" / f".best_teacher.pt.{'0' * 32}.tmp"  # as a kill mid-write leaves it
    leftover.write_bytes(b"partial")
    resume_training(run)
    _assert_same_state(_payload(straight_run), _payload(run))
    assert not leftover.exists()


# ---------------------------------------------------------------------- the CLI


def _cli(args: list[str]):
    import typer
    from typer.testing import CliRunner

    from ceds_deploy.cli.train import train

    app = typer.Typer()
    app.command("train")(train)
    app.command("noop")(lambda: None)  # two commands: `train` stays a sub-command as in `ceds`
    return CliRunner().invoke(app, ["train", *args])


def test_cli_trains_and_writes_a_usable_run(cohort, tmp_path) -> None:
    import yaml

    from ceds_deploy.checkpoint import load_network
    from ceds_deploy.training.config import build_config

    config_file = tmp_path / "tiny.toml"
    config_file.write_text("width = 2\npatches_per_volume = 2\nval_fraction = 0.25\nepochs = 40\n")
    run = tmp_path / "run"
    result = _cli(
        [
            str(cohort),
            "--out",
            str(run),
            "--config",
            str(config_file),
            "--patch",
            "32",
            "32",
            "16",
            "--spacing",
            "4",
            "--iterations",
            "3",
            "--method",
            "mean-teacher",
            "--seed",
            "1",
            "-q",
        ]
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "trained 3 steps" in result.output
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best_student.pt", "best_teacher.pt", "last.pt"]
    saved = build_config(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")))
    assert (saved.method, saved.width, saved.iterations, saved.epochs, saved.seed) == ("mean-teacher", 2, 3, None, 1)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (run / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 1 + 1  # header + one epoch of 3 steps (3 labeled training cases)
    for weights in ("teacher", "student"):
        net, spec = load_network(run / "checkpoints" / "best_teacher.pt", weights)
        assert spec.roi_size == (32, 32, 16) and spec.target_spacing == (4.0, 4.0, 4.0) and spec.width == 2
        assert spec.weights == weights and not net.training
    payload = _payload(run)
    assert payload["config"]["method"] == "mean-teacher" and payload["global_step"] == 3
    assert math.isfinite(payload["history"][0]["dice_teacher"])

    again = _cli([str(cohort), "--out", str(run), "-q"])
    assert again.exit_code != 0 and "already holds a run" in str(again.exception)
    mixed = _cli(["--resume", str(run), "--width", "4"])
    text = re.sub(r"[\s│╭╮╰╯─]+", " ", mixed.output)  # unwrap rich's error box
    assert mixed.exit_code == 2 and "saved settings; drop --width" in text


def test_bad_label_stops_the_run_before_training(cohort, tmp_path) -> None:
    from ceds_deploy.io import read_scan, write_volume
    from ceds_deploy.training.loop import start_training

    data = tmp_path / "data"
    shutil.copytree(cohort, data)
    bad = data / "labelsTr" / "phantom_001.nii.gz"
    label = read_scan(bad)
    write_volume(bad, (label.array * 2).astype(np.uint8), label.geometry)  # tumour = 2
    with pytest.raises(DatasetError, match=r"phantom_001\.nii\.gz: label values must be 0 or 1, found 2"):
        start_training(tiny(data, iterations=2), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ---------------------------------------------------------------------- distributed


WORKER = """
import json, sys
from pathlib import Path

import torch

from ceds_deploy.training.config import TrainConfig
from ceds_deploy.training.distributed import init_distributed
from ceds_deploy.training.loop import Trainer

config = TrainConfig(**json.loads(sys.argv[1]))
out = Path(sys.argv[2])
dist = init_distributed(config.device)
trainer = Trainer(config, out / "run", dist=dist)
trainer.fit()
torch.save({"teacher": trainer.teacher.state_dict(), "student": trainer.student.state_dict()},
           out / f"rank{dist.rank}.pt")
(out / f"rank{dist.rank}.json").write_text(json.dumps(
    {"world_size": dist.world_size, "steps": trainer.global_step, "written": [str(p) for p in trainer.written]}))
dist.shutdown()
"""


@pytest.mark.slow
def test_torchrun_two_processes_gloo(cohort, tmp_path) -> None:
    """2 CPU processes under torchrun: rank 0 alone writes, and the teachers stay identical."""
    import json
    import os
    import subprocess
    import sys

    from ceds_deploy.checkpoint import load_checkpoint

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    # 3 labeled training cases, 1 per process and step -> 1 step an epoch: warmup, refresh, semi.
    config = tiny(cohort, epochs=3, val_every=3).to_dict()  # rank 0 validates once, rank 1 waits
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            json.dumps(config),
            str(tmp_path),
        ],
        capture_output=True,
        encoding="utf-8",
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = [json.loads((tmp_path / f"rank{r}.json").read_text(encoding="utf-8")) for r in range(2)]
    assert [i["world_size"] for i in info] == [2, 2] and [i["steps"] for i in info] == [3, 3]
    assert info[1]["written"] == [] and any(p.endswith("last.pt") for p in info[0]["written"])
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    for name, value in states[0]["teacher"].items():
        assert torch.equal(value, states[1]["teacher"][name]), name
        assert torch.equal(value, saved["teacher"][name]), name
    for name, value in states[0]["student"].items():
        assert torch.equal(value, states[1]["student"][name]), name
    assert saved["world_size"] == 2 and saved["global_step"] == 3


@pytest.mark.parametrize("option", [["--patch", "30", "30", "30"], ["--width", "0"], ["--method", "foo"]])
def test_a_bad_training_option_is_a_usage_error(cohort, tmp_path, option) -> None:
    """Exit 2 naming the setting, before any run folder exists; a bad config file stays exit 1."""
    result = _cli([str(cohort), "--out", str(tmp_path / "run"), "-q", *option])
    text = re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)
    assert result.exit_code == 2 and "Invalid value" in text, text
    assert not (tmp_path / "run").exists()
    (tmp_path / "bad.yaml").write_text("width: 0\n", encoding="utf-8")
    from_file = _cli([str(cohort), "--out", str(tmp_path / "run"), "--config", str(tmp_path / "bad.yaml"), "-q"])
    assert from_file.exit_code == 1 and "bad.yaml" in str(from_file.exception)


def test_phantoms_options_that_do_not_fit_are_usage_errors(tmp_path) -> None:
    from ceds_deploy.cli.app import main

    assert main(["phantoms", str(tmp_path / "a"), "--cases", "2", "--labeled", "5"]) == 2
    assert main(["phantoms", str(tmp_path / "b"), "--size", "tiny"]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_sigterm_stops_training_cleanly_and_it_resumes(cohort, tmp_path) -> None:
    """A batch scheduler's stop (SIGTERM) mid-run, as Ctrl-C: exit 130, the last epoch's checkpoint
    kept whole and --resume named."""
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    options = ["--width", "2", "--patch", "32", "32", "16", "--spacing", "4", "--epochs", "400", "-q"]
    command = [sys.executable, "-m", "ceds_deploy.cli", "train", str(cohort), "--out", str(run), *options]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "last.pt").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "no epoch was saved"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=120)[0].decode("utf-8", "replace")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, output
    assert f"ceds train --resume {run}" in " ".join(output.split()) and "Traceback" not in output
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp file
    assert _payload(run)["epoch"] < 400  # a whole checkpoint of a finished epoch


def test_resume_of_a_checkpoint_file_says_it_takes_the_run_folder(tmp_path) -> None:
    from ceds_deploy.errors import ConfigError
    from ceds_deploy.training.loop import resume_training

    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"last\.pt: is a file; --resume takes the run folder"):
        resume_training(tmp_path / "last.pt")

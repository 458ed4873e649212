"""Training building blocks against hand-computed values: EMA rule, sharpening, ramp-up, gated
consistency, confidence weights, phase schedule, two-stream sampler, AUROC, config and dataset checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ceds_deploy.errors import ConfigError, DatasetError
from ceds_deploy.io import write_volume
from ceds_deploy.qa.metrics import auroc
from ceds_deploy.training.config import TrainConfig, build_config, resolve_config
from ceds_deploy.training.data import LabeledCase, split_dataset
from ceds_deploy.training.ema import ema_alpha, make_teacher, update_teacher
from ceds_deploy.training.losses import (
    confidence_class_weights,
    confidence_loss,
    consistency_loss,
    correctness,
    sharpen,
)
from ceds_deploy.training.sampler import TwoStreamSampler
from ceds_deploy.training.schedule import REFRESH, SEMI, WARMUP, RunSchedule, sigmoid_rampup
from ceds_deploy.volume import Geometry

# ---------------------------------------------------------------------- EMA


def test_ema_alpha_is_the_true_average_then_the_decay() -> None:
    assert ema_alpha(0) == 0.0  # first update: the teacher becomes the student
    assert ema_alpha(1) == 0.5
    assert ema_alpha(3) == 0.75
    assert ema_alpha(99) == pytest.approx(0.99)
    assert ema_alpha(10_000) == 0.99
    assert ema_alpha(500, decay=0.999) == pytest.approx(1 - 1 / 501)  # still below the decay


def test_update_teacher_averages_parameters_and_copies_buffers() -> None:
    student = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in teacher.parameters():
            p.fill_(1.0)
        for p in student.parameters():
            p.fill_(3.0)
        student[1].running_mean.fill_(7.0)
        student[1].running_var.fill_(5.0)
        teacher[1].running_mean.fill_(-1.0)
    update_teacher(teacher, student, ema_alpha(3))  # 0.75 * 1 + 0.25 * 3
    for p in teacher.parameters():
        assert torch.allclose(p, torch.full_like(p, 1.5))
    assert torch.equal(teacher[1].running_mean, torch.full((2,), 7.0))
    assert torch.equal(teacher[1].running_var, torch.full((2,), 5.0))
    update_teacher(teacher, student, ema_alpha(0))  # alpha 0: an exact copy
    for t, s in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(t, s)


# ---------------------------------------------------------------------- losses


def test_sharpen_matches_hand_computed_values() -> None:
    p = torch.tensor([0.7, 0.3, 0.5, 0.9, 0.0, 1.0])
    out = sharpen(p, 0.1)
    # 0.7^10 / (0.7^10 + 0.3^10) = 0.0282475249 / 0.0282534298
    expected = torch.tensor([0.9997910024, 1 - 0.9997910024, 0.5, 0.9999999997, 0.0, 1.0])
    assert torch.allclose(out, expected, atol=1e-7)
    assert torch.allclose(sharpen(p, 1.0), p)  # T = 1 changes nothing
    two_class = torch.stack([1 - p, p])
    assert torch.allclose(sharpen(two_class, 0.1).sum(0), torch.ones(6), atol=1e-6)  # still a distribution


def test_sigmoid_rampup_matches_hand_computed_values() -> None:
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5))  # 0.006737947
    assert sigmoid_rampup(5, 10) == pytest.approx(0.2865047969)  # exp(-5 * 0.5^2)
    assert sigmoid_rampup(2.5, 10) == pytest.approx(0.0600546679)  # exp(-5 * 0.75^2)
    assert sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(25, 10) == 1.0  # clipped
    assert sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(7, 0) == 1.0


def test_consistency_is_gated_by_the_teachers_rounded_confidence() -> None:
    shape = (1, 2, 2, 2, 2)
    student = torch.zeros(shape)  # softmax 0.5 / 0.5 everywhere
    teacher = torch.zeros(shape)
    teacher[:, 1] = 20.0  # certain of class 1: sharpened target (0, 1)
    # Without a gate every voxel and class contributes (0.5 - 0)^2 = (0.5 - 1)^2 = 0.25.
    assert consistency_loss(student, teacher, None, 0.1).item() == pytest.approx(0.25)
    conf = torch.zeros(shape)
    conf[:, 1, 0] = 3.0  # P(right) = 0.95 on the first x-slice -> 1 ...
    conf[:, 1, 1] = -3.0  # ... 0.05 on the second -> 0
    assert consistency_loss(student, teacher, conf, 0.1).item() == pytest.approx(0.125)
    # The gradient reaches the student only.
    s = student.clone().requires_grad_(True)
    t = teacher.clone().requires_grad_(True)
    consistency_loss(s, t, conf, 0.1).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_confidence_loss_balances_right_and_wrong_voxels() -> None:
    seg = torch.zeros(1, 2, 8, 1, 1)
    seg[0, 1, :6] = 1.0  # predicts tumour on the first 6 voxels
    label = torch.ones(1, 1, 8, 1, 1, dtype=torch.uint8)  # all tumour: 6 right, 2 wrong
    correct = correctness(seg, label)
    assert correct.tolist() == [[[[1]], [[1]], [[1]], [[1]], [[1]], [[1]], [[0]], [[0]]]]
    weights = confidence_class_weights(correct)
    assert weights.tolist() == pytest.approx([3.0, 1.0], rel=1e-5)  # 6 / 2
    conf = torch.zeros(1, 2, 8, 1, 1)  # uninformative head: CE = log 2 whatever the weights
    assert confidence_loss(conf, seg, label).item() == pytest.approx(math.log(2), rel=1e-5)
    conf[0, 1, :6] = 4.0  # confident and right on the 6 right voxels
    conf[0, 0, 6:] = 4.0  # and on the 2 wrong ones
    assert confidence_loss(conf, seg, label).item() < 0.05


# ---------------------------------------------------------------------- schedule and sampler


def test_schedule_reproduces_the_reference_epochs_at_full_length() -> None:
    config = TrainConfig(epochs=8000)
    steps_per_epoch = 20  # the reference: 20 labeled volumes, one per batch
    s = RunSchedule.from_config(config, config.total_steps(steps_per_epoch))
    assert (s.warmup_steps, s.refresh_period, s.refresh_length) == (400 * 20, 1000 * 20, 5 * 20)
    assert s.phase(0) == WARMUP and s.phase(7999) == WARMUP and s.phase(8000) == SEMI
    assert s.phase(19_998) == SEMI and s.phase(19_999) == REFRESH and s.phase(20_098) == REFRESH
    assert s.phase(20_099) == SEMI
    # 7 full bursts, then the run ends one step into the 8th (the reference: epoch 7999 of 8000)
    assert sum(s.phase(i) == REFRESH for i in range(s.total_steps)) == 7 * 100 + 1
    assert s.rampup(s.total_steps // 2) == pytest.approx(math.exp(-1.25))


def test_short_run_keeps_every_phase_and_other_methods_never_refresh() -> None:
    for method, has_refresh in (("ceds", True), ("mean-teacher", False), ("supervised", False)):
        s = RunSchedule.from_config(TrainConfig(method=method, iterations=200), 200)
        phases = [s.phase(i) for i in range(200)]
        assert phases[:10] == [WARMUP] * 10 and phases[10] == SEMI
        assert (REFRESH in phases) == has_refresh
        if has_refresh:
            assert phases.count(REFRESH) == 8  # one step in each of 8 periods of 25


def test_two_stream_sampler_is_labeled_first_deterministic_and_split_across_ranks() -> None:
    whole = TwoStreamSampler(6, 5, 1, 2, seed=3)
    epoch = whole.epoch(4)
    assert len(epoch) == 6 and sorted(b.labeled[0] for b in epoch) == list(range(6))
    assert all(len(b.unlabeled) == 2 and len(set(b.unlabeled)) == 2 for b in epoch)
    assert epoch == whole.epoch(4) and epoch != whole.epoch(5)
    ranks = [TwoStreamSampler(6, 5, 1, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    assert ranks[0].steps_per_epoch == 3
    seen = [i for r in ranks for b in r.epoch(4) for i in b.labeled]
    assert sorted(seen) == list(range(6))  # the two processes split the labeled cases
    with pytest.raises(ValueError, match="cannot fill"):
        TwoStreamSampler(1, 5, 1, 1, seed=0, world_size=2)


# ---------------------------------------------------------------------- AUROC


def test_auroc_against_pair_counting() -> None:
    assert auroc(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0])) == 1.0
    assert auroc(np.array([0.1, 0.2, 0.9, 0.8]), np.array([1, 1, 0, 0])) == 0.0
    assert auroc(np.full(4, 0.5), np.array([1, 0, 1, 0])) == 0.5
    assert math.isnan(auroc(np.array([0.3, 0.4]), np.array([1, 1])))
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(300), 2)  # with ties
    labels = rng.random(300) < scores
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auroc(scores, labels) == pytest.approx(pairs)


# ---------------------------------------------------------------------- config


def test_config_file_then_cli_overrides(tmp_path: Path) -> None:
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("method: mean-teacher\nwidth: 8\npatch: [64, 64, 32]\nepochs: 50\nspacing: 2\n")
    config = resolve_config(yaml_file, {"width": 4, "iterations": 30, "seed": None})
    assert (config.method, config.width, config.patch, config.spacing) == (
        "mean-teacher",
        4,
        (64, 64, 32),
        (2.0, 2.0, 2.0),
    )
    assert config.iterations == 30 and config.epochs is None  # the CLI budget replaces the file's
    toml_file = tmp_path / "run.toml"
    toml_file.write_text('method = "supervised"\nbatch-size = 3\nhu_window = [-100, 200]\n')
    config = resolve_config(toml_file, {})
    assert (config.method, config.batch_size, config.hu_window) == ("supervised", 3, (-100.0, 200.0))
    assert config.labeled_per_batch == 3 and config.unlabeled_per_batch == 0
    assert build_config(config.to_dict()) == config  # round trip through plain data


@pytest.mark.parametrize(
    "text, message",
    [
        ("widht: 4\n", "unknown setting"),
        ("width: four\n", "width must be a whole number"),
        ("patch: [60, 64, 32]\n", "multiples of 16"),
        ("method: fixmatch\n", "method must be one of"),
        ("epochs: 3\niterations: 4\n", "not both"),
        ("patch: [64, 32, 32]\n", "square in x and y"),
        ("val_fraction: 1.0\n", "val_fraction must be in"),
        ("- a list\n", "expected a mapping"),
        ("width: [\n", "not valid YAML"),
    ],
)
def test_bad_config_files_name_the_file_and_the_value(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        resolve_config(path, {})
    assert str(path) in str(err.value)


def test_bad_cli_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="command line: batch_size must be >= 1, got 0"):
        resolve_config(None, {"batch_size": 0})
    with pytest.raises(ConfigError, match="needs batch_size >= 2"):
        resolve_config(None, {"batch_size": 1})
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config("/nonexistent/run.yaml", {})


# ---------------------------------------------------------------------- dataset checks

GEOMETRY = Geometry((2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), (16, 16, 16))


def _write_case(root: Path, name: str, label: np.ndarray | None = None, label_geometry: Geometry = GEOMETRY) -> None:
    write_volume(root / "imagesTr" / f"{name}.nii.gz", np.zeros(GEOMETRY.shape, np.int16), GEOMETRY)
    if label is not None:
        write_volume(root / "labelsTr" / f"{name}.nii.gz", label, label_geometry)


def _folder(tmp_path: Path, labeled: int = 3, unlabeled: int = 2) -> Path:
    root = tmp_path / "data"
    for i in range(labeled):
        _write_case(root, f"case_{i}", np.zeros(GEOMETRY.shape, np.uint8))
    for i in range(unlabeled):
        _write_case(root, f"extra_{i}")
    return root


def test_split_from_folders_holds_out_validation_and_hides_labels(tmp_path: Path) -> None:
    root = _folder(tmp_path, labeled=5, unlabeled=2)
    split = split_dataset(root, TrainConfig(val_fraction=0.2, labeled=2))
    assert len(split.validation) == 1 and len(split.labeled) == 2 and len(split.hidden_labels) == 2
    assert len(split.unlabeled) == 4  # 2 unlabeled images + 2 labeled ones trained without their labels
    names = {c.name for c in split.labeled} | {c.name for c in split.validation} | set(split.hidden_labels)
    assert names == {f"case_{i}" for i in range(5)}
    assert split == split_dataset(root, TrainConfig(val_fraction=0.2, labeled=2, seed=7))  # not seed-dependent
    chosen = split_dataset(root, TrainConfig(val_cases=("case_4",)))
    assert [c.name for c in chosen.validation] == ["case_4"]


def test_dataset_json_with_a_missing_image_names_it(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "training": [
                    {"image": "imagesTr/case_0.nii.gz", "label": "labelsTr/case_0.nii.gz"},
                    {"image": "imagesTr/gone.nii.gz", "label": "labelsTr/case_1.nii.gz"},
                ],
                "unlabeled": ["imagesTr/extra_0.nii.gz"],
            }
        )
    )
    with pytest.raises(DatasetError, match=r"gone\.nii\.gz: image of case gone is missing"):
        split_dataset(root, TrainConfig())


def test_too_few_labeled_cases_for_a_batch(tmp_path: Path) -> None:
    root = _folder(tmp_path, labeled=2)
    with pytest.raises(DatasetError, match=r"1 labeled training case\(s\).*a step needs 2"):
        split_dataset(root, TrainConfig(batch_size=4, labeled_batch_size=2, val_fraction=0.5))
    with pytest.raises(DatasetError, match="needs 2 unlabeled"):
        split_dataset(_folder(tmp_path / "b", labeled=3, unlabeled=1), TrainConfig(batch_size=3, labeled_batch_size=1))


@pytest.mark.parametrize("problem", ["values", "shape", "geometry", "orphan"])
def test_bad_labels_name_the_file(tmp_path: Path, problem: str) -> None:
    from ceds_deploy.io import read_scan
    from ceds_deploy.training.cache import read_label

    root = tmp_path / "data"
    label = np.zeros(GEOMETRY.shape, np.uint8)
    if problem == "values":
        label[3, 3, 3] = 2
        _write_case(root, "bad", label)
    elif problem == "shape":
        _write_case(root, "bad", np.zeros((16, 16, 12), np.uint8), GEOMETRY.with_(shape=(16, 16, 12)))
    elif problem == "geometry":
        _write_case(root, "bad", label, GEOMETRY.with_(origin=(5.0, 0.0, 0.0)))
    else:
        write_volume(root / "labelsTr" / "bad.nii.gz", label, GEOMETRY)
        (root / "imagesTr").mkdir(parents=True)
        with pytest.raises(DatasetError, match=r"labelsTr/bad\.nii\.gz: label without an image"):
            split_dataset(root, TrainConfig())
        return
    case = LabeledCase("bad", root / "imagesTr" / "bad.nii.gz", root / "labelsTr" / "bad.nii.gz")
    expected = {
        "values": "label values must be 0 or 1, found 2",
        "shape": "label shape",
        "geometry": "label geometry differs",
    }[problem]
    with pytest.raises(DatasetError, match=expected) as err:
        read_label(case, read_scan(case.image))
    assert str(case.label) in str(err.value)


# ---------------------------------------------------------------------- precision


def test_precision_auto_is_fp32_on_the_cpu_and_amp_of_older_runs_maps_to_precision() -> None:
    from ceds_deploy.training.config import build_config
    from ceds_deploy.training.precision import resolve_precision

    auto = resolve_precision("auto", "cpu")
    assert (auto.name, auto.mixed, auto.grad_scaler().is_enabled()) == ("fp32", False, False)
    assert resolve_precision("bf16", "cpu").mixed and not resolve_precision("bf16", "cpu").scaled
    assert TrainConfig().precision == "auto"
    # config.yaml of runs before `precision` holds amp: true|false
    assert build_config({"amp": False}).precision == "fp32"
    assert build_config({"amp": True}).precision == "bf16"
    assert build_config({"amp": True, "device": "cuda"}).precision == "fp16"
    assert "amp" not in build_config({"amp": True}).to_dict()
    with pytest.raises(ConfigError, match="precision must be one of auto, fp32, bf16, fp16, got 'fp8'"):
        TrainConfig(precision="fp8")
    with pytest.raises(ConfigError, match="prefetch_batches must be >= 0"):
        TrainConfig(prefetch_batches=-1)


def _weight_gradients(conv: torch.nn.Conv3d, x: torch.Tensor, precision, repeats: int) -> tuple[list, torch.dtype]:
    grads, dtype = [], None
    for _ in range(repeats):
        conv.zero_grad()
        with precision.autocast():
            y = conv(x)
        dtype = y.dtype
        y.float().square().mean().backward()
        grads.append(conv.weight.grad.clone())
    return grads, dtype


def test_cpu_mixed_precision_runs_convolutions_smaller_than_their_kernel_in_float32() -> None:
    """oneDNN's bf16 weight gradients of such a convolution (32 channels, 4^3 input, 5^3 kernel: the
    demo recipe's deepest level) came out as garbage or NaN on this CPU kind; guarded, they are
    float32, repeatable and equal fp32's. Larger inputs stay bf16, and fp32 passes are untouched."""
    from ceds_deploy.training.precision import TrainPrecision, resolve_precision

    bf16, fp32 = resolve_precision("bf16", "cpu"), resolve_precision("fp32", "cpu")
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(32, 32, 5, padding=2)
    small = torch.randn(2, 32, 4, 4, 4)
    handles = bf16.guard_convolutions(conv)
    try:
        grads, dtype = _weight_gradients(conv, small, bf16, repeats=8)
        assert dtype == torch.float32
        assert all(torch.equal(g, grads[0]) for g in grads)
        reference, _ = _weight_gradients(conv, small, fp32, repeats=1)
        torch.testing.assert_close(grads[0], reference[0])
        _, large_dtype = _weight_gradients(conv, torch.randn(1, 32, 8, 8, 8), bf16, repeats=1)
        assert large_dtype == torch.bfloat16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert conv(small).dtype == torch.float32
            assert torch.is_autocast_enabled("cpu")  # the float32 scope ended with the convolution
    finally:
        for handle in handles:
            handle.remove()
    assert fp32.guard_convolutions(conv) == [] and TrainPrecision("bf16", "cuda").guard_convolutions(conv) == []

"""The confidence calibration: ECE, the isotonic fit, the spec field, the one place it is applied (every
backend), the region it looks at, and the review score from it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ceds_deploy.errors import ArtifactError, ConfigError
from ceds_deploy.qa.calibration import CalibrationSamples, calibration_region, fit_isotonic, reliability_png
from ceds_deploy.qa.metrics import expected_calibration_error
from ceds_deploy.qa.review import assess, expected_dice
from ceds_deploy.spec import Calibration, ModelSpec

IDENTITY = ((0.0, 0.0), (1.0, 1.0))


def test_ece_of_known_maps() -> None:
    rng = np.random.default_rng(0)
    conf = np.full(10_000, 0.8)
    right = rng.random(conf.size) < 0.8
    assert expected_calibration_error(conf, right) == pytest.approx(abs(right.mean() - 0.8))
    # Confidence 1.0 falls in the last bin; all wrong: ECE 1.
    assert expected_calibration_error(np.ones(5), np.zeros(5, bool)) == 1.0
    # Two bins, each off by 0.3 and 0.1, weighted by their voxels.
    conf = np.array([0.1] * 3 + [0.9] * 1)
    right = np.array([1, 0, 0, 1])  # bin 0.1: 1/3 right (off 0.233); bin 0.9: 1 right (off 0.1)
    assert expected_calibration_error(conf, right) == pytest.approx((3 * (1 / 3 - 0.1) + 0.1) / 4)
    # A histogram (fractional correctness, counts as weights) gives the per-voxel value.
    assert expected_calibration_error([0.1, 0.9], [1 / 3, 1.0], [3, 1]) == pytest.approx(
        expected_calibration_error(conf, right)
    )
    assert math.isnan(expected_calibration_error(np.array([]), np.array([])))


def _samples(rng, n: int, truth) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n voxels: mask (half predicted tumour), confidence on the 1/1024 grid, and labels drawn so that
    P(right | c, class) = truth(c, class)."""
    mask = (rng.random(n) < 0.5).astype(np.uint8)
    conf = np.round(rng.random(n) * 1024) / 1024
    right = rng.random(n) < truth(conf, mask)
    label = np.where(right, mask, 1 - mask).astype(np.uint8)
    return mask, conf, label, np.ones(n, bool)


def test_isotonic_fit_calibrates_held_out_voxels_per_predicted_class() -> None:
    rng = np.random.default_rng(1)

    def truth(conf, mask):  # inside the mask the raw value is inverted and low: no one map fits both
        return np.where(mask == 1, 0.95 - 0.3 * conf, conf**2)

    fit, held = CalibrationSamples(), CalibrationSamples()
    fit.add(*_samples(rng, 400_000, truth))
    held.add(*_samples(rng, 400_000, truth))
    calibration = fit_isotonic(fit)
    assert held.ece() > 0.15
    assert held.ece(calibration) < 0.02
    for table in calibration.tables:
        ys = [y for _, y in table]
        assert ys == sorted(ys) and len(table) <= 1025
    # The inverted class gets a flat table near its mean accuracy (0.8): the best a monotone map can do.
    inside = np.interp([0.1, 0.9], *np.array(calibration.tables[1]).T)
    assert abs(inside[0] - inside[1]) < 0.02 and abs(inside.mean() - 0.8) < 0.03
    assert reliability_png({"raw": held.histogram(), "calibrated": held.histogram(calibration)})[:4] == b"\x89PNG"


def test_spec_carries_a_validated_calibration() -> None:
    calibration = Calibration((IDENTITY, ((0.0, 0.2), (0.5, 0.9), (1.0, 0.95))), cases=3)
    spec = ModelSpec(calibration=calibration)
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and again.calibration is not None and again.calibration.tables[1][1] == (0.5, 0.9)
    assert ModelSpec.from_json(ModelSpec().to_json()).calibration is None  # old specs: the raw map
    bad_tables = [
        (IDENTITY,),  # one table for two classes
        (IDENTITY, ((0.0, 0.5), (1.0, 0.4))),  # falling
        (IDENTITY, ((0.1, 0.5), (1.0, 0.6))),  # not from 0
        (IDENTITY, ((0.0, 0.5), (1.0, 1.5))),  # beyond 1
        (IDENTITY, ((0.0, float("nan")), (1.0, 1.0))),
    ]
    for tables in bad_tables:
        with pytest.raises(ConfigError):
            ModelSpec(calibration=Calibration(tables))  # type: ignore[arg-type]
        with pytest.raises(ArtifactError):
            ModelSpec.from_dict({**ModelSpec().to_dict(), "calibration": {"tables": tables}})
    with pytest.raises(ArtifactError):
        ModelSpec.from_dict({**ModelSpec().to_dict(), "calibration": {"tables": [IDENTITY, IDENTITY], "x": 1}})


def test_apply_uses_the_table_of_each_voxels_predicted_class_on_any_layout() -> None:
    calibration = Calibration((((0.0, 0.5), (1.0, 1.0)), ((0.0, 0.0), (0.5, 0.8), (1.0, 0.9))))
    conf = np.full((3, 4, 5), 0.5, dtype=np.float32).transpose(2, 1, 0)  # a non-contiguous view
    mask = np.zeros(conf.shape, np.uint8)
    mask[0] = 1
    calibration.apply(conf, mask)
    assert np.allclose(conf[0], 0.8) and np.allclose(conf[1:], 0.75)


def test_region_is_the_mask_and_its_margin_in_mm() -> None:
    mask = np.zeros((40, 30, 20), np.uint8)
    mask[18:22, 14:16, 9:11] = 1
    spacing = (1.0, 2.0, 3.0)
    region = calibration_region(mask, spacing, 6.0)
    idx = np.argwhere(mask > 0)
    grid = np.indices(mask.shape).reshape(3, -1).T
    dist = np.min(np.sqrt((((grid[:, None, :] - idx[None, :, :]) * np.array(spacing)) ** 2).sum(-1)), axis=1).reshape(
        mask.shape
    )
    assert np.array_equal(region, dist <= 6.0)
    assert not calibration_region(np.zeros_like(mask), spacing, 6.0).any()


def test_expected_dice_and_the_review_flag() -> None:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[5:10, 5:10, 5:10] = 1  # 125 voxels
    calibrated = np.ones(mask.shape, np.float32)
    calibrated[mask > 0] = 0.8  # expected 100 right inside
    around = calibration_region(mask, (1.0, 1.0, 1.0), 2.0) & (mask == 0)
    calibrated[around] = 0.9  # expected 0.1 missed per voxel around it
    missed = 0.1 * around.sum()
    assert expected_dice(mask, calibrated, (1.0, 1.0, 1.0), 2.0) == pytest.approx(200 / (125 + 100 + missed), rel=1e-5)
    assert expected_dice(np.zeros_like(mask), calibrated, (1.0,) * 3, 2.0) == 0.0

    kwargs = dict(voxel_ml=0.1, threshold=0.5, spacing=(1.0, 1.0, 1.0), calibration_margin_mm=2.0)
    score = expected_dice(mask, calibrated, (1.0, 1.0, 1.0), 2.0)
    low = assess(mask, calibrated, review_below=score + 0.01, **kwargs)  # type: ignore[arg-type]
    high = assess(mask, calibrated, review_below=score - 0.01, **kwargs)  # type: ignore[arg-type]
    assert low.needs_review and "expected Dice" in low.review_reason and low.expected_dice == pytest.approx(score)
    assert not high.needs_review
    raw = assess(mask, calibrated * 0.5, 0.1, 0.5)  # no calibration: the old rule, no score
    assert raw.needs_review and "below confidence" in raw.review_reason and math.isnan(raw.expected_dice)
    empty = assess(np.zeros_like(mask), calibrated, **kwargs)  # type: ignore[arg-type]
    assert empty.needs_review and empty.review_reason == "no tumour found"


@pytest.fixture(scope="module")
def calibrated_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny random network with a (made-up, steep) calibration in its teacher spec."""
    from ceds_deploy.checkpoint import checkpoint_spec, load_checkpoint, save_checkpoint

    payload = load_checkpoint(tiny_checkpoint)
    calibration = Calibration((((0.0, 0.1), (0.5, 0.2), (1.0, 0.3)), ((0.0, 0.6), (1.0, 0.9))), cases=1)
    payload["spec"] = checkpoint_spec(payload).replace(calibration=calibration).to_dict()
    path = tmp_path_factory.mktemp("calibrated") / "calibrated.pt"
    save_checkpoint(path, payload)
    return path


def test_every_backend_applies_the_calibration_in_one_place(calibrated_checkpoint, tmp_path) -> None:
    """torch from the checkpoint and ONNX Runtime from its export give the same calibrated map, equal
    to the spec's tables applied to the raw map; the student's spec drops the teacher's calibration."""
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends import create_backend
    from ceds_deploy.checkpoint import load_network
    from ceds_deploy.export.onnx_export import export_checkpoint
    from ceds_deploy.inference import segment_volume
    from ceds_deploy.synthetic import make_case

    net, spec = load_network(calibrated_checkpoint)
    assert spec.calibration is not None
    assert load_network(calibrated_checkpoint, "student")[1].calibration is None
    onnx = tmp_path / "model.onnx"
    export_checkpoint(calibrated_checkpoint, onnx, validate=False)
    assert read_spec(onnx).calibration == spec.calibration
    image, _ = make_case(3, 0, "small")
    maps = {}
    for name, artifact, model_spec in (
        ("torch", calibrated_checkpoint, spec),
        ("onnxruntime", onnx, read_spec(onnx)),
        ("raw", calibrated_checkpoint, spec.replace(calibration=None)),
    ):
        with create_backend("onnxruntime" if name == "onnxruntime" else "torch", artifact, model_spec) as backend:
            maps[name] = segment_volume(image, backend)
    assert np.array_equal(maps["torch"].mask, maps["raw"].mask)
    expected = spec.calibration.apply(maps["raw"].confidence.copy(), maps["raw"].mask)
    assert np.abs(maps["torch"].confidence - expected).max() <= 1.5 / 1024  # the stored 1/1024 steps
    assert np.abs(maps["onnxruntime"].confidence - maps["torch"].confidence).max() <= 2 / 1024
    background = maps["torch"].confidence[maps["torch"].mask == 0]
    assert background.min() >= 0.1 - 1e-3 and background.max() <= 0.3 + 1e-3  # the tables' range


def test_ceds_calibrate_and_the_benchmark_end_to_end(tiny_checkpoint, tmp_path) -> None:
    """`ceds calibrate` on a real (random, width-4) network and phantom cases stores a calibration that
    lowers the ECE on its cases and writes the diagram; benchmarks/calibration.py scores held-out phantoms."""
    import importlib.util
    import json
    from pathlib import Path

    from typer.testing import CliRunner

    from ceds_deploy.checkpoint import load_network
    from ceds_deploy.cli.app import app
    from ceds_deploy.synthetic import make_cohort

    cohort = make_cohort(tmp_path / "cohort", cases=2, labeled=2, test=1, seed=0, size="small")
    out = tmp_path / "calibrated.pt"
    result = CliRunner().invoke(app, ["calibrate", str(tiny_checkpoint), str(cohort), "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    record = json.loads((tmp_path / "calibration.json").read_text(encoding="utf-8"))
    assert record["ece_after_on_fit_cases"] < record["ece_before_on_fit_cases"]
    assert (tmp_path / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    spec = load_network(out)[1]
    assert spec.calibration is not None and spec.calibration.cases == 2
    assert load_network(tiny_checkpoint)[1].calibration is None  # --out: the original is untouched
    assert "case(s) only" not in result.output
    one = CliRunner().invoke(
        app,
        ["calibrate", str(tiny_checkpoint), str(cohort), "--cases", "phantom_000", "--out", str(tmp_path / "one.pt")],
    )
    assert one.exit_code == 0 and "calibrating on 1 case(s) only" in " ".join(one.output.split()), one.output

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration.py"
    module_spec = importlib.util.spec_from_file_location("calibration_benchmark", path)
    bench = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    module_spec.loader.exec_module(bench)  # type: ignore[union-attr]
    report = tmp_path / "bench" / "calibration.json"
    args = [str(out), "--data", str(cohort), "--json", str(report), "--val-cases", "phantom_000,phantom_001"]
    assert bench.main([*args, "--extra-phantoms", "2", "--phantom-dir", str(tmp_path / "held")]) == 0
    checkpoint = json.loads(report.read_text(encoding="utf-8"))["checkpoints"][0]
    assert checkpoint["cases_n"] == 3 and checkpoint["fit_cases"] == ["phantom_000", "phantom_001"]
    assert 0 <= checkpoint["ece_held_out_after"] <= 1 and 0 <= checkpoint["ece_held_out_before"] <= 1
    assert all(0 <= c["expected_dice"] <= 1 and 0 <= c["dice"] <= 1 for c in checkpoint["cases"])
    assert (report.parent / checkpoint["reliability_png"]).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("layout", ["scan", "c_order", "mixed", "strided"])
def test_the_fast_calibrate_and_quantize_equals_apply_then_quantize_bit_for_bit(layout, monkeypatch) -> None:
    """`calibrate_and_quantize` (a table per 2^-16 of the raw value, the exact path where a step
    changes or a knot lies) gives the reference path's float32 values exactly: random raw values,
    values on and next to every knot and step edge, 1.0 and 0.0, all classes, a class without a
    table, on the restored maps' transposed layout and on a plain one."""
    import ceds_deploy.transforms.confidence as confidence
    from ceds_deploy.transforms.confidence import calibrate_and_quantize, quantize_confidence

    exact_sizes: list[int] = []
    monkeypatch.setattr(confidence, "CHUNK", 4099)  # many chunks, on every core
    reference_exact = confidence._exact
    monkeypatch.setattr(confidence, "_exact", lambda v, p, c: exact_sizes.append(v.size) or reference_exact(v, p, c))
    rng = np.random.default_rng(0)
    knots = np.unique(np.concatenate([[0.0, 1.0], rng.random(30)]))
    calibration = Calibration(
        tables=(
            tuple(zip(knots.tolist(), np.sort(rng.random(knots.size)).tolist())),
            ((0.0, 0.05), (0.3, 0.3), (0.3001, 0.71), (1.0, 0.97)),
        )
    )
    shape = (40, 30, 25)
    raw = rng.random(shape, dtype=np.float32)
    special = np.concatenate(
        [knots, np.nextafter(knots, 0), np.nextafter(knots, 1), [0.0, 1.0, 0.3, 0.3001], (np.arange(1025) + 0.5) / 1024]
    ).astype(np.float32)
    raw.flat[: special.size] = np.clip(special, 0, 1)
    labels = rng.integers(0, 3, shape).astype(np.uint8)  # class 2 has no table: apply leaves it raw
    if layout in ("scan", "mixed"):  # as restore_to_source lays maps out: x fastest in memory
        raw = np.ascontiguousarray(raw.T).T
    if layout == "scan":  # mixed: the classes C-ordered, the map not
        labels = np.ascontiguousarray(labels.T).T
    expected = raw.copy()
    calibration.apply(expected, labels)
    quantize_confidence(expected)
    fast = raw.copy() if layout == "c_order" else np.ascontiguousarray(raw.T).T
    if layout == "strided":  # a map that is not one block of memory: worked on in a copy, written back
        holder = np.zeros((shape[0], shape[1], 2 * shape[2]), np.float32)
        holder[:, :, ::2] = raw
        fast = holder[:, :, ::2]
    result = calibrate_and_quantize(fast, labels, calibration)
    assert result is fast and fast.dtype == np.float32
    if layout == "strided":
        assert np.shares_memory(fast, holder)
    np.testing.assert_array_equal(fast, expected)
    tables = [n for n in exact_sizes if n == 1 << 16 | 1]  # building the lookup tables
    assert len(tables) == 4 and max(n for n in exact_sizes if n not in tables) < raw.size // 2  # the fast path ran
    assert len(np.unique(fast)) > 500  # the tables were exercised, not a constant


def test_assess_gives_the_same_findings_on_the_restored_maps_layout() -> None:
    """Restored maps are x fastest in memory; assess walks them in memory order (spacing permuted
    alike) and finds exactly what it finds on C-ordered copies, anisotropic spacing included."""
    rng = np.random.default_rng(2)
    shape = (60, 50, 40)
    mask = np.zeros(shape, np.uint8)
    mask[20:35, 10:30, 5:20] = 1
    mask[rng.random(shape) > 0.999] = 1  # scattered voxels widen the box
    conf = rng.random(shape, dtype=np.float32)
    spacing = (0.7, 0.9, 2.5)
    plain = assess(mask, conf, 0.001, 0.5, spacing=spacing, calibration_margin_mm=6.0)
    scan_layout = assess(
        np.ascontiguousarray(mask.T).T,
        np.ascontiguousarray(conf.T).T,
        0.001,
        0.5,
        spacing=spacing,
        calibration_margin_mm=6.0,
    )
    assert scan_layout.expected_dice == pytest.approx(plain.expected_dice, rel=1e-12)
    assert scan_layout.tumour_ml == plain.tumour_ml and scan_layout.needs_review == plain.needs_review
    assert scan_layout.mean_confidence == pytest.approx(plain.mean_confidence, rel=1e-12)
    assert 0 < plain.expected_dice < 1


@pytest.mark.parametrize("spacing", [(0.8, 0.9, 2.5), (3.0, 0.7, 0.7)])
def test_the_margin_in_slabs_equals_one_distance_transform(spacing) -> None:
    """`within_margin` transforms slabs (with the margin's overlap) on every core: the thresholded
    region is the whole transform's voxel for voxel, slabs without a tumour voxel nearby included."""
    from scipy import ndimage

    from ceds_deploy.qa.calibration import within_margin

    rng = np.random.default_rng(4)
    background = rng.random((90, 40, 30)) > 0.002
    background[20:70] = True  # a stretch far from any tumour voxel
    background[85:, :5, :5] = False
    expected = ndimage.distance_transform_edt(background, sampling=spacing) <= 6.0
    for cores in (1, 2, 5):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
            np.testing.assert_array_equal(within_margin(background, spacing, 6.0), expected)
    assert expected.any() and not expected.all()


@pytest.mark.parametrize("spacing", [(0.8, 0.9, 2.5), (3.0, 0.7, 0.7), (1.0, 1.0, 1.0)])
def test_the_region_around_a_scattered_mask_is_measured_piece_by_piece_exactly(spacing) -> None:
    """`calibration_box` measures the margin around each of the tumour's pieces (`tumour_pieces`) in its
    own box: the region equals one distance transform over the whole box, for blobs far apart, blobs
    nearer than the margin, single voxels, and pieces at the scan's edges."""
    from scipy import ndimage

    from ceds_deploy.qa.calibration import calibration_box, tumour_box, tumour_pieces

    rng = np.random.default_rng(7)
    mask = np.zeros((120, 90, 70), np.uint8)
    mask[5:15, 10:20, 5:12] = 1
    mask[60:62, 70:80, 50:60] = 1
    mask[66:70, 72:75, 55:69] = 1  # near the last one
    mask[0, 0, 0] = mask[119, 89, 69] = mask[100, 5, 60] = 1
    mask[rng.random(mask.shape) > 0.99995] = 1
    found = calibration_box(mask, spacing, 6.0)
    assert found is not None
    box, region = found
    full = np.zeros(mask.shape, bool)
    full[box] = region
    expected = ndimage.distance_transform_edt(mask == 0, sampling=spacing) <= 6.0
    np.testing.assert_array_equal(full, expected)
    tight = tumour_box(mask)
    assert tight is not None
    pieces = tumour_pieces(mask, tight, [int(np.ceil(6.0 / s)) for s in spacing])
    assert len(pieces) > 3 and sum(int(mask[p].sum()) for p in pieces) >= int(mask.sum())
    compact = np.zeros_like(mask)
    compact[30:50, 30:50, 30:50] = 1
    assert len(tumour_pieces(compact, tumour_box(compact), [5, 5, 5])) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize("geometry", ["axial_lps", "ras_like", "permuted_flipped", "oblique"])
@pytest.mark.parametrize("classes", [2, 3])
def test_the_confidence_finished_as_it_is_restored_equals_finishing_the_whole_map(
    geometry, classes, monkeypatch
) -> None:
    """The confidence map is clipped, calibrated and quantized as it is restored (`ConfidenceFinish`):
    on the host in the body's box only, on a GPU chunk by chunk where it is resampled (that path run
    here on the CPU). Both give the float32 values of finishing the whole restored map afterwards, bit
    for bit, on every orientation, for raw values outside [0, 1], on knots and next to them, with the
    exact path taken for some voxels, and with the largest component kept."""
    import torch
    from helpers import GEOMETRIES, sphere_scan

    from ceds_deploy.transforms.confidence import ConfidenceFinish, calibrate_and_quantize
    from ceds_deploy.transforms.preprocess import prepare_scan_on
    from ceds_deploy.transforms.restore import UNCOVERED_CONFIDENCE, restore_prediction, restore_to_source

    fixed: list[int] = []
    reference_fix = ConfidenceFinish.fix
    monkeypatch.setattr(
        ConfidenceFinish,
        "fix",
        lambda self, host, pending: fixed.append(pending[0].size) or reference_fix(self, host, pending),
    )
    image, _ = sphere_scan(GEOMETRIES[geometry])
    spec = ModelSpec(roi_size=(16, 16, 16), target_spacing=(1.5, 1.5, 1.5))  # 3 classes: restore's general path
    model_image, mapping = prepare_scan_on(image, spec, "cpu", as_tensor=True)
    generator = torch.Generator().manual_seed(classes)
    seg = torch.randn((classes, *model_image.shape), generator=generator) * 4
    conf = torch.rand((1, *model_image.shape), generator=generator) * 1.2 - 0.1
    knots = torch.tensor([0.0, 0.3, 0.3001, 0.5, 1.0])
    special = torch.cat([knots, torch.nextafter(knots, torch.zeros(5)), torch.nextafter(knots, torch.ones(5))])
    conf.view(-1)[: special.numel()] = special
    tables = ((0.0, 0.05), (0.3, 0.3), (0.3001, 0.71), (1.0, 0.97))
    for calibration in (None, Calibration(tables=(((0.0, 0.4), (0.5, 0.8), (1.0, 1.0)), tables))):
        for largest in (False, True):
            host, device = (
                restore_prediction(
                    seg, conf, mapping, largest_component=largest, calibration=calibration, finish_on_device=on
                )
                for on in (False, True)
            )
            whole = restore_to_source(conf, mapping, fill=UNCOVERED_CONFIDENCE)[0]
            np.clip(whole, 0.0, 1.0, out=whole)
            calibrate_and_quantize(whole, host.mask, calibration)
            np.testing.assert_array_equal(device.mask, host.mask)
            np.testing.assert_array_equal(host.confidence, whole)
            np.testing.assert_array_equal(device.confidence, whole)
            assert whole.shape == image.shape and len(np.unique(whole)) > 50
    assert fixed and max(fixed) < image.array.size // 2  # the exact path ran for some voxels, not all

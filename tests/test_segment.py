"""`ceds segment` end to end on real files: outputs on the scan's grid, report, resume, shards,
bad inputs, backend choice and exit codes."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import GEOMETRIES, sphere_scan
from typer.testing import CliRunner

from ceds_deploy.cli.app import app, main
from ceds_deploy.inference import SegmentOptions, segment_folder
from ceds_deploy.inference.folder import shard_cases
from ceds_deploy.inference.report import CaseRow
from ceds_deploy.io import read_scan, write_volume
from ceds_deploy.spec import ModelSpec

runner = CliRunner()


@pytest.fixture(scope="module")
def scan_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    for name, suffix in [("axial_lps", ".nii.gz"), ("oblique", ".mha"), ("permuted_flipped", ".nrrd")]:
        image, _ = sphere_scan(GEOMETRIES[name])
        write_volume(folder / f"{name.replace('axial_', '')}{suffix}", image.array, image.geometry)
    (folder / "notes.txt").write_text("not a scan")
    return folder


def run_cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_segment_writes_outputs_on_each_scans_own_grid(scan_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    result = run_cli("segment", str(scan_folder), str(out), "--model", str(tiny_checkpoint), "--batch-size", "3")
    assert result.exit_code == 0, result.output
    for name, suffix in [("lps", ".nii.gz"), ("oblique", ".mha"), ("permuted_flipped", ".nrrd")]:
        source = read_scan(scan_folder / f"{name}{suffix}")
        mask = read_scan(out / f"{name}.nii.gz", dtype=None)
        confidence = read_scan(out / f"{name}_confidence.nii.gz")
        for result_volume in (mask, confidence):
            assert result_volume.shape == source.shape
            np.testing.assert_allclose(result_volume.geometry.affine, source.geometry.affine, atol=1e-5)
        assert mask.array.dtype == np.uint8 and set(np.unique(mask.array)) <= {0, 1}
        assert confidence.array.dtype == np.float32
        assert 0.0 <= confidence.array.min() and confidence.array.max() <= 1.0
        steps = confidence.array * 1024  # stored in steps of 1/1024 (smaller, faster files)
        assert np.abs(steps - np.round(steps)).max() < 1e-3
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = {r["case"]: r for r in report["cases"]}
    assert rows["notes.txt"]["status"] == "skipped"
    assert all(rows[c]["status"] == "ok" for c in ("lps", "oblique", "permuted_flipped"))
    assert rows["lps"]["backend"].startswith("torch fp32") and rows["lps"]["windows"] >= 1
    assert report["run"]["options"]["overlap"] == 0.25 and report["run"]["batch_size"] == 3
    header = (out / "report.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    for column in (
        "case",
        "status",
        "error",
        "tumour_ml",
        "mean_confidence",
        "low_confidence_fraction",
        "needs_review",
        "read_s",
        "preprocess_s",
        "infer_s",
        "restore_s",
        "write_s",
        "review_s",
        "backend",
        "device",
    ):
        assert column in header
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_segment_skips_finished_cases_and_overwrite_redoes_them(scan_folder, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert run_cli("segment", str(scan_folder), str(out), "--model", str(tiny_checkpoint)).exit_code == 0
    # Simulate an interrupted run: one case's outputs are missing.
    (out / "oblique.nii.gz").unlink()
    stamp = (out / "lps.nii.gz").stat().st_mtime_ns
    first = {r["case"]: r for r in json.loads((out / "report.json").read_text(encoding="utf-8"))["cases"]}
    assert run_cli("segment", str(scan_folder), str(out), "--model", str(tiny_checkpoint)).exit_code == 0
    rows = {r["case"]: r for r in json.loads((out / "report.json").read_text(encoding="utf-8"))["cases"]}
    # The report records the folder: a case done by the first run keeps that run's ok row.
    assert rows["lps"]["status"] == "ok" and rows["lps"] == first["lps"]
    assert rows["oblique"]["status"] == "ok" and (out / "oblique.nii.gz").exists()
    assert rows["oblique"]["run_id"] != first["oblique"]["run_id"]
    assert (out / "lps.nii.gz").stat().st_mtime_ns == stamp
    assert run_cli("segment", str(scan_folder), str(out), "--model", str(tiny_checkpoint), "--overwrite").exit_code == 0
    rows = {r["case"]: r for r in json.loads((out / "report.json").read_text(encoding="utf-8"))["cases"]}
    assert rows["lps"]["status"] == "ok"


def test_shards_cover_every_case_exactly_once():
    cases = [Path(f"case_{i:02d}.nii.gz") for i in [5, 3, 9, 1, 0, 7, 2]]
    for count in (1, 2, 3, 7, 10):
        parts = [shard_cases(cases, i, count) for i in range(count)]
        flat = [p for part in parts for p in part]
        assert sorted(flat) == sorted(cases) and len(flat) == len(set(flat))
        assert parts == [shard_cases(list(reversed(cases)), i, count) for i in range(count)]  # order-free


def test_shard_option_processes_only_its_part(scan_folder, tiny_checkpoint, tmp_path):
    outs = []
    for index in range(2):
        out = tmp_path / f"shard{index}"
        assert (
            run_cli(
                "segment", str(scan_folder), str(out), "--model", str(tiny_checkpoint), "--shard", f"{index}/2"
            ).exit_code
            == 0
        )
        outs.append({p.name for p in out.glob("*_confidence.nii.gz")})
    assert outs[0].isdisjoint(outs[1]) and len(outs[0] | outs[1]) == 3


@pytest.mark.parametrize("shard", ["2/2", "x", "1/0"])
def test_bad_shard_is_a_usage_error(shard, scan_folder, tiny_checkpoint, tmp_path):
    result = run_cli("segment", str(scan_folder), str(tmp_path), "--model", str(tiny_checkpoint), "--shard", shard)
    assert result.exit_code == 2 and "shard" in result.output


def test_bad_scans_fail_alone_and_the_run_goes_on(tiny_checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image, _ = sphere_scan(GEOMETRIES["axial_lps"])
    write_volume(folder / "good.nii.gz", image.array, image.geometry)
    write_volume(folder / "nan.nrrd", np.full(image.shape, np.nan, np.float32), image.geometry)
    (folder / "empty.nii.gz").write_bytes(b"")
    (folder / "garbage.mha").write_text("garbage")
    shutil.copy(Path(__import__("nibabel").__file__).parent / "tests" / "data" / "example4d.nii.gz", folder)
    out = tmp_path / "out"
    code = main(["segment", str(folder), str(out), "--model", str(tiny_checkpoint)])
    assert code == 1
    rows = {r["case"]: r for r in json.loads((out / "report.json").read_text(encoding="utf-8"))["cases"]}
    assert rows["good"]["status"] == "ok"
    assert "every voxel is NaN" in rows["nan"]["error"]
    assert "file is empty" in rows["empty"]["error"]
    assert "cannot be read" in rows["garbage"]["error"]
    assert "is 4D" in rows["example4d"]["error"]
    assert {rows[c]["status"] for c in ("nan", "empty", "garbage", "example4d")} == {"failed"}
    assert sorted(p.name for p in out.iterdir()) == [
        "good.nii.gz",
        "good_confidence.nii.gz",
        "report.csv",
        "report.json",
    ]


def test_scans_sharing_a_case_name_each_keep_their_row(tiny_checkpoint, tmp_path):
    """Two files whose names make one case name: one is segmented, the other fails under its own
    file name; both rows stay in the report (the failed one used to replace the case's)."""
    folder = tmp_path / "in"
    folder.mkdir()
    image, _ = sphere_scan(GEOMETRIES["axial_lps"])
    write_volume(folder / "scan.mha", image.array, image.geometry)
    write_volume(folder / "scan.nii.gz", image.array, image.geometry)
    out = tmp_path / "out"
    assert main(["segment", str(folder), str(out), "--model", str(tiny_checkpoint)]) == 1
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = {r["case"]: (r["status"], r["error"]) for r in report["cases"]}
    assert rows == {
        "scan": ("ok", ""),
        "scan.nii.gz": ("failed", "case name 'scan' is taken by scan.mha; rename scan.nii.gz"),
    }
    assert report["counts"] == {"ok": 1, "failed": 1, "skipped": 0}


def test_a_folder_without_scans_says_so(tiny_checkpoint, tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a scan")
    result = run_cli("segment", str(tmp_path / "in"), str(tmp_path / "out"), "--model", str(tiny_checkpoint))
    assert result.exit_code == 0, result.output
    assert "0 segmented, 0 failed, 1 skipped" in result.output and "no scans" not in result.output
    (tmp_path / "in" / "notes.txt").unlink()
    result = run_cli("segment", str(tmp_path / "in"), str(tmp_path / "out2"), "--model", str(tiny_checkpoint))
    assert result.exit_code == 0 and "no scans in" in " ".join(result.output.split()), result.output


def test_a_window_smaller_than_the_training_roi_is_a_usage_error(scan_folder, tiny_checkpoint, tmp_path):
    """It used to be raised to the ROI silently; the help names the form, X Y Z."""
    result = run_cli(
        "segment", str(scan_folder), str(tmp_path / "o"), "--model", str(tiny_checkpoint), "--window", "16", "16", "16"
    )
    text = re.sub(r"[\s│╭╮╰╯─]+", " ", result.output)  # unwrap rich's error box
    assert result.exit_code == 2 and "smaller than the model's training ROI" in text
    assert not (tmp_path / "o").exists()


def test_unknown_model_file_is_one_clear_line(tmp_path, capsys):
    model = tmp_path / "model.bin"
    model.write_bytes(b"x")
    (tmp_path / "in").mkdir()  # an output folder inside the input would be refused first (exit 2)
    assert main(["segment", str(tmp_path / "in"), str(tmp_path / "o"), "--model", str(model)]) == 1
    err = capsys.readouterr().err
    assert "model.bin: unknown model file type" in err and "Traceback" not in err


def test_the_ceds_executable_exits_with_the_commands_code(tmp_path):
    """`console_main` (the installed `ceds`, `python -m ceds_deploy.cli`) passes main()'s code through."""
    import subprocess
    import sys

    model = tmp_path / "model.bin"
    model.write_bytes(b"x")
    (tmp_path / "in").mkdir()
    command = [sys.executable, "-m", "ceds_deploy.cli"]
    failed = subprocess.run(
        [*command, "segment", str(tmp_path / "in"), str(tmp_path / "o"), "--model", str(model)],
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1 and "unknown model file type" in failed.stderr
    assert subprocess.run([*command, "--version"], capture_output=True).returncode == 0


def test_pydicoms_warnings_about_header_values_stay_off_the_console(tiny_checkpoint, tmp_path):
    """A real DICOM file with a non-standard UID (pydicom-data's bad_sequence.dcm, an MR): one
    skipped row, and none of pydicom's UserWarning lines with their source code."""
    import subprocess
    import sys

    import pydicom.data

    (tmp_path / "in").mkdir()
    shutil.copy(pydicom.data.get_testdata_file("bad_sequence.dcm"), tmp_path / "in")
    command = [sys.executable, "-m", "ceds_deploy.cli", "segment", str(tmp_path / "in"), str(tmp_path / "o")]
    done = subprocess.run(
        [*command, "--model", str(tiny_checkpoint)], capture_output=True, encoding="utf-8", errors="replace"
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "1 skipped" in output, output
    assert "UserWarning" not in output


def test_named_backend_that_cannot_run_the_artifact_fails_loudly(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    code = main(
        [
            "segment",
            str(tmp_path / "in"),
            str(tmp_path / "o"),
            "--model",
            str(tiny_checkpoint),
            "--backend",
            "onnxruntime",
        ]
    )
    assert code == 1
    assert "the onnxruntime backend cannot run a checkpoint" in capsys.readouterr().err


def test_cuda_without_gpu_fails_loudly(scan_folder, tiny_checkpoint, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    code = main(["segment", str(scan_folder), str(tmp_path / "o"), "--model", str(tiny_checkpoint), "--device", "cuda"])
    assert code == 1
    assert "no CUDA GPU" in capsys.readouterr().err


def test_segment_options_validate_their_values():
    with pytest.raises(ValueError, match="overlap must be >= 0 and < 1, got 1.5"):
        SegmentOptions(overlap=1.5)
    with pytest.raises(ValueError, match="confidence threshold must be in"):
        SegmentOptions(confidence_threshold=0)


def test_report_rows_flatten_stage_seconds():
    row = CaseRow(case="a", status="ok")
    row.seconds["infer"] = 1.23456
    assert row.flat()["infer_s"] == 1.2346


def test_interrupted_run_leaves_no_partial_outputs(scan_folder, tiny_checkpoint, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a folder: finished cases are complete, nothing half-written exists."""
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends.torch_backend import TorchBackend

    calls = {"n": 0}
    backend = TorchBackend(tiny_checkpoint, read_spec(tiny_checkpoint))
    original = backend._infer

    def interrupting(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(batch)

    monkeypatch.setattr(backend, "_infer", interrupting)
    out = tmp_path / "out"
    with backend, pytest.raises(KeyboardInterrupt):
        segment_folder(scan_folder, out, backend, SegmentOptions(batch_size=1))
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")]
    for mask in out.glob("*.nii.gz"):
        if not mask.name.endswith("_confidence.nii.gz"):
            read_scan(mask)  # every mask present is complete
    assert json.loads((out / "report.json").read_text(encoding="utf-8"))["run"]["interrupted"] is True


def test_larger_inference_window_is_clamped_to_the_image():
    from ceds_deploy.inference.segment import inference_window
    from ceds_deploy.spec import ModelSpec

    spec = ModelSpec(roi_size=(32, 32, 32))
    assert inference_window((100, 70, 40), spec, None) == (32, 32, 32)
    assert inference_window((100, 70, 40), spec, (64, 64, 64)) == (64, 64, 32)
    assert inference_window((100, 70, 40), spec, (16, 128, 32)) == (32, 64, 32)
    with pytest.raises(ValueError, match="window must be 3 positive multiples of 16"):
        SegmentOptions(window=(40, 32, 32))


def test_larger_window_runs_fewer_windows_on_the_same_grid(tiny_checkpoint):
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends.torch_backend import TorchBackend
    from ceds_deploy.inference import segment_volume
    from ceds_deploy.volume import Geometry

    image, _ = sphere_scan(Geometry((1.0, 1.0, 2.5), (0.0, 0.0, 0.0), np.eye(3), (128, 128, 52)), body_mm=60)
    with TorchBackend(tiny_checkpoint, read_spec(tiny_checkpoint)) as backend:
        small = segment_volume(image, backend)
        large = segment_volume(image, backend, SegmentOptions(window=(64, 64, 64)))
    assert large.windows < small.windows
    assert large.mask.shape == small.mask.shape == image.shape


def test_library_runs_refuse_a_window_smaller_than_the_roi_before_any_work(scan_folder, tiny_checkpoint, tmp_path):
    """segment_volume and segment_folder, not only the CLI: no silent raise to the ROI."""
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends.torch_backend import TorchBackend
    from ceds_deploy.errors import ConfigError
    from ceds_deploy.inference import segment_volume

    image, _ = sphere_scan(GEOMETRIES["axial_lps"])
    small = SegmentOptions(window=(16, 32, 32))
    with TorchBackend(tiny_checkpoint, read_spec(tiny_checkpoint)) as backend:
        with pytest.raises(ConfigError, match="smaller than the model's training ROI"):
            segment_volume(image, backend, small)
        with pytest.raises(ConfigError, match="smaller than the model's training ROI"):
            segment_folder(scan_folder, tmp_path / "out", backend, small)
    assert not (tmp_path / "out").exists()


def test_several_io_workers_give_the_same_outputs_and_survive_a_bad_scan(scan_folder, tiny_checkpoint, tmp_path):
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends.torch_backend import TorchBackend

    folder = tmp_path / "in"
    shutil.copytree(scan_folder, folder)
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    runs = {}
    with TorchBackend(tiny_checkpoint, read_spec(tiny_checkpoint)) as backend:
        for workers in (1, 3):
            runs[workers] = segment_folder(
                folder, tmp_path / f"out{workers}", backend, SegmentOptions(batch_size=2, io_workers=workers)
            )
    for workers, run in runs.items():
        status = {r.case: r.status for r in run.rows}
        assert status == {
            "lps": "ok",
            "oblique": "ok",
            "permuted_flipped": "ok",
            "broken": "failed",
            "notes.txt": "skipped",
        }, workers
        assert (
            json.loads((tmp_path / f"out{workers}" / "report.json").read_text(encoding="utf-8"))["run"]["io_workers"]
            == workers
        )
    for case in ("lps", "oblique", "permuted_flipped"):
        one = read_scan(tmp_path / "out1" / f"{case}_confidence.nii.gz").array
        three = read_scan(tmp_path / "out3" / f"{case}_confidence.nii.gz").array
        # Reading order decides which windows share a batch, which moves float sums in the last bits.
        np.testing.assert_allclose(one, three, atol=1 / 1024 + 1e-6)  # one quantisation step at most
        masks = [read_scan(tmp_path / f"out{w}" / f"{case}.nii.gz", dtype=None).array for w in (1, 3)]
        assert (masks[0] != masks[1]).mean() < 1e-3


def test_largest_component_keeps_the_biggest_region_only():
    from ceds_deploy.transforms.restore import keep_largest_component

    mask = np.zeros((20, 20, 20), np.uint8)
    mask[2:8, 2:8, 2:8] = 1  # 216 voxels
    mask[12:15, 12:15, 12:15] = 1  # 27 voxels, separate
    mask[8, 8, 8] = 1  # touches the big block at a corner only: joined under 26-connectivity
    kept = keep_largest_component(mask)
    assert kept.dtype == np.uint8
    assert kept[2:8, 2:8, 2:8].all() and not kept[12:15, 12:15, 12:15].any()
    assert kept[8, 8, 8] == 1 and kept.sum() == 217
    single = np.zeros_like(mask)
    single[3:5, 3:5, 3:5] = 1
    np.testing.assert_array_equal(keep_largest_component(single), single)
    assert not keep_largest_component(np.zeros_like(mask)).any()


def test_largest_component_option_reaches_the_written_mask(scan_folder, tiny_checkpoint, tmp_path):
    result = run_cli(
        "segment",
        str(scan_folder / "lps.nii.gz"),
        str(tmp_path / "o"),
        "--model",
        str(tiny_checkpoint),
        "--largest-component",
    )
    assert result.exit_code == 0, result.output
    from scipy import ndimage

    mask = read_scan(tmp_path / "o" / "lps.nii.gz", dtype=None).array
    assert ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))[1] <= 1
    report = json.loads((tmp_path / "o" / "report.json").read_text(encoding="utf-8"))
    assert report["run"]["options"]["largest_component"] is True


def test_restore_prediction_keeps_the_largest_region_only_when_asked(tiny_spec):
    import torch
    from scipy import ndimage

    from ceds_deploy.transforms.preprocess import prepare_scan
    from ceds_deploy.transforms.restore import restore_prediction

    image, _ = sphere_scan(GEOMETRIES["axial_lps"], body_mm=80.0)
    _, plan = prepare_scan(image, tiny_spec)
    seg = torch.zeros((2, *plan.model_geometry.shape))
    seg[0] = 5.0  # background everywhere ...
    seg[0, 2:8, 2:8, 2:8] = -5.0  # ... except a large block
    seg[0, 12:14, 12:14, 12:14] = -5.0  # and a small, separate one
    conf = torch.full((1, *plan.model_geometry.shape), 0.5)
    count = lambda mask: ndimage.label(mask > 0, structure=np.ones((3, 3, 3)))[1]  # noqa: E731
    both = restore_prediction(seg, conf, plan).mask
    largest = restore_prediction(seg, conf, plan, largest_component=True).mask
    assert count(both) == 2 and count(largest) == 1
    assert 0 < largest.sum() < both.sum()
    assert not (largest.astype(bool) & ~both.astype(bool)).any()  # only removes, never adds


def test_cpu_default_batch_follows_the_window_size():
    from ceds_deploy.backends.onnxruntime_backend import OnnxRuntimeBackend
    from ceds_deploy.backends.torch_backend import TorchBackend

    for backend in (TorchBackend, OnnxRuntimeBackend):
        assert backend.default_batch_size_for(ModelSpec(roi_size=(32, 32, 32)), "cpu") == 4
        assert backend.default_batch_size_for(ModelSpec(roi_size=(64, 64, 32)), "cpu") == 1
        assert backend.default_batch_size_for(ModelSpec(roi_size=(112, 112, 80)), "cpu") == 1
        assert backend.default_batch_size_for(ModelSpec(roi_size=(112, 112, 80)), "cuda") == 4


def test_larger_cpu_windows_lower_the_default_batch():
    from ceds_deploy.backends.torch_backend import TorchBackend
    from ceds_deploy.inference.segment import batch_size_for
    from ceds_deploy.network import CedsNet, CedsNetConfig

    backend = TorchBackend.from_module(CedsNet(CedsNetConfig(width=4)), ModelSpec(roi_size=(32, 32, 32), width=4))
    assert backend.max_batch_size == 4
    assert batch_size_for(backend, SegmentOptions()) == 4
    assert batch_size_for(backend, SegmentOptions(window=(64, 64, 64))) == 1
    assert batch_size_for(backend, SegmentOptions(batch_size=3, window=(64, 64, 64))) == 3  # asked for: kept


def test_cpu_channels_last_only_for_narrow_networks():
    from ceds_deploy.backends.torch_backend import TorchBackend

    for width, expected in ((4, True), (8, True), (16, False)):
        assert TorchBackend(Path("unused.pt"), ModelSpec(width=width))._channels_last_pays() is expected
    assert TorchBackend(Path("unused.pt"), ModelSpec(width=16), channels_last=True)._channels_last_pays()
    assert not TorchBackend(Path("unused.pt"), ModelSpec(width=4), channels_last=False)._channels_last_pays()

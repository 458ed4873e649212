"""`ceds segment` against a hostile user: outputs into the input, reruns and shards of one folder,
two runs at once, broken model specs and artifacts, failing backends and disks, leftovers of
killed runs, and dataset.json paths outside the dataset."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import GEOMETRIES, sphere_scan

from ceds_deploy.cli.app import main
from ceds_deploy.errors import ArtifactError, BackendError, ConfigError, DatasetError, OutputError
from ceds_deploy.inference import SegmentOptions, segment_folder
from ceds_deploy.io import write_volume
from ceds_deploy.spec import ModelSpec


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scans")
    for name in ("lps", "oblique"):
        image, _ = sphere_scan(GEOMETRIES["axial_lps" if name == "lps" else name])
        write_volume(folder / f"{name}.nii.gz", image.array, image.geometry)
    (folder / "notes.txt").write_text("not a scan")
    return folder


def segment(*args: object) -> int:
    return main(["segment", *map(str, args)])


def flat(text: str) -> str:
    """Typer's usage-error box wraps lines: its text as one line."""
    return " ".join(text.replace("│", " ").split())


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def report_rows(out: Path) -> dict[str, dict]:
    return {r["case"]: r for r in json.loads((out / "report.json").read_text(encoding="utf-8"))["cases"]}


def torch_backend(checkpoint: Path):
    from ceds_deploy.artifacts import read_spec
    from ceds_deploy.backends.torch_backend import TorchBackend

    return TorchBackend(checkpoint, read_spec(checkpoint))


# ---------------------------------------------------------------- 1: output folder = input folder


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_output_overlapping_the_input_is_refused_and_nothing_is_written(where, scans, tiny_checkpoint, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(scans, folder)
    before = digests(folder)
    input_path, output = {
        "same": (folder, folder),
        "inside": (folder, folder / "masks"),
        "contains": (folder, tmp_path),
    }[where]
    assert segment(input_path, output, "--model", tiny_checkpoint) == 2
    assert digests(folder) == before
    assert not (folder / "masks").exists() and not (tmp_path / "report.json").exists()


def test_one_scan_into_its_own_folder_is_refused(scans, tiny_checkpoint, tmp_path, capsys):
    folder = tmp_path / "dir"
    shutil.copytree(scans, folder)
    before = digests(folder)
    assert segment(folder / "lps.nii.gz", folder, "--model", tiny_checkpoint) == 2
    assert "would overwrite the scan" in flat(capsys.readouterr().err)
    assert digests(folder) == before


def test_one_scan_into_its_folder_never_overwrites_another_scan_named_like_its_mask(
    scans, tiny_checkpoint, tmp_path, capsys
):
    """lps.mha's mask would be lps.nii.gz: there a different scan lies, which ceds did not write."""
    import SimpleITK as sitk

    folder = tmp_path / "in"
    shutil.copytree(scans, folder)
    sitk.WriteImage(sitk.ReadImage(str(folder / "oblique.nii.gz")), str(folder / "lps.mha"))
    before = digests(folder)
    for extra in ((), ("--overwrite",)):
        assert segment(folder / "lps.mha", folder, "--model", tiny_checkpoint, *extra) == 2
        assert "would overwrite lps.nii.gz, which ceds segment did not write" in flat(capsys.readouterr().err)
    assert digests(folder) == before


def test_a_file_under_a_masks_name_that_ceds_did_not_write_is_kept(scans, tiny_checkpoint, tmp_path):
    """A scan copied into the output folder under a case's mask name: that case fails naming it, the
    others run; --overwrite replaces it. A rerun of a killed run (outputs, no report) still resumes."""
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(scans / "oblique.nii.gz", out / "lps.nii.gz")
    assert segment(scans, out, "--model", tiny_checkpoint) == 1
    rows = report_rows(out)
    assert rows["lps"]["status"] == "failed" and rows["oblique"]["status"] == "ok"
    assert "lps.nii.gz: not written by ceds segment" in rows["lps"]["error"]
    assert (out / "lps.nii.gz").read_bytes() == (scans / "oblique.nii.gz").read_bytes()
    assert segment(scans, out, "--model", tiny_checkpoint, "--overwrite") == 0
    assert report_rows(out)["lps"]["status"] == "ok"
    (out / "report.json").unlink()
    (out / "report.csv").unlink()
    assert segment(scans, out, "--model", tiny_checkpoint) == 0  # our own files: done before
    assert {r["status"] for r in report_rows(out).values()} == {"skipped"}


def test_our_own_outputs_in_an_input_folder_are_skipped(scans, tiny_checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(scans / "lps.nii.gz", folder)
    shutil.copy(scans / "lps.nii.gz", folder / "old_confidence.nii.gz")
    shutil.copy(scans / "lps.nii.gz", folder / "old_probabilities.nii.gz")
    (folder / "report.json").write_text("{}")
    out = tmp_path / "out"
    assert segment(folder, out, "--model", tiny_checkpoint) == 0
    rows = report_rows(out)
    assert rows["lps"]["status"] == "ok"
    for name in ("old_confidence.nii.gz", "old_probabilities.nii.gz"):
        assert rows[name]["status"] == "skipped" and "output of ceds segment" in rows[name]["error"]
    assert "report written by ceds segment" in rows["report.json"]["error"]
    assert not (out / "old_confidence_confidence.nii.gz").exists()


# ---------------------------------------------------------------- 5: the report records the folder


def test_rerun_of_a_finished_folder_keeps_every_ok_row(scans, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    assert segment(scans, out, "--model", tiny_checkpoint) == 0
    first = report_rows(out)
    assert segment(scans, out, "--model", tiny_checkpoint) == 0
    document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = report_rows(out)
    assert document["counts"]["ok"] == 2
    for case in ("lps", "oblique"):
        assert rows[case]["status"] == "ok" and rows[case]["tumour_ml"] == first[case]["tumour_ml"]
        assert rows[case]["run_id"] == first[case]["run_id"] and len(rows[case]["model"]) == 64
    assert len(document["runs"]) == 2 and document["runs"][0]["run_id"] == first["lps"]["run_id"]


def test_shards_of_one_folder_merge_their_reports(scans, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    for index in range(2):
        assert segment(scans, out, "--model", tiny_checkpoint, "--shard", f"{index}/2") == 0
    rows = report_rows(out)
    assert {rows[c]["status"] for c in ("lps", "oblique")} == {"ok"}
    assert len({rows[c]["run_id"] for c in ("lps", "oblique")}) == 2
    assert "report.csv" in {p.name for p in out.iterdir()}
    assert len((out / "report.csv").read_text(encoding="utf-8").splitlines()) == 1 + 3  # header, 2 cases, notes.txt


# ---------------------------------------------------------------- 6: one run per output folder


def write_lock(out: Path, pid: int, host: str | None = None, model: str = "0" * 64) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    lock = out / ".ceds-segment.lock"
    lock.write_text(
        json.dumps(
            {
                "pid": pid,
                "host": host or socket.gethostname(),
                "model": model,
                "shard": "0/1",
                "started": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    return lock


def test_a_locked_output_folder_is_refused_and_force_takes_it_over(scans, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    lock = write_lock(out, os.getpid())  # a live process holds it
    assert segment(scans, out, "--model", tiny_checkpoint) == 1
    assert "in use by another `ceds segment` run" in capsys.readouterr().err
    assert not (out / "lps.nii.gz").exists() and lock.exists()
    assert segment(scans, out, "--model", tiny_checkpoint, "--force") == 0
    assert (out / "lps.nii.gz").exists() and not lock.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(scans, tiny_checkpoint, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, encoding="utf-8"
    )
    out = tmp_path / "out"
    write_lock(out, int(done.stdout))
    assert segment(scans, out, "--model", tiny_checkpoint) == 0
    assert not list(out.glob(".ceds-segment*.lock"))


def test_a_folder_of_another_models_results_needs_overwrite(scans, tiny_checkpoint, tmp_path, capsys):
    other = tmp_path / "other.pt"
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["teacher"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in payload["teacher"].items()}
    from ceds_deploy.checkpoint import save_checkpoint, sha256_of

    save_checkpoint(other, {k: v for k, v in payload.items() if k not in ("format", "kind")})
    out = tmp_path / "out"
    assert segment(scans, out, "--model", tiny_checkpoint, "--shard", "0/2") == 0
    assert segment(scans, out, "--model", other, "--shard", "1/2") == 1
    assert "another model" in capsys.readouterr().err
    assert segment(scans, out, "--model", other, "--overwrite") == 0
    assert {report_rows(out)[c]["model"] for c in ("lps", "oblique")} == {sha256_of(other)}


# ---------------------------------------------------------------- 8: model specs are checked


@pytest.mark.parametrize(
    "field, value",
    [
        ("target_spacing", (math.nan, 1.0, 1.0)),
        ("target_spacing", (0.01, 0.01, 0.01)),
        ("target_spacing", (math.inf, 1.0, 1.0)),
        ("hu_window", (-math.inf, 290.0)),
        ("hu_window", (math.nan, 290.0)),
        ("hu_window", (300.0, 290.0)),
        ("hu_window", (-9000.0, 290.0)),
        ("class_names", ("a", "b", "c")),
        ("architecture", "resnet"),
        ("roi_size", (8, 32, 32)),
        ("roi_size", (1024, 32, 32)),
        ("width", 0),
        ("width", 1000),
        ("precision", "int4"),
        ("body_threshold_hu", math.nan),
    ],
)
def test_model_spec_rejects_values_the_network_cannot_run(field, value):
    with pytest.raises(ConfigError, match=field):
        ModelSpec(**{field: value})


def test_a_checkpoint_with_a_nan_spacing_is_refused_in_one_line(tiny_checkpoint, scans, tmp_path, capsys):
    payload = torch.load(tiny_checkpoint, weights_only=True)
    payload["spec"]["target_spacing"] = [math.nan, 2.0, 2.0]
    bad = tmp_path / "nan.pt"
    torch.save(payload, bad)
    assert segment(scans, tmp_path / "out", "--model", bad) == 1
    err = capsys.readouterr().err
    assert "nan.pt" in err and "target_spacing" in err and "Traceback" not in err
    payload["spec"]["class_names"] = ["a", "b", "c"]
    torch.save(payload, bad)
    with pytest.raises(ArtifactError, match="class_names"):
        from ceds_deploy.artifacts import read_spec

        read_spec(bad)


# ---------------------------------------------------------------- 9 and 12: one error path


def test_zero_byte_and_random_artifacts_name_what_is_wrong(scans, tmp_path, capsys):
    (tmp_path / "zero.pt").write_bytes(b"")
    (tmp_path / "zero.onnx").write_bytes(b"")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    assert main(["info", str(tmp_path / "zero.pt")]) == 1
    assert "zero.pt: file is empty (0 bytes)" in capsys.readouterr().err
    assert segment(scans, tmp_path / "o1", "--model", tmp_path / "zero.onnx") == 1
    assert "zero.onnx: file is empty (0 bytes)" in capsys.readouterr().err
    assert segment(scans, tmp_path / "o2", "--model", tmp_path / "random.pt") == 1
    assert "not a PyTorch checkpoint (random bytes?)" in capsys.readouterr().err


def test_missing_input_and_unknown_backend_are_usage_errors_that_create_nothing(scans, tiny_checkpoint, tmp_path):
    assert segment(tmp_path / "nope", tmp_path / "o1", "--model", tiny_checkpoint) == 2
    assert segment(scans, tmp_path / "o2", "--model", tiny_checkpoint, "--backend", "nope") == 2
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def test_an_output_path_that_is_a_file_is_a_usage_error(scans, tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    assert segment(scans, tmp_path / "out", "--model", tiny_checkpoint) == 2
    assert "output is a file" in flat(capsys.readouterr().err)


class CountingBackend:
    """A tiny torch backend that counts its calls and can fail chosen ones."""

    def __init__(self, checkpoint: Path, fail=None) -> None:
        self.backend = torch_backend(checkpoint)
        self.calls = 0
        original = self.backend._infer

        def infer(batch):
            self.calls += 1
            if fail is not None:
                fail(batch)
            return original(batch)

        self.backend._infer = infer


def test_an_unwritable_output_is_found_before_any_inference(scans, tiny_checkpoint, tmp_path, monkeypatch):
    """Tests run as root, which ignores permissions: the probe's os.open fails as on a read-only mount."""
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if ".ceds-probe." in str(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    counting = CountingBackend(tiny_checkpoint)
    with counting.backend, pytest.raises(OutputError, match="Read-only file system"):
        segment_folder(scans, tmp_path / "out", counting.backend)
    assert counting.calls == 0


def test_a_full_disk_is_found_before_any_inference(scans, tiny_checkpoint, tmp_path, monkeypatch):
    import ceds_deploy.inference.guard as guard

    monkeypatch.setattr(guard.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000))
    counting = CountingBackend(tiny_checkpoint)
    with counting.backend, pytest.raises(OutputError, match="GB free"):
        segment_folder(scans, tmp_path / "out", counting.backend)
    assert counting.calls == 0


def test_a_report_that_cannot_be_written_is_one_line_after_the_masks(
    scans, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    import ceds_deploy.inference.report as report

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report, "write_atomic_text", full)
    out = tmp_path / "out"
    assert segment(scans, out, "--model", tiny_checkpoint) == 1
    err = capsys.readouterr().err
    assert "report.csv: cannot write the report: No space left on device" in err and "Traceback" not in err
    assert (out / "lps.nii.gz").exists() and (out / "oblique.nii.gz").exists()


def test_a_batch_that_fails_is_retried_smaller(scans, tiny_checkpoint, tmp_path):
    def out_of_memory(batch):
        if batch.shape[0] > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    counting = CountingBackend(tiny_checkpoint, out_of_memory)
    with counting.backend:
        run = segment_folder(scans, tmp_path / "out", counting.backend, SegmentOptions(batch_size=4))
    assert {r.case: r.status for r in run.rows} == {"lps": "ok", "oblique": "ok", "notes.txt": "skipped"}


def test_a_window_that_fails_alone_fails_only_its_case():
    from ceds_deploy.backends.base import WindowOutputs
    from ceds_deploy.inference.scheduler import CaseJob, predict_cases
    from ceds_deploy.inference.windows import plan_windows

    plan = plan_windows((32, 32, 16), (16, 16, 16), 0.0)  # 4 windows a case
    jobs = [CaseJob(key=k, image=np.full((32, 32, 16), float(k), np.float32), windows=plan) for k in (1, 2, 3)]
    sizes = []

    def predict(batch):
        sizes.append(batch.shape[0])
        if (batch == 2.0).any():
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return WindowOutputs(torch.zeros((batch.shape[0], 2, *batch.shape[2:])), torch.ones_like(batch))

    done = list(predict_cases(iter(jobs), predict, batch_size=3, fail_cases=True))
    assert [job.key for job, _, _ in done] == [1, 2, 3]
    assert [seg is None for _, seg, _ in done] == [False, True, False]
    assert "illegal memory access" in str(done[1][0].error)
    assert max(sizes[-3:]) == 1  # the batch size stays lowered
    with pytest.raises(RuntimeError, match="illegal memory"):
        list(
            predict_cases(
                iter([CaseJob(key=2, image=np.full((32, 32, 16), 2.0, np.float32), windows=plan)]),
                predict,
                batch_size=2,
            )
        )


def test_a_model_with_wrongly_shaped_outputs_is_refused_before_any_case(scans, tiny_checkpoint, tmp_path):
    backend = torch_backend(tiny_checkpoint)
    original = backend._infer
    backend._infer = lambda batch: (original(batch)[0][:, :, :8], original(batch)[1])
    out = tmp_path / "out"
    with backend, pytest.raises(BackendError, match="returned shapes"):
        segment_folder(scans, out, backend)
    assert not [p for p in out.iterdir()]


# ---------------------------------------------------------------- 10: leftovers of killed runs


def test_remove_leftovers_removes_only_our_own_temp_names(tmp_path):
    from ceds_deploy.io import remove_leftovers

    ours = [
        ".lps.nii.gz.k3j_h5g6",
        ".report.json.%s.tmp" % ("a" * 32),
        ".best_teacher.pt.%s.tmp" % ("b" * 32),
        ".model.onnx.%s.validating" % ("c" * 32),
        ".model.onnx.%s.tmp" % ("d" * 32),
    ]
    theirs = [".hidden", "notes.tmp", ".lps.nii.gz.toolongsuffix", "lps.nii.gz", ".report.json.xyz.tmp"]
    (tmp_path / ours[0]).mkdir()
    (tmp_path / ours[0] / "lps.nii.gz").write_bytes(b"half")
    for name in ours[1:] + theirs:
        (tmp_path / name).write_text("x")
    removed = remove_leftovers(tmp_path)
    assert sorted(p.name for p in removed) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)
    (tmp_path / ours[1]).write_text("young")
    assert remove_leftovers(tmp_path, older_than_s=3600) == [] and (tmp_path / ours[1]).exists()


def test_a_segment_run_removes_leftovers_of_a_killed_run(scans, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    (out / ".lps.nii.gz.ab12cd34").mkdir(parents=True)
    (out / ".lps.nii.gz.ab12cd34" / "lps.nii.gz").write_bytes(b"half a mask")
    (out / f".report.json.{'e' * 32}.tmp").write_text("{")
    assert segment(scans, out, "--model", tiny_checkpoint) == 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------- 11: dataset.json stays in its folder


def test_dataset_json_paths_outside_the_dataset_are_refused(tmp_path):
    from ceds_deploy.training.config import TrainConfig
    from ceds_deploy.training.data import discover

    root = tmp_path / "data"
    root.mkdir()
    (root / "a.nii.gz").write_bytes(b"x")
    (root / "a_label.nii.gz").write_bytes(b"x")
    (tmp_path / "secret.nii.gz").write_bytes(b"x")
    (root / "dataset.json").write_text(
        json.dumps({"training": [{"image": "a.nii.gz", "label": "a_label.nii.gz"}], "unlabeled": ["../secret.nii.gz"]})
    )
    with pytest.raises(DatasetError, match=r"unlabeled\[0\] '../secret.nii.gz' points outside the dataset folder"):
        discover(root)
    pairs, unlabeled = discover(root, allow_outside=True)
    assert unlabeled == [root / "../secret.nii.gz"] and TrainConfig(allow_outside=True).allow_outside
    (root / "dataset.json").write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": "/etc/passwd"}]}))
    with pytest.raises(DatasetError, match=r"training\[0\].label"):
        discover(root)


def test_preview_labels_are_checked_before_any_case_and_a_bad_label_costs_only_the_preview(
    scans, tiny_checkpoint, tmp_path, capsys
):
    """A labels folder that does not exist, or without --preview, is a usage error up front (every
    case used to fail after its masks were written, and a rerun then skipped them as done); an
    unreadable label leaves its case ok, without a preview."""
    out = tmp_path / "out"
    assert segment(scans, out, "--model", tiny_checkpoint, "--preview", "--labels", tmp_path / "none") == 2
    assert "the labels folder does not exist" in flat(capsys.readouterr().err)
    assert segment(scans, out, "--model", tiny_checkpoint, "--labels", scans) == 2
    assert "add --preview" in flat(capsys.readouterr().err)
    assert not out.exists()
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "lps.nii.gz").write_bytes(b"not a label")
    assert segment(scans, out, "--model", tiny_checkpoint, "--preview", "--labels", labels) == 0
    rows = report_rows(out)
    assert rows["lps"]["status"] == rows["oblique"]["status"] == "ok"
    assert rows["lps"]["error"].startswith("no preview: ") and not (out / "lps_preview.png").exists()
    assert (out / "oblique_preview.png").exists()


def test_a_folder_given_as_the_model_is_named_as_a_folder(tmp_path):
    from ceds_deploy.artifacts import artifact_kind

    (tmp_path / "models").mkdir()
    with pytest.raises(ArtifactError, match=r"models: is a folder; give the model file"):
        artifact_kind(tmp_path / "models")


def test_a_rerun_leaves_no_stale_preview_or_page(scans, tiny_checkpoint, tmp_path):
    """Redone without --preview, a case loses its old preview (it showed the old mask); a report.html
    left by an earlier run is rewritten with the report, not left showing the old one."""
    out = tmp_path / "out"
    assert segment(scans, out, "--model", tiny_checkpoint, "--preview", "--html") == 0
    assert (out / "lps_preview.png").exists()
    page_before = (out / "report.html").read_text(encoding="utf-8")
    assert segment(scans, out, "--model", tiny_checkpoint, "--overwrite") == 0
    assert not (out / "lps_preview.png").exists() and not (out / "oblique_preview.png").exists()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page != page_before and "lps_preview.png" not in page

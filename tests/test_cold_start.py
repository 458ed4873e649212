"""What a cold `ceds segment` saves (issue 15), checked on the CPU: the model file hashed once per
state and while the model loads, the warm-up batch run while the first scans are read, cuDNN
autotuning only when asked (on with --watch), and a watch warm before its first scan arrives."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
import torch
from helpers import GEOMETRIES, sphere_scan

from ceds_deploy.backends import create_backend
from ceds_deploy.backends.onnxruntime_backend import providers_for
from ceds_deploy.checkpoint import FileDigest
from ceds_deploy.inference import SegmentOptions
from ceds_deploy.inference.guard import model_digest
from ceds_deploy.inference.pipeline import Case, Pipeline
from ceds_deploy.inference.report import CaseRow
from ceds_deploy.inference.watch import watch_folder
from ceds_deploy.io import write_volume
from ceds_deploy.models import open_backend
from ceds_deploy.progress import ProgressEvent


def test_the_model_digest_is_the_files_sha256_kept_until_the_file_changes(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(os.urandom(3 << 20))
    digest = FileDigest(path)
    digest.start()  # in a thread, as at activation
    assert digest.value() == hashlib.sha256(path.read_bytes()).hexdigest()
    first = digest.value()
    path.write_bytes(os.urandom(3 << 20))  # a new model under the same name
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert digest.value() == hashlib.sha256(path.read_bytes()).hexdigest() != first


def test_a_backend_hashes_its_model_once_and_reports_the_same_digest(tiny_checkpoint, tiny_spec, monkeypatch):
    import ceds_deploy.checkpoint as checkpoint

    calls = []
    real = checkpoint.sha256_of
    monkeypatch.setattr(checkpoint, "sha256_of", lambda path: calls.append(path) or real(path))
    with create_backend("torch", tiny_checkpoint, tiny_spec, device="cpu") as backend:
        digests = {model_digest(backend) for _ in range(3)}
    assert digests == {hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()}
    assert len(calls) == 1


def test_cudnn_autotuning_is_off_unless_asked(tiny_checkpoint, tiny_onnx_file):
    backend, _ = open_backend(tiny_checkpoint, backend="torch", device="cpu")
    assert backend.cudnn_benchmark is False
    tuned, _ = open_backend(tiny_checkpoint, backend="torch", device="cpu", cudnn_benchmark=True)
    assert tuned.cudnn_benchmark is True
    onnx, _ = open_backend(tiny_onnx_file, backend="onnxruntime", device="cpu", cudnn_benchmark=True)
    assert onnx.cudnn_benchmark is True
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    (_, plain), _ = providers_for("cuda:1", available)
    (_, exhaustive), _ = providers_for("cuda", available, cudnn_benchmark=True)
    assert plain == {"device_id": "1", "cudnn_conv_algo_search": "HEURISTIC"}
    assert exhaustive["cudnn_conv_algo_search"] == "EXHAUSTIVE"  # ONNX Runtime's own default


@pytest.fixture(scope="module")
def tiny_onnx_file(tmp_path_factory, tiny_checkpoint):
    from ceds_deploy.export.onnx_export import export_checkpoint

    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_checkpoint(tiny_checkpoint, out, validate=False)
    return out


def test_the_warm_up_runs_while_the_first_scan_is_read(tiny_checkpoint, tiny_spec, tmp_path):
    """The pipeline's readers start before the warm-up: here the warm-up waits until a scan has been
    read and planned, which would never happen if reading began only after it."""
    scans = []
    for i, name in enumerate(("axial_lps", "oblique")):
        image, _ = sphere_scan(GEOMETRIES[name])
        scans.append(tmp_path / f"case{i}.nii.gz")
        write_volume(scans[-1], image.array, image.geometry)
    planned = threading.Event()

    def progress(event: ProgressEvent) -> None:
        if event.name == "planned":
            planned.set()

    seen = []
    rows: list[CaseRow] = []
    with create_backend("torch", tiny_checkpoint, tiny_spec, device="cpu") as backend:
        todo = [Case(CaseRow(case=p.name.split(".")[0], status="ok"), p) for p in scans]
        out = tmp_path / "out"
        out.mkdir()
        warm_up = lambda: seen.append(planned.wait(timeout=60))  # noqa: E731
        Pipeline(backend, out, SegmentOptions(), todo, progress, rows, warm_up).run()
    assert seen == [True]
    assert sorted((r.case, r.status) for r in rows) == [("case0", "ok"), ("case1", "ok")]


def test_of_the_prepared_scans_the_largest_goes_first_so_a_small_one_ends_the_run(tiny_checkpoint, tiny_spec, tmp_path):
    """Its restore and write follow the run's last window with nothing to overlap them."""
    import numpy as np

    from ceds_deploy.volume import Geometry

    todo = []
    for slices in (20, 52, 36):
        image, _ = sphere_scan(Geometry((1.0, 1.0, 2.5), (0.0, 0.0, 0.0), np.eye(3), (96, 96, slices)), body_mm=60)
        path = tmp_path / f"slices{slices}.nii.gz"
        write_volume(path, image.array, image.geometry)
        todo.append(Case(CaseRow(case=path.name.split(".")[0], status="ok"), path))
    rows: list[CaseRow] = []
    taken = []

    def all_prepared() -> None:  # as the warm-up: the backend starts once every scan waits for it
        deadline = time.monotonic() + 60
        while sum(rank < 0 for rank, *_ in list(pipeline.prepared.queue)) < len(todo) and time.monotonic() < deadline:
            time.sleep(0.01)

    with create_backend("torch", tiny_checkpoint, tiny_spec, device="cpu") as backend:
        (tmp_path / "out").mkdir()
        options = SegmentOptions(io_workers=3)
        pipeline = Pipeline(backend, tmp_path / "out", options, todo, lambda e: None, rows, all_prepared)
        jobs = pipeline._jobs
        pipeline._jobs = lambda: (taken.append(job.key) or job for job in jobs())  # type: ignore[method-assign]
        pipeline.run()
    assert taken == ["slices52", "slices36", "slices20"]
    assert sorted(r.status for r in rows) == ["ok"] * 3


def test_a_watch_warms_its_backend_before_any_scan_arrives(tiny_checkpoint, tiny_spec, tmp_path):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    calls = []
    with create_backend("torch", tiny_checkpoint, tiny_spec, device="cpu") as backend:
        real = backend._infer
        backend._infer = lambda batch: calls.append(batch.shape[0]) or real(batch)  # type: ignore[method-assign]
        stop = threading.Event()
        timer = threading.Timer(1.0, stop.set)
        timer.start()
        run = watch_folder(inbox, tmp_path / "out", backend, interval_s=0.1, settle_s=0.0, stop=stop)
    assert calls == [1]  # the blank batch, with no scan in the folder
    assert run.rows == [] and run.info["startup_s"]["warm_up"] > 0
    assert torch.is_grad_enabled()

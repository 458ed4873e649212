"""`ceds segment --watch`: a warm backend segments scans as they arrive, with the outputs of a
plain folder run; a scan still being written is never read early; stopping leaves no lock and
no half-written file."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import random_network

from ceds_deploy.inference import SegmentOptions, segment_folder
from ceds_deploy.inference.watch import ArrivalTracker, watch_folder
from ceds_deploy.io import read_scan, write_volume

INTERVAL_S = 0.2  # the watch's poll interval in these tests
SETTLE_S = 0.1  # short: a renamed file is complete at once (the settle time guards slow writers)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A checkpoint of a width-4 random network at 3 mm (few windows per phantom: a quick test)."""
    from ceds_deploy.checkpoint import save_checkpoint
    from ceds_deploy.network import CedsNetConfig
    from ceds_deploy.spec import ModelSpec

    spec = ModelSpec(roi_size=(32, 32, 32), target_spacing=(3.0, 3.0, 3.0), width=4)
    net = random_network(seed=3, width=4)
    path = tmp_path_factory.mktemp("model") / "watch.pt"
    state = net.state_dict()
    config = dataclasses.asdict(CedsNetConfig(width=4))
    save_checkpoint(path, {"spec": spec.to_dict(), "net_config": config, "teacher": state, "student": state})
    return path


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict[str, Path]:
    """Small phantoms as .nii.gz: 'warm' and 'new' are one scan (the same size, the same bytes),
    'chunked' another."""
    from ceds_deploy.synthetic import make_case

    folder = tmp_path_factory.mktemp("phantoms")
    paths = {}
    for name, index in (("first", 0), ("new", 1), ("chunked", 2)):
        image, _ = make_case(index, seed=7, size="small")
        paths[name] = folder / f"{name}.nii.gz"
        write_volume(paths[name], image.array, image.geometry)
    return paths


@pytest.fixture(scope="module")
def backend(model):
    from ceds_deploy.models import open_backend

    engine, _ = open_backend(model, backend="torch")
    with engine:
        yield engine


class Watch:
    """`watch_folder` in a thread, stopped by its event."""

    def __init__(self, inbox: Path, out: Path, backend, settle_s: float = SETTLE_S) -> None:
        self.stop = threading.Event()
        self.result: dict = {}
        self.thread = threading.Thread(
            target=lambda: self.result.update(
                run=watch_folder(inbox, out, backend, interval_s=INTERVAL_S, settle_s=settle_s, stop=self.stop)
            ),
            daemon=True,
        )

    def __enter__(self) -> Watch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()


def wait_for(path: Path, timeout_s: float = 120.0, poll_s: float = 0.01) -> float:
    """perf_counter() when `path` appeared."""
    deadline = time.perf_counter() + timeout_s
    while not path.exists():
        assert time.perf_counter() < deadline, f"{path.name} did not appear in {timeout_s} s"
        time.sleep(poll_s)
    return time.perf_counter()


def warm_time(scan: Path, backend, work: Path) -> float:
    """Seconds of a plain folder run of `scan` alone with the warm backend."""
    folder = work / f"single-{time.monotonic_ns()}"
    folder.mkdir()
    shutil.copy(scan, folder / scan.name)
    started = time.perf_counter()
    segment_folder(folder, work / f"{folder.name}-out", backend)
    return time.perf_counter() - started


def copy_by_rename(source: Path, target: Path) -> None:
    """As a copier does: the whole file under a hidden temp name, then a rename."""
    temp = target.with_name(f".{target.name}.part")
    shutil.copy(source, temp)
    os.replace(temp, target)


def assert_clean(out: Path) -> None:
    """No lock, no temp file, no mask without its confidence map; every mask reads completely."""
    hidden = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert not hidden, hidden
    for mask in out.glob("*.nii.gz"):
        if not mask.name.endswith("_confidence.nii.gz"):
            assert mask.with_name(mask.name.replace(".nii.gz", "_confidence.nii.gz")).exists()
            read_scan(mask)


def assert_same_outputs(watched: Path, plain: Path, cases: list[str]) -> None:
    for case in cases:
        for suffix in (".nii.gz", "_confidence.nii.gz"):
            assert (watched / f"{case}{suffix}").read_bytes() == (plain / f"{case}{suffix}").read_bytes(), case


def test_a_dropped_scan_is_segmented_warm_like_a_folder_run(phantoms, backend, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(phantoms["first"], inbox / "first.nii.gz")
    with Watch(inbox, out, backend) as watch:
        wait_for(out / "first.nii.gz")  # the scan already there: the watch is warm now
        before = warm_time(phantoms["new"], backend, tmp_path)
        dropped = time.perf_counter()
        copy_by_rename(phantoms["new"], inbox / "new.nii.gz")
        latency = wait_for(out / "new.nii.gz") - dropped
        after = warm_time(phantoms["new"], backend, tmp_path)
    run = watch.result["run"]
    warm = (before + after) / 2  # measured around the drop, under the same load
    print(f"watch: mask {latency:.3f} s after the drop; warm folder run {before:.3f} / {after:.3f} s")
    assert latency <= 1.5 * warm + INTERVAL_S, f"mask after {latency:.2f} s; warm pipeline {warm:.2f} s"
    assert [(r.case, r.status) for r in run.rows] == [("first", "ok"), ("new", "ok")]
    assert_clean(out)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["run"]["stopped_by"] == "stop" and report["run"]["interrupted"] is False
    assert [r["run_id"] for r in report["runs"]] == [run.run_id]  # one entry, updated each round
    assert report["run"]["time_to_first_mask_s"] > 0 and "warm_up" in report["run"]["startup_s"]
    plain = tmp_path / "plain"
    segment_folder(inbox, plain, backend)
    assert_same_outputs(out, plain, ["first", "new"])


def test_a_scan_written_slowly_is_read_only_once_complete(phantoms, backend, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    data = phantoms["chunked"].read_bytes()
    target = inbox / "chunked.nii.gz"
    settle = 0.6  # longer than the writer's pauses
    with Watch(inbox, out, backend, settle_s=settle):
        with open(target, "wb") as fh:
            for start in range(0, len(data), len(data) // 10 + 1):
                fh.write(data[start : start + len(data) // 10 + 1])
                fh.flush()
                time.sleep(0.2)  # incomplete for about 2 s
                assert not (out / "chunked.nii.gz").exists()
                assert not (out / "report.json").exists()  # nothing read yet, so no failed row either
        wait_for(out / "chunked.nii.gz")
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert [(r["case"], r["status"]) for r in report["cases"]] == [("chunked", "ok")]
    plain = tmp_path / "plain"
    segment_folder(inbox, plain, backend)
    assert_same_outputs(out, plain, ["chunked"])
    assert_clean(out)


def test_a_scan_read_too_early_fails_then_is_redone_once_it_changes(phantoms, backend, tmp_path):
    """The fallback when a writer stalls longer than the settle time: the truncated file is refused
    (a failed row, nothing written), and redone when the file changes again."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    data = phantoms["first"].read_bytes()
    target = inbox / "stalled.nii.gz"
    target.write_bytes(data[: len(data) // 2])
    with Watch(inbox, out, backend) as watch:
        wait_for(out / "report.json")
        rows = json.loads((out / "report.json").read_text(encoding="utf-8"))["cases"]
        assert [(r["case"], r["status"]) for r in rows] == [("stalled", "failed")]
        assert not (out / "stalled.nii.gz").exists()
        with open(target, "ab") as fh:
            fh.write(data[len(data) // 2 :])
        wait_for(out / "stalled.nii.gz")
    rows = json.loads((out / "report.json").read_text(encoding="utf-8"))["cases"]
    assert [(r["case"], r["status"]) for r in rows] == [("stalled", "ok")]
    # the run's rows (the console's summary and exit code) agree with the report
    assert [(r.case, r.status) for r in watch.result["run"].rows] == [("stalled", "ok")]
    assert watch.result["run"].failed == 0
    assert_clean(out)


def test_a_scan_that_changes_after_it_was_segmented_is_segmented_again(phantoms, backend, tmp_path):
    """A file replaced (or a DICOM series that grew) after its mask was written: its outputs are of
    the old scan, so it runs again and they become the new scan's, as a plain run makes them."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(phantoms["first"], inbox / "scan.nii.gz")
    with Watch(inbox, out, backend) as watch:
        wait_for(out / "scan.nii.gz")
        first_mask = (out / "scan.nii.gz").read_bytes()
        copy_by_rename(phantoms["chunked"], inbox / "scan.nii.gz")
        deadline = time.perf_counter() + 120
        while (out / "scan.nii.gz").read_bytes() == first_mask:
            assert time.perf_counter() < deadline, "the changed scan was not segmented again"
            time.sleep(0.05)
        wait_for(out / "report.json")
    plain = tmp_path / "plain"
    plain.mkdir()
    shutil.copy(phantoms["chunked"], plain / "scan.nii.gz")
    segment_folder(plain, tmp_path / "plain-out", backend)
    assert_same_outputs(out, tmp_path / "plain-out", ["scan"])
    assert [(r.case, r.status) for r in watch.result["run"].rows] == [("scan", "ok")]


def test_a_changed_scan_is_redone_but_never_over_a_file_ceds_did_not_write(phantoms, backend, tmp_path, caplog):
    """Redoing a changed scan skips only the 'outputs exist' rule: a foreign file under its mask's
    name still fails the case, before and after the change, and is kept."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    out.mkdir()
    shutil.copy(phantoms["chunked"], out / "scan.nii.gz")  # someone's scan where the mask would go
    foreign = (out / "scan.nii.gz").read_bytes()
    shutil.copy(phantoms["first"], inbox / "scan.nii.gz")
    with Watch(inbox, out, backend) as watch:
        wait_for(out / "report.json")
        first_round = (out / "report.json").stat().st_mtime_ns
        copy_by_rename(phantoms["new"], inbox / "scan.nii.gz")
        deadline = time.perf_counter() + 60
        while "changed after it was read" not in caplog.text or (out / "report.json").stat().st_mtime_ns == first_round:
            assert time.perf_counter() < deadline, "the changed scan was not taken again"
            time.sleep(0.05)
    rows = [(r.case, r.status) for r in watch.result["run"].rows]
    assert rows == [("scan", "failed")] and "not written by ceds segment" in watch.result["run"].rows[0].error
    assert (out / "scan.nii.gz").read_bytes() == foreign


def test_arrival_tracker_counts_a_deleted_and_recopied_entry_as_changed(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"a")
    os.utime(scan, (1000, 1000))
    now = [2000.0]
    tracker = ArrivalTracker(tmp_path, settle_s=2.0, clock=lambda: now[0])
    assert tracker.poll() == [scan] and not tracker.was_handled(scan)
    tracker.mark_handled(scan)
    scan.unlink()
    assert tracker.poll() == []
    scan.write_bytes(b"ab")
    os.utime(scan, (now[0], now[0]))
    now[0] += 2.5
    assert tracker.poll() == [scan] and tracker.was_handled(scan)  # redone, not skipped as done


def test_watch_resumes_and_skips_finished_cases(phantoms, backend, tmp_path):
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(phantoms["first"], inbox / "first.nii.gz")
    segment_folder(inbox, out, backend)
    mask_before = (out / "first.nii.gz").stat().st_mtime_ns
    (inbox / "notes.txt").write_text("not a scan", encoding="utf-8")
    os.utime(inbox / "notes.txt", (time.time() - 60, time.time() - 60))  # settled: taken in the first round
    with Watch(inbox, out, backend) as watch:
        deadline = time.perf_counter() + 60
        while len(json.loads((out / "report.json").read_text(encoding="utf-8"))["runs"]) < 2:
            assert time.perf_counter() < deadline, "the watch never wrote its first round"
            time.sleep(0.05)
    rows = {r.case: (r.status, r.error) for r in watch.result["run"].rows}
    assert rows["first"][0] == "skipped" and "outputs exist" in rows["first"][1]
    assert rows["notes.txt"][0] == "skipped"
    assert (out / "first.nii.gz").stat().st_mtime_ns == mask_before
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert {r["case"]: r["status"] for r in report["cases"]}["first"] == "ok"  # the earlier ok row is kept


def test_arrival_tracker_waits_for_files_and_series_folders_to_settle(tmp_path):
    now = [1000.0]
    tracker = ArrivalTracker(tmp_path, settle_s=2.0, clock=lambda: now[0])
    scan = tmp_path / "a.nii.gz"
    scan.write_bytes(b"x" * 10)
    os.utime(scan, (now[0], now[0]))
    assert tracker.poll() == []  # just written
    now[0] += 1.0
    with open(scan, "ab") as fh:
        fh.write(b"y")
    os.utime(scan, (now[0], now[0]))
    now[0] += 1.5
    assert tracker.poll() == []  # changed 1.5 s ago
    now[0] += 0.5
    assert tracker.poll() == [scan]
    tracker.mark_handled(scan)
    now[0] += 10
    assert tracker.poll() == [] and tracker.arriving == 0  # handled, unchanged
    series = tmp_path / "series"
    series.mkdir()
    (series / "1.dcm").write_bytes(b"d")
    os.utime(series / "1.dcm", (now[0], now[0]))
    os.utime(series, (now[0], now[0]))
    now[0] += 2.5
    assert tracker.poll() == [series]  # no file for 2.5 s
    (series / "2.dcm").write_bytes(b"d")
    os.utime(series / "2.dcm", (now[0], now[0]))
    assert tracker.poll() == [] and tracker.arriving == 1  # a new file: the folder settles again
    old = tmp_path / "copied-with-old-times.nrrd"
    old.write_bytes(b"z")
    os.utime(old, (now[0] - 3600, now[0] - 3600))
    assert old in tracker.poll()  # modified long before it was seen


def test_watch_needs_a_folder_of_scans(phantoms, backend, tmp_path):
    from ceds_deploy.errors import ConfigError, ScanError

    with pytest.raises(ScanError, match="not a folder"):
        watch_folder(phantoms["first"], tmp_path / "out", backend)
    with pytest.raises(ConfigError, match="shard"):
        watch_folder(tmp_path, tmp_path.parent / "out-shard", backend, SegmentOptions(shard=(0, 2)))


def stopped_cli(command: list[str], appears: Path, how: signal.Signals, then=None) -> tuple[int, str]:
    """(exit code, output) of `command` run as a user runs it and sent `how` once `appears` exists
    (and `then()` has run)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(appears, timeout_s=180)
        if then is not None:
            then()
        proc.send_signal(how)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, output.decode("utf-8", "replace")


def test_the_cli_folder_run_stops_cleanly_on_sigterm(phantoms, model, tmp_path):
    """A folder run stopped by SIGTERM (a batch scheduler's or container's stop), as by Ctrl-C: exit
    130, the cases finished are complete and in the report, which says it was interrupted, and the
    folder's lock is gone (it was left behind, with no report, before)."""
    scans, out = tmp_path / "scans", tmp_path / "out"
    scans.mkdir()
    for k in range(40):  # with TTA, seconds of work left when the first mask appears
        os.link(phantoms["first"], scans / f"case{k:02d}.nii.gz")
    command = [sys.executable, "-m", "ceds_deploy.cli.app", "segment", str(scans), str(out), "--model", str(model)]
    returncode, text = stopped_cli([*command, "--tta"], out / "case00.nii.gz", signal.SIGTERM)
    assert returncode == 130, text
    assert "interrupted" in text and "Traceback" not in text
    assert_clean(out)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["run"]["interrupted"] is True
    rows = {r["case"]: r["status"] for r in report["cases"]}
    masks = {p.name.removesuffix(".nii.gz") for p in out.glob("case??.nii.gz")}
    assert set(rows) == masks and set(rows.values()) == {"ok"} and 0 < len(rows) < 40


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_cli_watch_stops_cleanly(how, phantoms, model, tmp_path):
    """`ceds segment --watch` as a user runs it: stopped while a new scan is being segmented, it
    exits 0 with no lock, no partial file and a consistent report."""
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    inbox.mkdir()
    shutil.copy(phantoms["first"], inbox / "first.nii.gz")
    command = [sys.executable, "-m", "ceds_deploy.cli.app", "segment", str(inbox), str(out), "--model", str(model)]
    command += ["--watch", "--watch-interval", str(INTERVAL_S), "--watch-settle", str(SETTLE_S)]

    def drop_a_scan() -> None:
        copy_by_rename(phantoms["new"], inbox / "new.nii.gz")
        time.sleep(INTERVAL_S + SETTLE_S + 0.3)  # taken, probably in the middle of it

    returncode, text = stopped_cli(command, out / "first.nii.gz", how, drop_a_scan)
    assert returncode == 0, text
    assert "segmented" in text and "Traceback" not in text
    assert_clean(out)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["run"]["stopped_by"] == "interrupt"
    startup = report["run"]["startup_s"]
    assert set(startup) == {"imports", "model_load", "backend_start", "warm_up"}
    assert report["run"]["time_to_first_mask_s"] > sum(startup.values())  # counted from the process start
    rows = {r["case"]: r["status"] for r in report["cases"]}
    assert rows["first"] == "ok"
    assert (rows.get("new") == "ok") == (out / "new.nii.gz").exists()  # done and recorded, or neither

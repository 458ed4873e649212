"""`ceds segment` on more than one process: under torchrun (2 CPU ranks) and on a local Ray
instance, each against a single-process run of the same folder: the same output files byte for
byte, the same report rows. Also the rank bookkeeping (a rank lost or failed is reported, the
wait ends) and Ray's retry of a task whose worker dies.

Every run here uses one OpenMP thread (OMP_NUM_THREADS=1; Ray sets that for a 1-CPU task itself):
a convolution summed over another number of threads can move a confidence value by one storage
step, and the comparison is meant to be exact."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ceds_deploy.inference import SegmentOptions
from ceds_deploy.inference.ranks import (
    RANKS_DIR,
    RankStatus,
    merge_rank_runs,
    read_rank,
    remove_stale_launches,
    status_dir,
    wait_for_ranks,
)
from ceds_deploy.inference.report import STAGES, CaseRow, write_report
from ceds_deploy.io import write_volume

CASES = ("case0", "case1", "case2")
# Columns that name the run or time it; everything else must match a single-process run's.
RUN_COLUMNS = {"run_id"} | {f"{stage}_s" for stage in STAGES}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
has_ray = importlib.util.find_spec("ray") is not None


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """Three small phantoms, a corrupt scan and a text file."""
    from ceds_deploy.synthetic import make_case

    folder = tmp_path_factory.mktemp("scans")
    for index, name in enumerate(CASES):
        image, _ = make_case(index, 11, "small")
        write_volume(folder / f"{name}.nii.gz", image.array, image.geometry)
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    (folder / "notes.txt").write_text("not a scan", encoding="utf-8")
    return folder


def ceds(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ceds_deploy.cli", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        timeout=timeout,
        env=ENV,
    )


@pytest.fixture(scope="module")
def single(scans, tiny_checkpoint, tmp_path_factory) -> Path:
    """The reference: one process, the same folder and model."""
    out = tmp_path_factory.mktemp("single") / "out"
    done = ceds("segment", scans, out, "--model", tiny_checkpoint)
    assert done.returncode == 1, done.stderr[-3000:]  # the corrupt scan fails
    return out


def output_files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith("report")}


def comparable_rows(out: Path) -> list[dict]:
    cases = json.loads((out / "report.json").read_text(encoding="utf-8"))["cases"]
    return [{k: v for k, v in row.items() if k not in RUN_COLUMNS} for row in cases]


def assert_same_as_single(out: Path, single: Path) -> dict:
    """Byte-identical outputs, the same rows (up to run ids and timings); returns report.json."""
    mine, theirs = output_files(out), output_files(single)
    assert (
        sorted(mine)
        == sorted(theirs)
        == sorted([f"{c}.nii.gz" for c in CASES] + [f"{c}_confidence.nii.gz" for c in CASES])
    )
    for name, data in theirs.items():
        assert mine[name] == data, f"{name} differs from the single-process run's"
    assert comparable_rows(out) == comparable_rows(single)
    csv_lines = (out / "report.csv").read_text(encoding="utf-8").splitlines()
    assert csv_lines[0] == (single / "report.csv").read_text(encoding="utf-8").splitlines()[0]
    assert len(csv_lines) == 1 + len(CASES) + 2  # header, cases, broken, notes.txt
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temp or status files left"
    document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = {r["case"]: r for r in document["cases"]}
    assert rows["broken"]["status"] == "failed" and "broken.nii.gz" in rows["broken"]["error"]
    assert {rows[c]["status"] for c in CASES} == {"ok"} and rows["notes.txt"]["status"] == "skipped"
    return document


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_match_a_single_process_run(scans, tiny_checkpoint, single, tmp_path):
    out = tmp_path / "out"
    done = torchrun("segment", scans, out, "--model", tiny_checkpoint, "--html")
    # Rank 0 decides the exit code: 1, because the corrupt scan failed (on whichever rank had it).
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "torchrun: 2 ranks, 2 done" in " ".join(done.stderr.split())
    document = assert_same_as_single(out, single)
    run = document["run"]
    assert run["launcher"] == "torchrun" and run["world_size"] == 2 and not run["interrupted"]
    assert [r["state"] for r in run["ranks"]] == ["done", "done"]
    rank_runs = {r["run_id"] for r in run["ranks"]}
    assert len(rank_runs) == 2 and {r["run_id"] for r in document["cases"]} == rank_runs  # both ranks worked
    assert {r["run_id"] for r in document["runs"]} >= rank_runs | {run["run_id"]}
    assert (out / "report.html").is_file()  # written once, by rank 0 after the merge


def torchrun(*args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        + ["-m", "ceds_deploy.cli", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        timeout=timeout,
        env=ENV,
    )


@pytest.mark.slow
def test_torchrun_rank_that_fails_is_reported_and_rank_0_still_merges(scans, tiny_checkpoint, tmp_path):
    """Rank 1 cannot take its shard (a run on another host holds that shard's lock): rank 1 records
    its failure, rank 0 does its own shard, reports rank 1 and exits 1; nothing hangs."""
    out = tmp_path / "out"
    out.mkdir()
    holder = {
        "pid": 1,
        "host": "another-host.example",
        "model": hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest(),
        "shard": "1/2",
        "started": "2026-01-01T00:00:00+00:00",
    }
    (out / ".ceds-segment.shard-1-of-2.lock").write_text(json.dumps(holder), encoding="utf-8")
    done = torchrun("segment", scans, out, "--model", tiny_checkpoint)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    said = " ".join(done.stderr.replace("│", " ").split())
    assert "torchrun: 2 ranks, 1 done" in said and "rank 1 failed" in said and "in use by another" in said
    document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    ranks = document["run"]["ranks"]
    assert [r["state"] for r in ranks] == ["done", "failed"] and ranks[1]["run_id"] == ""
    assert document["run"]["interrupted"]
    rank0 = {r["case"] for r in document["cases"] if r["run_id"] == ranks[0]["run_id"] and r["status"] != "skipped"}
    assert rank0 and rank0 < set(CASES) | {"broken"}  # rank 0's shard only
    assert not (out / ".ceds-ranks").exists()


@pytest.mark.slow
@pytest.mark.skipif(not has_ray, reason="ray is not installed (pip install 'ceds-deploy[ray]')")
def test_ray_gpu_run_on_a_cluster_without_gpus_is_refused_before_writing(scans, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    done = ceds("segment", scans, out, "--model", tiny_checkpoint, "--ray", "local", "--device", "cuda")
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "the cluster has no GPU" in said and "Traceback" not in said, said
    assert not out.exists()


def ray_driver_script() -> str:
    """A driver that runs the Ray runner with a model opener that kills its worker process on its
    second call (the first scan task): Ray must retry it elsewhere. With max_retries 0 the case
    fails instead and the run goes on."""
    return """
import functools, json, os, sys
from pathlib import Path
import ray
from ceds_deploy.inference.ray_runner import segment_folder_ray
from ceds_deploy.models import open_backend

def open_or_die(calls, model):
    n = len(os.listdir(calls))
    while True:  # tasks run at once: each claims its own call number
        try:
            open(os.path.join(calls, str(n)), "x").close()
            break
        except FileExistsError:
            n += 1
    if n == 1:
        os._exit(3)  # the worker process dies mid-task, as on a lost node
    return open_backend(Path(model))

scans, model, out, calls = sys.argv[1:5]
ray.init(num_cpus=2, log_to_driver=False)
summary = {}
for retries in (1, 0):
    os.makedirs(f"{calls}-{retries}")
    run, facts = segment_folder_ray(Path(scans), Path(f"{out}-{retries}"),
        functools.partial(open_or_die, f"{calls}-{retries}", model), max_retries=retries)
    summary[retries] = {r.case: [r.status, r.error] for r in run.rows}
ray.shutdown()
print(json.dumps(summary))
"""


@pytest.mark.slow
@pytest.mark.skipif(not has_ray, reason="ray is not installed (pip install 'ceds-deploy[ray]')")
def test_ray_local_run_matches_a_single_process_run(scans, tiny_checkpoint, single, tmp_path):
    out = tmp_path / "out"
    done = ceds("segment", scans, out, "--model", tiny_checkpoint, "--ray", "local")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]  # the corrupt scan's task failed
    document = assert_same_as_single(out, single)
    assert document["run"]["ray"]["tasks"] == len(CASES) + 1 and len(document["runs"]) == 1
    assert {r["run_id"] for r in document["cases"]} == {document["run"]["run_id"]}


@pytest.mark.slow
@pytest.mark.skipif(not has_ray, reason="ray is not installed (pip install 'ceds-deploy[ray]')")
def test_ray_retries_a_task_whose_worker_dies(scans, tiny_checkpoint, single, tmp_path):
    good = tmp_path / "good"  # the phantoms only: whichever task is killed, it is a scan that can work
    good.mkdir()
    for case in CASES:
        (good / f"{case}.nii.gz").write_bytes((scans / f"{case}.nii.gz").read_bytes())
    script = tmp_path / "driver.py"
    script.write_text(ray_driver_script(), encoding="utf-8")
    out, calls = tmp_path / "out", tmp_path / "calls"
    done = subprocess.run(
        [sys.executable, str(script), str(good), str(tiny_checkpoint), str(out), str(calls)],
        capture_output=True,
        encoding="utf-8",
        timeout=300,
        env=ENV,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    # One retry: the killed task ran again; the outputs and rows are the single-process run's.
    assert len(os.listdir(f"{calls}-1")) == 1 + len(CASES) + 1  # the probe, a task per scan, the retry
    assert summary["1"] == {case: ["ok", ""] for case in CASES}
    assert output_files(Path(f"{out}-1")) == output_files(single)
    moved = [{**r, "input_path": Path(r["input_path"]).name} for r in comparable_rows(Path(f"{out}-1"))]
    assert moved == [
        {**r, "input_path": Path(r["input_path"]).name} for r in comparable_rows(single) if r["case"] in CASES
    ]
    # No retry: that one case fails with Ray's reason, the others are done, the run goes on.
    failed = {case: error for case, (status, error) in summary["0"].items() if status == "failed"}
    assert len(failed) == 1 and "Ray task failed" in next(iter(failed.values())), summary["0"]
    assert sum(status == "ok" for status, _ in summary["0"].values()) == len(CASES) - 1


# ---------------------------------------------------------------- the ranks' bookkeeping


def test_rank_status_is_final_once_finished_and_failed_when_left_by_an_error(tmp_path):
    with RankStatus(tmp_path, "k1", 0, heartbeat_s=0.05) as status:
        time.sleep(0.3)
        assert read_rank(tmp_path, "k1", 0).beat >= 2  # the heartbeat moves while the rank works
        status.finish("done", failed_cases=2)
    assert (read_rank(tmp_path, "k1", 0).state, read_rank(tmp_path, "k1", 0).failed_cases) == ("done", 2)
    with pytest.raises(KeyError), RankStatus(tmp_path, "k1", 1, heartbeat_s=0.05):
        raise KeyError("boom")
    assert read_rank(tmp_path, "k1", 1).state == "failed" and "KeyError" in read_rank(tmp_path, "k1", 1).error


def test_wait_ends_for_a_lost_rank_and_reports_a_failed_one(tmp_path):
    """Rank 1 failed (recorded), rank 2's heartbeat stopped, rank 3 never wrote: the wait ends
    after the timeout with each one's reason, not never."""
    with RankStatus(tmp_path, "k", 0) as zero:
        zero.finish("done")
    with RankStatus(tmp_path, "k", 1) as one:
        one.finish("failed", error="/out: output folder is in use by another `ceds segment` run")
    stuck = RankStatus(tmp_path, "k", 2)
    stuck.path.parent.mkdir(parents=True, exist_ok=True)
    stuck._write()  # "running", and never again: its process is gone
    started = time.monotonic()
    states = wait_for_ranks(tmp_path, "k", 4, timeout_s=0.6, poll_s=0.05)
    assert time.monotonic() - started < 10
    assert [s.state for s in states] == ["done", "failed", "lost", "lost"]
    assert "in use by another" in states[1].error
    assert "heartbeat stopped" in states[2].error and "no status file" in states[3].error
    assert all("no sign of life for 1 s" in s.error for s in states[2:])


def test_merge_names_every_rank_and_keeps_their_rows(tmp_path):
    key = "abc"
    for rank, case in enumerate(("a", "b")):
        row = CaseRow(case=case, status="ok", run_id=f"run{rank}", tumour_ml=1.0 + rank)
        info = {"run_id": f"run{rank}", "started": f"2026-01-0{rank + 1}", "backend": "torch", "device": f"cuda:{rank}"}
        write_report(tmp_path, [row], {**info, "torchrun": {"key": key, "rank": rank, "world_size": 3}})
    with RankStatus(tmp_path, key, 0) as status:
        status.finish("done")
    states = wait_for_ranks(tmp_path, key, 3, timeout_s=0.2, poll_s=0.05)
    (csv_path, _), info = merge_rank_runs(tmp_path, key, states, SegmentOptions())
    document = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert document["run"] == json.loads(json.dumps(info)) and info["run_id"] == f"torchrun-{key}"
    assert [(r["rank"], r["state"], r["run_id"], r["device"]) for r in info["ranks"]] == [
        (0, "done", "run0", "cuda:0"),
        (1, "lost", "run1", "cuda:1"),
        (2, "lost", "", ""),
    ]
    assert info["interrupted"] and info["started"] == "2026-01-01" and info["backend"] == "torch"
    assert [r["case"] for r in document["cases"]] == ["a", "b"] and csv_path.is_file()
    assert not status_dir(tmp_path, key).exists() and not (tmp_path / RANKS_DIR).exists()


def test_status_files_of_a_stopped_launch_go_after_a_day(tmp_path):
    for key, age_s in (("old", 2 * 86400), ("recent", 3600)):
        with RankStatus(tmp_path, key, 0) as status:
            status.finish("done")
        os.utime(status.path, (time.time() - age_s, time.time() - age_s))
    remove_stale_launches(tmp_path)
    assert sorted(p.name for p in (tmp_path / RANKS_DIR).iterdir()) == ["recent"]


def test_ray_is_imported_only_for_a_ray_run():
    """`ceds` and the library load without Ray: only `--ray` imports it (an optional extra)."""
    code = (
        "import sys, ceds_deploy.cli.app, ceds_deploy.cli.segment_distributed, ceds_deploy.inference.ray_runner, "
        "ceds_deploy.inference.ranks; print('ray' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--ray", "local", "--shard", "1/2"], "split is automatic"), (["--ray", "local", "--device", "cuda:1"], "cuda")],
)
def test_ray_usage_errors_stop_before_ray_starts(extra, message, scans, tiny_checkpoint, tmp_path, capsys):
    from ceds_deploy.cli.app import main

    assert main(["segment", str(scans), str(tmp_path / "out"), "--model", str(tiny_checkpoint), *extra]) == 2
    assert message in " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert not (tmp_path / "out").exists()


def test_torchrun_environment_gives_rank_shard_and_gpu(monkeypatch):
    from ceds_deploy.cli.segment_distributed import TorchrunRank, rank_device, torchrun_rank

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_rank() is None  # not under torchrun: a plain run
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert torchrun_rank() is None  # a world of one: a plain run too
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_rank() == TorchrunRank(rank=5, world_size=8, local_rank=1)
    assert (rank_device("cuda", 1), rank_device("cpu", 1), rank_device("cuda:3", 1)) == ("cuda:1", "cpu", "cuda:3")


def test_the_same_mask_written_later_has_the_same_bytes(tmp_path):
    """The gzip header carries no time (as `gzip -n`), so outputs of runs on other processes,
    machines or days compare byte for byte."""
    import numpy as np

    from ceds_deploy.volume import Geometry

    geometry = Geometry((1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), (8, 9, 5))
    mask = (np.arange(8 * 9 * 5).reshape(8, 9, 5) % 3 == 0).astype(np.uint8)
    write_volume(tmp_path / "a.nii.gz", mask, geometry)
    time.sleep(1.1)  # the gzip header's time field counts seconds
    (tmp_path / "b").mkdir()
    write_volume(tmp_path / "b" / "a.nii.gz", mask, geometry)
    first, second = (tmp_path / "a.nii.gz").read_bytes(), (tmp_path / "b" / "a.nii.gz").read_bytes()
    assert first[4:8] == b"\0\0\0\0" and first == second


def test_a_rank_that_cannot_reach_the_others_says_so_in_one_line(scans, tiny_checkpoint, tmp_path):
    """Rank 1 of 2 whose rank 0 never comes (nothing listens at MASTER_PORT): after --rank-timeout
    (and torch's own retries and C++ log lines) a last line naming the address, exit 1, no Python
    traceback and nothing written."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    env = {
        **ENV,
        "RANK": "1",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "ceds_deploy.cli", "segment", str(scans), str(out), "--model", str(tiny_checkpoint)]
        + ["--rank-timeout", "3"],
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        env=env,
    )
    last = " ".join(done.stderr.strip().split("error:")[-1].split())
    assert done.returncode == 1 and "could not meet at start" in last and f"127.0.0.1:{port}" in last, done.stderr
    assert "Traceback" not in done.stderr and not out.exists()

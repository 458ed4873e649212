"""`ceds demo` end to end at a tiny size: every stage runs for real, reruns reuse complete stages."""

from __future__ import annotations

import json

import pytest

from ceds_deploy.demo import DemoSettings, iterations_for, run_demo

TINY = DemoSettings(minutes=0.01, cases=3, labeled=2, test=1, width=2, patch=(32, 32, 32), spacing=6.0,
                    min_iterations=4, max_iterations=4)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from rich.console import Console

    out = tmp_path_factory.mktemp("demo")
    result = run_demo(out, TINY, console=Console(width=120, record=True))
    return out, result


def test_demo_runs_every_stage_and_writes_the_pictures(demo_run):
    out, result = demo_run
    assert [name for name, _, _ in result["stages"]] == ["phantoms", "train", "export", "segment", "evaluate"]
    assert (out / "data" / "dataset.json").exists()
    assert (out / "run" / "checkpoints" / "best_teacher.pt").exists() and (out / "run" / "curves.png").exists()
    assert (out / "model.onnx").exists()
    (row,) = result["rows"]
    assert (out / row["preview"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0.0 <= row["dice"] <= 1.0
    page = (out / "index.html").read_text()
    assert row["case"] in page and "run/curves.png" in page and row["preview"] in page
    report = json.loads((out / "segment" / "report.json").read_text())
    assert report["run"]["backend"].startswith("onnxruntime")
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temp files left anywhere


def test_demo_rerun_reuses_complete_stages(demo_run):
    out, _ = demo_run
    stamp = (out / "model.onnx").stat().st_mtime_ns
    again = run_demo(out, TINY)
    notes = {name: note for name, _, note in again["stages"]}
    assert all(notes[s].startswith("reused") for s in ("phantoms", "train", "export", "segment"))
    assert (out / "model.onnx").stat().st_mtime_ns == stamp


def test_training_budget_follows_the_measured_speed():
    settings = DemoSettings(minutes=5, min_iterations=10, max_iterations=1000)
    assert iterations_for(settings, 1.0) == 300
    assert iterations_for(settings, 100.0) == 10
    assert iterations_for(settings, 0.01) == 1000

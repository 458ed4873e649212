"""`ceds demo` end to end at a tiny size: every stage runs for real, reruns reuse complete stages,
and a model that finds nothing fails the quality gate loudly (terminal, page, exit code)."""

from __future__ import annotations

import dataclasses
import json
import re
import time

import pytest

from ceds_deploy.demo import (
    DEMO_RECIPE,
    MIN_MEAN_DICE,
    TESTED_RECIPE,
    DemoSettings,
    TrainingClock,
    Verdict,
    demo_console,
    judge,
    run_demo,
)
from ceds_deploy.demo import run as demo_module
from ceds_deploy.demo.page import CAP_NOTICE_ID, FAILURE_BANNER_ID, print_final_summary, write_index
from ceds_deploy.demo.run import read_training_record

# Four training steps of a width-2 network: it finds no tumour, so the quality gate must fire.
TINY = DemoSettings(iterations=4, cases=3, labeled=2, test=1, width=2, patch=(32, 32, 32), spacing=6.0)


def recording_console():
    return demo_console(width=120, record=True, force_terminal=True, color_system="standard")


def plain(styled: str) -> str:
    """Console text without colour codes, lines joined (rich wraps long lines)."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", styled).split())


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    console = recording_console()
    result = run_demo(out, TINY, console=console)
    return out, result, console


def test_demo_runs_every_stage_and_writes_the_pictures(demo_run):
    out, result, _ = demo_run
    assert [name for name, _, _ in result["stages"]] == ["phantoms", "train", "export", "segment", "evaluate"]
    assert (out / "data" / "dataset.json").exists()
    assert (out / "run" / "checkpoints" / "best_teacher.pt").exists() and (out / "run" / "curves.png").exists()
    assert (out / "model.onnx").exists()
    (row,) = result["rows"]
    assert (out / row["preview"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 0.0 <= row["dice"] <= 1.0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert row["case"] in page and "run/curves.png" in page and row["preview"] in page
    report = json.loads((out / "segment" / "report.json").read_text(encoding="utf-8"))
    assert report["run"]["backend"].startswith("onnxruntime")
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temp files left anywhere
    record = read_training_record(out)
    assert (record["steps"], record["planned"], record["stopped_early"]) == (4, 4, False)


def test_demo_exports_from_a_slim_inference_checkpoint(demo_run):
    from ceds_deploy.artifacts import read_onnx_metadata
    from ceds_deploy.checkpoint import load_checkpoint, sha256_of
    from ceds_deploy.spec import ONNX_SPEC_KEY, ModelSpec

    out, _, _ = demo_run
    model = out / "model.pt"
    assert set(load_checkpoint(model)) == {"format", "kind", "spec", "net_config", "teacher"}
    assert model.stat().st_size < (out / "run" / "checkpoints" / "best_teacher.pt").stat().st_size / 2.5
    spec = ModelSpec.from_json(read_onnx_metadata(out / "model.onnx")[ONNX_SPEC_KEY])
    assert spec.source_sha256 == sha256_of(model)


def test_a_model_that_finds_nothing_fails_loudly_in_the_terminal(demo_run):
    out, result, console = demo_run
    verdict = result["verdict"]
    assert not verdict.passed
    assert any("no tumour found" in p for p in verdict.problems)
    assert any("training too short" in c for c in verdict.causes)
    assert verdict.retry == f"ceds demo --out {out} --fresh"
    styled = console.export_text(styles=True)
    text = plain(styled)
    summary = text[text.index("DEMO FAILED") :]
    assert summary.index("DEMO FAILED") < summary.index("held-out phantoms")  # the banner tops the summary
    assert "Retry: ceds demo --out" in summary and "--fresh" in summary
    banner_line = next(line for line in styled.splitlines() if "DEMO FAILED" in line)
    assert "\x1b[1;31m" in banner_line or "\x1b[31m" in banner_line  # red
    assert "epoch 1: Dice student" in text and "progress.py:" not in text  # training's log lines, no source location


def test_a_model_that_finds_nothing_gets_a_red_banner_on_the_page(demo_run):
    out, _, _ = demo_run
    page = (out / "index.html").read_text(encoding="utf-8")
    body = page[page.index("<body>") :]
    assert body.index(f"id='{FAILURE_BANNER_ID}'") < body.index("<h1>")  # top of the page
    assert "ceds demo --out" in body and "--fresh" in body and "training too short" in body


def test_demo_rerun_reuses_complete_stages(demo_run):
    out, _, _ = demo_run
    stamp = (out / "model.onnx").stat().st_mtime_ns
    console = recording_console()
    again = run_demo(out, TINY, console=console)
    notes = {name: note for name, _, note in again["stages"]}
    assert all(notes[s].startswith("reused") for s in ("phantoms", "train", "export", "segment"))
    assert (out / "model.onnx").stat().st_mtime_ns == stamp
    text = console.export_text()
    for stage in ("phantoms", "train", "export", "segment"):
        assert f"reusing complete stage {stage} from an earlier run" in text
    assert "--fresh starts over" in text


def test_cli_exits_with_code_1_when_the_quality_gate_fails(demo_run, monkeypatch):
    from typer.testing import CliRunner

    from ceds_deploy.cli.app import app

    out, _, _ = demo_run
    monkeypatch.setattr(demo_module, "DEMO_RECIPE", TINY)  # every stage is reused: fast
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "DEMO FAILED" in result.output and "--fresh" in result.output


def test_time_cap_stops_training_between_steps_with_a_checkpoint(demo_run, tmp_path):
    from ceds_deploy.training.config import resolve_config
    from ceds_deploy.training.loop import start_training

    out, _, _ = demo_run
    config = resolve_config(None, dataclasses.replace(TINY, iterations=6).training_config(out / "data"))
    summary = start_training(config, tmp_path / "run", should_stop=lambda steps: steps >= 2)
    assert summary.steps == 2
    assert (tmp_path / "run" / "checkpoints" / "best_teacher.pt").exists()
    assert (tmp_path / "run" / "checkpoints" / "last.pt").exists()


# ---------------------------------------------------------------- small parts, no training


def rows(*dice_and_ml):
    return [
        {
            "case": f"case_{i}",
            "dice": d,
            "tumour_ml": ml,
            "mean_confidence": 0.8,
            "needs_review": False,
            "review_reason": "",
            "preview": f"segment/case_{i}_preview.png",
        }
        for i, (d, ml) in enumerate(dice_and_ml)
    ]


RECIPE_RUN = {"steps": TESTED_RECIPE.iterations, "planned": TESTED_RECIPE.iterations, "stopped_early": False}
CAPPED_RUN = {"steps": 37, "planned": TESTED_RECIPE.iterations, "stopped_early": True, "minutes": 2.0}


def test_quality_gate(tmp_path):
    assert judge(rows((0.8, 20.0), (0.7, 15.0)), RECIPE_RUN, TESTED_RECIPE, tmp_path).passed
    low = judge(rows((0.45, 20.0), (0.5, 15.0)), RECIPE_RUN, TESTED_RECIPE, tmp_path)
    assert not low.passed and f"below {MIN_MEAN_DICE}" in low.problems[0]
    assert "report it" in low.causes[0] and low.retry == f"ceds demo --out {tmp_path} --fresh"
    empty = judge(rows((0.9, 20.0), (0.95, 15.0), (0.0, 0.0)), RECIPE_RUN, TESTED_RECIPE, tmp_path)
    assert not empty.passed and empty.problems == ("no tumour found in case_2",)
    nothing = judge(rows((float("nan"), 0.0)), RECIPE_RUN, TESTED_RECIPE, tmp_path)
    assert not nothing.passed and len(nothing.problems) == 2
    assert not judge([], RECIPE_RUN, TESTED_RECIPE, tmp_path).passed


def test_capped_training_is_named_as_the_cause_and_warned_about(tmp_path):
    failed = judge(rows((0.2, 3.0)), CAPPED_RUN, TESTED_RECIPE, tmp_path)
    assert "--minutes 2.0 stopped it after 37 of" in failed.causes[0]
    assert failed.retry.endswith("--fresh (without --minutes)")
    assert "not the tested recipe" in failed.capped
    passed = judge(rows((0.8, 20.0)), CAPPED_RUN, TESTED_RECIPE, tmp_path)
    assert passed.passed and "quality suffers" in passed.capped


def test_page_and_summary_show_the_banner_only_on_failure_and_the_cap_notice_only_when_capped(tmp_path):
    stages = [("train", 1.0, "trained")]
    ok = Verdict(True)
    capped = judge(rows((0.8, 20.0)), CAPPED_RUN, TESTED_RECIPE, tmp_path)
    failed = judge(rows((0.2, 20.0)), RECIPE_RUN, TESTED_RECIPE, tmp_path)
    for verdict, banner, notice in ((ok, False, False), (capped, False, True), (failed, True, False)):
        page = write_index(tmp_path, rows((0.8, 20.0)), stages, verdict).read_text(encoding="utf-8")
        assert (f"id='{FAILURE_BANNER_ID}'" in page) is banner
        assert (f"id='{CAP_NOTICE_ID}'" in page) is notice
        console = recording_console()
        print_final_summary(console, rows((0.8, 20.0)), stages, tmp_path, tmp_path / "index.html", verdict)
        styled = console.export_text(styles=True)
        assert ("DEMO FAILED" in styled) is banner
        assert ("not the tested recipe" in plain(styled)) is notice
        assert ("\x1b[33m" in styled) is notice  # the notice is yellow


def test_page_aligns_text_left_and_numbers_right(tmp_path):
    page = write_index(tmp_path, rows((0.8, 20.0)), [("train", 1.0, "trained")], Verdict(True)).read_text(
        encoding="utf-8"
    )
    assert "<th class='num'>Dice</th>" in page and "<th>case</th>" in page
    assert "<td class='num'>0.800</td>" in page and "<td class='num'>20.0</td>" in page
    assert "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left" in page
    assert "td.num,th.num{text-align:right" in page


def test_minutes_cap_is_announced_in_yellow_before_training():
    console = recording_console()
    demo_module._say_plan(console, TESTED_RECIPE, minutes=3.0)
    styled = console.export_text(styles=True)
    assert f"{TESTED_RECIPE.iterations} steps" in plain(styled)
    assert "quality will suffer" in plain(styled) and "not the tested recipe" in plain(styled)
    assert "\x1b[33m" in styled  # yellow
    quiet = recording_console()
    demo_module._say_plan(quiet, TESTED_RECIPE, minutes=None)
    assert "quality will suffer" not in quiet.export_text()


def test_training_clock_estimates_after_ten_steps_and_answers_the_deadline():
    said = []
    clock = TrainingClock(planned_steps=400, say=said.append)
    assert not any(clock(step) for step in range(1, 12))  # no deadline: never stops
    (estimate,) = said
    assert "10 steps measured" in estimate and "389 steps left" in estimate
    assert TrainingClock(400, said.append, deadline=time.monotonic() - 1)(1)
    assert not TrainingClock(400, said.append, deadline=time.monotonic() + 3600)(1)


def test_settings_are_a_fixed_recipe():
    assert DEMO_RECIPE == TESTED_RECIPE  # `ceds demo` runs the tested recipe, not one fitted to the machine
    with pytest.raises(Exception, match="iterations"):
        DemoSettings(iterations=0)
    with pytest.raises(Exception, match="--minutes"):
        run_demo("unused", TINY, minutes=0)

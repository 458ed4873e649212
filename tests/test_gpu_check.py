"""The one GPU script of issue 15 (`benchmarks/gpu_check.py`) runs end to end on the CPU with
`--smoke`: every part (phantoms, the first CUDA calls, the cold CLI and cold MONAI processes, the
warm pipeline with the network alone, the CLI's watch mode, training steps) fills its keys in the
JSON without an error, so the few minutes a GPU is lent are not lost to a broken script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_on_the_cpu_writes_every_part(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--smoke", "--device", "cpu", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        encoding="utf-8",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    assert results["device"] == "cpu" and results["smoke"] is True
    assert results["parts"] == ["phantoms", "cold_floor", "cold_cli", "cold_monai", "warm", "watch", "train"]
    for part in results["parts"]:
        assert "error" not in results[part], (part, results[part])
        assert results["stage_seconds"][part] > 0

    assert results["phantoms"] and results["phantoms"][0].startswith("small_3000")
    floor = results["cold_floor"]
    assert floor["returncode"] == 0 and floor["times"]["import_torch_s"] > 0
    assert {(c["cudnn_benchmark"], c["batch"]) for c in floor["times"]["calls"]} >= {(False, 4), (True, 4)}
    (cli,) = results["cold_cli"]["runs"]
    assert cli["returncode"] == 0, cli["stderr_tail"]
    assert 0 < cli["first_mask_s"] <= cli["wall_s"]
    assert cli["rows"][0]["status"] == "ok" and cli["rows"][0]["infer_s"] > 0

    (monai,) = results["cold_monai"]["runs"]
    assert monai["returncode"] == 0, monai["stderr_tail"]
    assert 0 < monai["first_mask_s"] <= monai["wall_s"]
    assert 0 < monai["warm_pass_s"] < monai["wall_s"]
    assert set(monai["script"]["passes"][0]["rows"][0]) >= {"read_s", "infer_s", "restore_s", "write_s"}

    warm = results["warm"]
    assert warm["fp32-b2"]["cases"] == 2 and warm["fp32-b2"]["wall_s"] > 0
    assert warm["network_alone"]["windows"] == warm["fp32-b2"]["windows"] > 0
    assert set(warm["fp32-b2"]["single_scan_s"]) == {"small_3000.nii.gz", "small_3001.nii.gz"}
    events = {name for _, name, _, _ in warm["fp32-b2"]["timeline"]}
    assert events == {"todo", "planned", "windows", "case"}

    watch = results["watch"]  # the second scan is dropped into the watched folder: its mask comes back
    assert watch["returncode"] == 0 and watch["first_mask_s"] > 0, watch["log_tail"]
    assert watch["dropped"]["small_3001.nii.gz"] > 0 and watch["ratio_to_warm_single"]["small_3001.nii.gz"] > 0

    train = results["train"]["fp32"]
    assert train["precision"] == "fp32" and train["steps"] == 4
    assert train["steady_steps_per_s"] > 0 and train["validated_after_steps"]
    assert train["median_step_s_before_validation"] and train["median_step_s_after_validation"]


def test_a_failing_part_is_recorded_and_the_others_go_on() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_check import stage

    results: dict = {}
    stage(results, "broken", lambda: 1 / 0)
    stage(results, "fine", lambda: {"value": 1})
    assert results["broken"] == {"error": "ZeroDivisionError: division by zero"}
    assert results["fine"] == {"value": 1}
    assert set(results["stage_seconds"]) == {"broken", "fine"}

"""`benchmarks/precision_dice.py` (mixed-precision training's Dice against fp32, issue 15): the
comparison against hand-made numbers, and a dry run that trains both precisions side by side."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import precision_dice  # noqa: E402


def _run(dice: dict[str, float], seconds: float, trained_in: str) -> dict:
    cases = {n: {"dice": d, "hd95": math.inf if d == 0 else 3.0, "auroc_confidence": 0.8} for n, d in dice.items()}
    return {"best_teacher": cases, "final_teacher": cases, "train_seconds": seconds, "trained_in": trained_in}


def test_comparison_pairs_each_test_scan_with_its_fp32_run() -> None:
    results = {
        "fp32": {0: _run({"a": 0.5, "b": 0.7}, 10.0, "fp32"), 1: _run({"a": 0.6, "b": 0.0}, 11.0, "fp32")},
        "auto": {0: _run({"a": 0.55, "b": 0.6}, 6.0, "bf16"), 1: _run({"a": 0.6, "b": 0.2}, 7.0, "bf16")},
    }
    table = precision_dice.compare(results)
    assert table["fp32"]["best_teacher"]["dice"] == pytest.approx((0.5 + 0.7 + 0.6 + 0.0) / 4)
    assert table["fp32"]["best_teacher"]["empty_masks"] == 1
    assert table["fp32"]["best_teacher"]["hd95"] == 3.0  # the empty mask's inf is counted apart
    assert "dice_minus_fp32" not in table["fp32"]["best_teacher"]
    diff = table["auto"]["final_teacher"]["dice_minus_fp32"]
    assert diff["cases"] == 4 and (diff["wins"], diff["losses"]) == (2, 1)
    assert diff["mean"] == pytest.approx((0.05 - 0.1 + 0.0 + 0.2) / 4)
    assert diff["largest"] == pytest.approx(0.2)
    assert math.isnan(diff["wilcoxon_p"])  # 3 non-zero differences: too few for the test
    assert table["auto"]["best_teacher"]["dice_per_seed"] == pytest.approx([0.575, 0.4])
    assert table["auto"]["trained_in"] == ["bf16"] and table["auto"]["train_seconds"] == [6.0, 7.0]


@pytest.mark.slow
def test_dry_run_trains_fp32_and_bf16_side_by_side_and_does_not_retrain(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--smoke", "--precisions", "fp32", "bf16", "--side-by-side", "--threads", "1"]
    assert precision_dice.main(argv) == 0
    report = json.loads((tmp_path / "precision_dice.json").read_text(encoding="utf-8"))
    assert {p: r["returncode"] for p, r in report["runs"]["0"].items()} == {"fp32": 0, "bf16": 0}
    assert report["runs"]["0"]["bf16"]["last_epoch"]["precision"] == "bf16"
    bf16 = report["comparison"]["bf16"]
    assert bf16["trained_in"] == ["bf16"] and bf16["best_teacher"]["cases"] == 2
    assert bf16["best_teacher"]["dice_minus_fp32"]["cases"] == 2
    assert report["settings"]["bf16"]["precision"] == "bf16" and report["settings"]["bf16"]["iterations"] == 8
    assert precision_dice.main(argv) == 0  # both runs are done: scored again, not trained again
    again = json.loads((tmp_path / "precision_dice.json").read_text(encoding="utf-8"))
    assert again["runs"] == {"0": {}} and again["comparison"] == report["comparison"]

"""The demo's quality gate: whether the held-out results may be shown as a result, and if not, why
and what to run instead."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ceds_deploy.demo.recipe import MIN_MEAN_DICE, MIN_TUMOUR_ML, TESTED_RECIPE, DemoSettings


@dataclass(frozen=True)
class Verdict:
    """Whether the demo's model is good enough to show as a result, and if not why and what to do."""

    passed: bool
    problems: tuple[str, ...] = ()  # what is wrong with the model
    causes: tuple[str, ...] = ()  # the likely reasons
    retry: str = ""  # the command to run again
    capped: str = ""  # non-empty when --minutes stopped training early: the plain warning


def judge(rows: list[dict], training: dict, settings: DemoSettings, out: Path) -> Verdict:
    """Apply the quality gate to the held-out rows (see `demo_page.final_rows`)."""
    from ceds_deploy.demo.page import mean_dice

    capped = ""
    if training.get("stopped_early"):
        capped = (
            f"Training was stopped by --minutes {training.get('minutes')} after {training['steps']} of "
            f"{training['planned']} steps: quality suffers and this is not the tested recipe."
        )
    problems = []
    mean = mean_dice(rows)
    if not rows:
        problems.append("no held-out case was segmented")
    elif not mean >= MIN_MEAN_DICE:  # NaN fails too
        problems.append(f"held-out mean Dice {mean:.3f} is below {MIN_MEAN_DICE}")
    empty = [r["case"] for r in rows if not r["tumour_ml"] > MIN_TUMOUR_ML]
    if empty:
        problems.append(f"no tumour found in {', '.join(empty)}")
    if not problems:
        return Verdict(True, capped=capped)
    causes = []
    if training.get("stopped_early"):
        causes.append(
            f"training too short: --minutes {training.get('minutes')} stopped it after "
            f"{training['steps']} of {training['planned']} steps (this machine is too slow or too "
            f"busy to finish the recipe in that time)"
        )
    if settings.iterations < TESTED_RECIPE.iterations:
        causes.append(
            f"training too short: {settings.iterations} steps instead of the recipe's {TESTED_RECIPE.iterations}"
        )
    elif settings != TESTED_RECIPE:
        causes.append("the settings differ from the tested recipe")
    if not causes:
        causes.append(
            "the tested recipe fell short on this run; if it happens again after --fresh, please "
            "report it with run/metrics.csv"
        )
    retry = f"ceds demo --out {out} --fresh" + (" (without --minutes)" if training.get("stopped_early") else "")
    return Verdict(False, tuple(problems), tuple(causes), retry, capped)


def folder_megabytes(path: Path) -> float:
    """Total size in MB (10^6 bytes) of the files under `path`, recursively."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 1e6

"""Rich progress for a training run: phase, epoch, step, losses, last validation Dice, ETA."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


class TrainProgress:
    """A context manager; `enabled=False` (other ranks, tests) makes every call a no-op."""

    def __init__(self, console: Console | None, total_steps: int, done_steps: int, method: str,
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = console or Console(log_path=False)
        self.method = method
        self._progress = None
        self._task = None
        self._total, self._done = total_steps, done_steps

    def __enter__(self) -> TrainProgress:
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.fields[method]}[/] {task.fields[phase]:<7}"),
                TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[losses]}"), TextColumn("Dice s/t {task.fields[dice]}"),
                TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                console=self.console)
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self._total, completed=self._done,
                                                 method=self.method, phase="", epoch="", losses="", dice="-")
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def step(self, phase: str, epoch: int, epochs: int, losses: dict[str, float]) -> None:
        if not self.enabled:
            return
        shown = {"loss_seg": "seg", "loss_conf": "conf", "loss_consistency": "cons"}
        text = " ".join(f"{short} {losses[k]:.3f}" for k, short in shown.items() if k in losses)
        self._progress.update(self._task, advance=1, phase=phase, epoch=f"{epoch + 1}/{epochs}", losses=text)

    def validated(self, epoch: int, dice_student: float, dice_teacher: float, auroc_teacher: float,
                  saved: list[str]) -> None:
        if not self.enabled:
            return
        self._progress.update(self._task, dice=f"{_fmt(dice_student)}/{_fmt(dice_teacher)}")
        note = f" -> saved {', '.join(saved)}" if saved else ""
        self._progress.console.log(f"epoch {epoch + 1}: Dice student {_fmt(dice_student)}, teacher "
                                   f"{_fmt(dice_teacher)}, confidence AUROC {_fmt(auroc_teacher)}{note}")

    def log(self, text: str) -> None:
        if self.enabled:
            (self._progress.console if self._progress else self.console).log(text)

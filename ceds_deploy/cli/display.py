"""How the command line shows the library's work: rich progress bars fed by `ProgressEvent`s, and
the library's log records printed through the same console so bars and lines do not tear."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from typing_extensions import Self

if TYPE_CHECKING:
    from ceds_deploy.inference.report import CaseRow

from ceds_deploy.progress import ProgressEvent

LIBRARY_LOGGER = "ceds_deploy"


def configure_logging(level: int, console: Console | None = None) -> None:
    """Show the library's records (the `ceds_deploy` logger) through rich, without source locations.
    Idempotent: a second call only changes the level (and the console, when given)."""
    logger = logging.getLogger(LIBRARY_LOGGER)
    logger.setLevel(level)
    handler = _cli_handler()
    if handler is None:
        handler = RichHandler(
            console=console or Console(stderr=True),
            show_path=False,
            show_time=False,
            markup=False,
            rich_tracebacks=False,
        )
        handler.set_name("ceds-cli")
        logger.addHandler(handler)
    elif console is not None:
        handler.console = console


def _cli_handler() -> RichHandler | None:
    for handler in logging.getLogger(LIBRARY_LOGGER).handlers:
        if isinstance(handler, RichHandler) and handler.get_name() == "ceds-cli":
            return handler
    return None


@contextmanager
def logs_to(console: Console) -> Iterator[None]:
    """Route the library's log lines through `console` (the one drawing a live progress bar). Without
    `configure_logging` (the library called from Python), INFO lines show for the duration only."""
    handler = _cli_handler()
    if handler is not None:
        previous, handler.console = handler.console, console
        try:
            yield
        finally:
            handler.console = previous
        return
    logger = logging.getLogger(LIBRARY_LOGGER)
    level = logger.level
    configure_logging(logging.INFO, console)
    try:
        yield
    finally:
        temporary = _cli_handler()
        if temporary is not None:
            logger.removeHandler(temporary)
        logger.setLevel(level)


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


class _Display:
    """A rich Progress as a context manager that also takes the library's log lines."""

    def __init__(self, console: Console, *columns: Any, enabled: bool = True) -> None:
        self.console = console
        self.bar = Progress(*columns, console=console, disable=not enabled)
        self._logs = logs_to(console)

    def __enter__(self) -> Self:
        self._logs.__enter__()
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(None, None, None)
        self._logs.__exit__(None, None, None)


class CountDisplay(_Display):
    """One bar counting items: `total_event` sets the total, `item_event` advances it."""

    def __init__(
        self, console: Console, label: str, *, total_event: str, item_event: str, enabled: bool = True
    ) -> None:
        super().__init__(
            console,
            TextColumn(f"[bold]{label}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            enabled=enabled,
        )
        self.total_event, self.item_event = total_event, item_event
        self.task = self.bar.add_task(label, total=None)

    def __call__(self, event: ProgressEvent) -> None:
        if event.name == self.total_event:
            self.bar.update(self.task, total=event.count)
        elif event.name == self.item_event:
            self.bar.advance(self.task, event.count)


class SegmentDisplay(_Display):
    """Two bars (cases; windows with a rate) fed by `segment_folder`'s events."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        super().__init__(
            console,
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            enabled=enabled,
        )
        self.cases = self.bar.add_task("cases", total=None, rate="")
        self.windows = self.bar.add_task("windows", total=0, rate="")
        self.started = time.perf_counter()
        self.computed = 0

    def __call__(self, event: ProgressEvent) -> None:
        if event.name == "todo":
            self.bar.update(self.cases, total=event.count)
        elif event.name == "planned":
            self.bar.update(self.windows, total=(self.bar.tasks[self.windows].total or 0) + event.count)
        elif event.name == "windows":
            self.computed += event.count
            rate = self.computed / max(time.perf_counter() - self.started, 1e-9)
            self.bar.update(self.windows, advance=event.count, rate=f"{rate:.2f} windows/s")
        elif event.name == "case":
            self.bar.update(self.cases, advance=event.count)


class TrainDisplay(_Display):
    """Case preparation, then one training bar: phase, epoch, losses, last validation Dice, ETA (rich's
    running average of the measured steps)."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        super().__init__(
            console,
            TextColumn("[bold]{task.description}[/] {task.fields[phase]:<7}"),
            TextColumn("{task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[losses]}"),
            TextColumn("{task.fields[dice]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            enabled=enabled,
        )
        self.prepare: TaskID | None = None
        self.train: TaskID | None = None

    def __call__(self, event: ProgressEvent) -> None:
        info = event.info
        if event.name == "preparing":
            self.prepare = self.bar.add_task(
                "preparing cases", total=event.count, phase="", epoch="", losses="", dice=""
            )
        elif event.name == "prepared" and self.prepare is not None:
            self.bar.update(self.prepare, advance=event.count, losses=str(info.get("case", "")))
        elif event.name == "training":
            if self.prepare is not None:
                self.bar.remove_task(self.prepare)
            self.train = self.bar.add_task(
                str(info.get("method", "train")),
                total=event.count,
                completed=int(info.get("done", 0)),
                phase="",
                epoch="",
                losses="",
                dice="Dice s/t -",
            )
        elif event.name == "step" and self.train is not None:
            shown = {"loss_seg": "seg", "loss_conf": "conf", "loss_consistency": "cons"}
            losses = info.get("losses", {})
            text = " ".join(f"{short} {losses[k]:.3f}" for k, short in shown.items() if k in losses)
            self.bar.update(
                self.train,
                advance=event.count,
                phase=info.get("phase", ""),
                epoch=f"epoch {info.get('epoch')}/{info.get('epochs')}",
                losses=text,
            )
        elif event.name == "validated" and self.train is not None:
            dice = f"Dice s/t {_fmt(info.get('dice_student'))}/{_fmt(info.get('dice_teacher'))}"
            self.bar.update(self.train, dice=dice)


def print_summary(console: Console, rows: list[CaseRow], report: Path) -> None:
    """The run's counts, where the report is, and one line per failed case."""
    from ceds_deploy.inference.report import status_counts

    counts = status_counts(rows)
    review = [r.case for r in rows if r.status == "ok" and r.needs_review]
    console.print(
        f"{counts['ok']} segmented, {counts['failed']} failed, {counts['skipped']} skipped; "
        f"{len(review)} need review; report: {report}"
    )
    for row in rows:
        if row.status == "failed":
            console.print(f"[red]failed[/] {row.case}: {row.error}", highlight=False)

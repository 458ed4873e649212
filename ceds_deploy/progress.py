"""The one progress-callback style of the library: long work calls `progress(ProgressEvent(...))`.

The library never draws anything; the CLI turns events into rich progress bars and log lines.
Events a producer sends are listed in its docstring (for example `segment_folder`: "todo",
"planned", "windows", "case").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ProgressEvent:
    """One event of long work: `name` says what happened, `count` how many of it, `info` holds details
    for display."""

    name: str  # what happened ("case", "windows", "step", ...)
    count: int = 1  # how many of it (cases finished, windows computed, steps taken)
    info: Mapping[str, Any] = field(default_factory=dict)  # details for display (case name, losses)


ProgressCallback = Callable[[ProgressEvent], None]


def no_progress(event: ProgressEvent) -> None:
    """The default callback: ignore every event."""

"""`watch_folder`: segment the scans of a folder as they arrive, with one warm backend.

A watch is one folder run that goes on: it takes the output folder's lock once, warms the backend
at once (its blank batch; the CLI also lets cuDNN autotune then), segments the scans already there,
then polls the folder and runs each new scan through the same steps as `segment_folder`
(`list_cases`, `run_cases`: the same outputs, resume rule, failure handling and merged report,
rewritten after each round under the watch's one run id).

A new entry is taken once it has been left alone for `settle_s` seconds: a file once its size and
modification time have not changed for that long, a DICOM series folder once no file in it has
arrived or changed for that long (copiers that write under a hidden temp name and rename are seen
at the rename). A scan read too early fails its read (a truncated file is refused, never used);
an entry that changes after it was handled (that file completed, a file replaced, a series that
grew after a pause) is segmented again, its outputs and row replaced.

It stops when `stop` is set, after `idle_timeout_s` seconds without a new scan, or on Ctrl-C
(KeyboardInterrupt): the scan being segmented is finished or leaves nothing half-written, the
report is written and the lock released.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ceds_deploy.backends.base import Backend
from ceds_deploy.errors import ConfigError, ScanError
from ceds_deploy.inference.folder import (
    FolderRun,
    list_cases,
    open_folder_run,
    run_cases,
    warm_up_backend,
    write_run_report,
)
from ceds_deploy.inference.options import SegmentOptions
from ceds_deploy.inference.pipeline import Case
from ceds_deploy.inference.report import CaseRow
from ceds_deploy.io import ScanSource, find_scans_in, is_dicom_folder
from ceds_deploy.progress import ProgressCallback, ProgressEvent, no_progress

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 1.0  # how often the folder is looked at
DEFAULT_SETTLE_S = 2.0  # how long a new entry must be left alone before it is read

Signature = tuple[int, int, int]  # (files, bytes, newest modification in ns) of an entry
_GONE: Signature = (-1, -1, -1)  # what a handled entry that has since disappeared looked like


def entry_signature(entry: Path) -> tuple[Signature, float] | None:
    """(what an entry of the watched folder looks like now, its newest modification time in s);
    None once it is gone. A folder counts its own files, hidden ones (a copier's temp files) too."""
    try:
        if entry.is_dir():
            stats = [entry.stat()] + [child.stat() for child in os.scandir(entry) if child.is_file()]
            newest = max(s.st_mtime_ns for s in stats)
            return (len(stats) - 1, sum(s.st_size for s in stats[1:]), newest), newest / 1e9
        stat = entry.stat()
    except FileNotFoundError:
        return None if not entry.is_symlink() else ((0, 0, 0), 0.0)  # a broken link is listed as such
    except OSError:
        return None
    return (1, stat.st_size, stat.st_mtime_ns), stat.st_mtime_ns / 1e9


@dataclass
class _Entry:
    signature: Signature
    since: float  # wall-clock time from which the entry has looked like this


@dataclass
class ArrivalTracker:
    """Which entries of `folder` have settled since they were last handled."""

    folder: Path
    settle_s: float
    clock: Callable[[], float] = time.time
    seen: dict[str, _Entry] = field(default_factory=dict)
    handled: dict[str, Signature] = field(default_factory=dict)

    def poll(self) -> list[Path]:
        """Entries left alone for `settle_s` whose current state was not handled yet, by name."""
        now = self.clock()
        try:
            entries = sorted(p for p in self.folder.iterdir() if not p.name.startswith("."))
        except OSError as err:
            raise ScanError(self.folder, f"the watched folder cannot be listed: {err.strerror or err}") from None
        present = {entry.name for entry in entries}
        for gone in set(self.seen) - present:
            del self.seen[gone]
            if gone in self.handled:  # back later (deleted, copied again): a change, not a new scan
                self.handled[gone] = _GONE
        ready = []
        for entry in entries:
            found = entry_signature(entry)
            if found is None:
                continue
            signature, modified = found
            known = self.seen.get(entry.name)
            if known is None or known.signature != signature:
                # A file modified before we first saw it has been left alone since then (a
                # future time, from another host's clock, counts from now).
                known = self.seen[entry.name] = _Entry(signature, min(now, modified))
            if self.handled.get(entry.name) != signature and now - known.since >= self.settle_s:
                ready.append(entry)
        return ready

    def was_handled(self, entry: Path) -> bool:
        """Whether an earlier state of `entry` was handled (it has changed since)."""
        return entry.name in self.handled

    def mark_handled(self, entry: Path) -> None:
        self.handled[entry.name] = self.seen[entry.name].signature

    def settles_in(self) -> float | None:
        """Seconds until the next changed entry has been left alone for `settle_s` (None: none is changing)."""
        waits = [
            entry.since + self.settle_s - self.clock()
            for name, entry in self.seen.items()
            if self.handled.get(name) != entry.signature
        ]
        return max(0.0, min(waits)) if waits else None

    @property
    def arriving(self) -> int:
        """Entries changed since they were last handled (being copied, or settling)."""
        return sum(self.handled.get(name) != entry.signature for name, entry in self.seen.items())


def _check_watch(input_path: Path, options: SegmentOptions, interval_s: float, settle_s: float) -> None:
    if not input_path.is_dir():
        raise ScanError(input_path, "--watch watches a folder of scans; this is not a folder")
    if is_dicom_folder(input_path):
        raise ScanError(input_path, "is one DICOM series; --watch watches the folder that series folders arrive in")
    if options.shard != (0, 1):
        raise ConfigError("--watch segments every scan that arrives; it takes no --shard")
    if interval_s <= 0 or settle_s < 0:
        raise ConfigError(f"watch interval must be > 0 and settle time >= 0, got {interval_s} and {settle_s}")


def watch_folder(
    input_path: Path,
    output: Path,
    backend: Backend,
    options: SegmentOptions | None = None,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    settle_s: float = DEFAULT_SETTLE_S,
    idle_timeout_s: float | None = None,
    stop: threading.Event | None = None,
    progress: ProgressCallback = no_progress,
    run_info: dict | None = None,
    started_at: float | None = None,
) -> FolderRun:
    """Segment the scans in `input_path`, then each new one as it arrives, until `stop` is set,
    `idle_timeout_s` passes without a new scan, or Ctrl-C; returns the run (its report's "run"
    says why it stopped: "stopped_by" is "stop", "idle" or "interrupt").

    The checks, errors and progress events are `segment_folder`'s ("todo" counts the cases of the
    whole watch so far); `ConfigError` for a shard or a non-positive interval, `ScanError` for an
    input that is not a folder of scans.
    """
    options = options or SegmentOptions()
    input_path, output = Path(input_path), Path(output)
    _check_watch(input_path, options, interval_s, settle_s)
    stop = stop or threading.Event()
    tracker = ArrivalTracker(input_path, settle_s)
    names: dict[str, ScanSource] = {}
    todo_total = 0
    with open_folder_run(input_path, output, backend, options, run_info=run_info, started_at=started_at) as run:
        run.info["watch"] = {"interval_s": interval_s, "settle_s": settle_s, "idle_timeout_s": idle_timeout_s}
        run.info["stopped_by"] = "stop"
        warm_up_backend(run, backend, options)  # now, so the first scan to arrive finds the backend warm
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                entries = tracker.poll()
                if entries:
                    changed = [entry for entry in entries if tracker.was_handled(entry)]
                    for entry in changed:
                        log.warning("%s: changed after it was read; segmenting it again", entry)
                    for entry in entries:
                        tracker.mark_handled(entry)
                    rows: list[CaseRow] = []
                    todo: list[Case] = []
                    # a scan that changed (a series that grew, a file rewritten) is redone: its outputs are of before
                    for group, again in ((changed, True), ([e for e in entries if e not in changed], False)):
                        if group:
                            listing = find_scans_in(input_path, group)
                            more_rows, more = list_cases(listing, output, backend, options, names, redo=again)
                            rows, todo = rows + more_rows, todo + more
                    todo_total += len(todo)
                    progress(ProgressEvent("todo", todo_total))
                    run_cases(run, rows, todo, backend, output, options, progress)
                    idle_since = time.monotonic()
                    continue  # look again at once: scans may have arrived meanwhile
                settles_in = tracker.settles_in()
                if settles_in is not None:
                    idle_since = time.monotonic()
                elif idle_timeout_s is not None and time.monotonic() - idle_since >= idle_timeout_s:
                    run.info["stopped_by"] = "idle"
                    break
                # A scan that is settling is looked at again as soon as it may be ready.
                stop.wait(interval_s if settles_in is None else min(interval_s, settles_in + 0.01))
        except KeyboardInterrupt:
            run.info["stopped_by"] = "interrupt"
            log.info("%s: watch stopped (Ctrl-C or SIGTERM)", input_path)
        write_run_report(run, output, options, interrupted=bool(run.info.get("interrupted")))
    return run

"""The ranks of one `ceds segment` launch under torchrun, seen through the shared output folder.

Each rank segments its shard with `segment_folder`, which merges its rows into the folder's report
under the report lock as any shard does, and keeps a status file `.ceds-ranks/<key>/rank-R.json`
in the output folder: "running" with a heartbeat counter rewritten every few seconds by a thread
(`RankStatus`), then "done" or "failed" with the error. Rank 0, when its own shard is done, waits
for every rank's final status (`wait_for_ranks`); a rank whose status stops changing for
`timeout_s` (its process or node gone) or never appears is reported "lost", so the wait ends.
Rank 0 then writes the launch's run into the report (`merge_rank_runs`): one entry naming every
rank's run, the counts over all rows, report.html when asked, and removes the status files.

Files rather than a collective: ranks on several nodes only need the shared folder their outputs
go to anyway, and rank 0 can tell a slow rank (its heartbeat moves) from a lost one. The change of
the counter is judged on rank 0's own clock, so clocks of other nodes do not matter.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ceds_deploy.inference.options import SegmentOptions
from ceds_deploy.inference.report import read_report, write_report
from ceds_deploy.io import write_atomic_text

log = logging.getLogger(__name__)

RANKS_DIR = ".ceds-ranks"
HEARTBEAT_S = 5.0  # a running rank rewrites its status this often
FINAL_STATES = ("done", "failed")
STALE_LAUNCH_S = 86400.0  # status files of a launch that stopped without merging are removed after a day


def status_dir(output: Path, key: str) -> Path:
    """The folder of one launch's status files."""
    return Path(output) / RANKS_DIR / key


def _status_path(output: Path, key: str, rank: int) -> Path:
    return status_dir(output, key) / f"rank-{rank}.json"


@dataclass
class RankState:
    """One rank as rank 0 last saw it: running, done, failed (its error) or lost."""

    rank: int
    state: str
    host: str = ""
    pid: int = 0
    beat: int = 0
    failed_cases: int = 0
    error: str = ""


class RankStatus:
    """This rank's status file, kept fresh by a heartbeat thread while the rank works; a context
    manager. `finish` records the outcome; leaving without it (an exception) records "failed"."""

    def __init__(self, output: Path, key: str, rank: int, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.path = _status_path(output, key, rank)
        self.state = RankState(rank, "running", socket.gethostname(), os.getpid())
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"ceds-rank-{rank}-heartbeat", daemon=True)

    def _write(self) -> None:
        with self._write_lock:
            write_atomic_text(self.path, json.dumps(asdict(self.state)))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.state.beat += 1
            try:
                self._write()
            except OSError as err:  # a missed beat is not fatal; rank 0 waits `timeout_s` for the next
                log.warning("%s: cannot write the rank status: %s", self.path, err.strerror or err)

    def __enter__(self) -> RankStatus:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
        self._thread.start()
        return self

    def finish(self, state: str, failed_cases: int = 0, error: str = "") -> None:
        """Stop the heartbeat and record the final state ("done" or "failed")."""
        self._stop.set()
        self._thread.join()
        self.state.state, self.state.failed_cases, self.state.error = state, failed_cases, error
        self._write()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self.state.state == "running":
            self.finish("failed", error=f"stopped by {getattr(exc_type, '__name__', 'an error')}")


def read_rank(output: Path, key: str, rank: int) -> RankState | None:
    """A rank's status as written; None while it has none (or it is being replaced)."""
    try:
        data = json.loads(_status_path(output, key, rank).read_text(encoding="utf-8"))
        return RankState(**{k: data[k] for k in RankState.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError):
        return None


def wait_for_ranks(
    output: Path,
    key: str,
    world_size: int,
    timeout_s: float,
    poll_s: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
) -> list[RankState]:
    """Every rank's final state, once each is done, failed or lost: a rank is lost when its status
    has not changed (or not appeared) for `timeout_s` seconds of this process's clock."""
    final: dict[int, RankState] = {}
    seen: dict[int, tuple[int | None, float]] = {rank: (None, clock()) for rank in range(world_size)}
    while True:
        for rank in range(world_size):
            if rank in final:
                continue
            state = read_rank(output, key, rank)
            now = clock()
            if state is not None and state.state in FINAL_STATES:
                final[rank] = state
            elif state is not None and state.beat != seen[rank][0]:
                seen[rank] = (state.beat, now)
            elif now - seen[rank][1] > timeout_s:
                last = state or RankState(rank, "running")
                where = f" on {last.host}, pid {last.pid}" if last.host else ""
                why = "no status file" if state is None else "heartbeat stopped"
                final[rank] = RankState(
                    rank,
                    "lost",
                    last.host,
                    last.pid,
                    last.beat,
                    error=f"no sign of life for {timeout_s:.0f} s ({why}{where}); its finished cases are in "
                    "the report, run again to do the rest",
                )
                log.error("rank %d: %s", rank, final[rank].error)
        if len(final) == world_size:
            return [final[rank] for rank in range(world_size)]
        time.sleep(poll_s)


def merge_rank_runs(
    output: Path, key: str, states: list[RankState], options: SegmentOptions
) -> tuple[tuple[Path, Path], dict[str, Any]]:
    """Write the launch's run into the folder's report: the ranks' runs (found by `key` in
    report.json's runs) become one entry naming each rank's run, host and outcome; report.html too
    with `options.html`. Removes the launch's status files. Returns (report paths, that entry)."""
    runs = [r for r in read_report(output).get("runs", []) if isinstance(r, dict)]
    by_rank = {
        int(r["torchrun"]["rank"]): r
        for r in runs
        if isinstance(r.get("torchrun"), dict) and r["torchrun"].get("key") == key
    }
    base = by_rank.get(0) or next(iter(by_rank.values()), {})
    per_rank = ("run_id", "started", "device", "torchrun", "interrupted", "options")
    info = {
        **{k: v for k, v in base.items() if k not in per_rank},
        "run_id": f"torchrun-{key}",
        "started": min((str(r.get("started", "")) for r in by_rank.values()), default=""),
        "options": {**asdict(options), "shard": f"{options.shard[0]}/{options.shard[1]}"},
        "launcher": "torchrun",
        "world_size": len(states),
        "ranks": [
            {
                **asdict(state),
                "run_id": by_rank.get(state.rank, {}).get("run_id", ""),
                "device": by_rank.get(state.rank, {}).get("device", ""),
            }
            for state in states
        ],
        "interrupted": any(s.state != "done" or by_rank.get(s.rank, {}).get("interrupted") for s in states),
    }
    paths = write_report(output, [], info, html=options.html)
    shutil.rmtree(status_dir(output, key), ignore_errors=True)
    remove_stale_launches(output)
    return paths, info


def remove_stale_launches(output: Path, older_than_s: float = STALE_LAUNCH_S) -> None:
    """Remove status folders of launches torchrun stopped (a rank crashed, so no merge ran) once
    nothing in them has changed for `older_than_s`; then `.ceds-ranks` itself when it is empty."""
    ranks = Path(output) / RANKS_DIR
    for launch in ranks.glob("*"):
        try:
            newest = max((p.stat().st_mtime for p in launch.iterdir()), default=launch.stat().st_mtime)
        except OSError:
            continue
        if time.time() - newest > older_than_s:
            log.info("%s: removing the status files of an earlier torchrun launch", launch)
            shutil.rmtree(launch, ignore_errors=True)
    try:
        ranks.rmdir()  # only when no other launch's files are left
    except OSError:
        pass

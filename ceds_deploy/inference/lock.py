"""Locks in an output folder, so two `ceds segment` runs never write one folder at once.

A run holds a lock file while it writes: `.ceds-segment.lock` (or `.ceds-segment.shard-I-of-N.lock`
for a shard), created with O_CREAT|O_EXCL and holding JSON (pid, host, model digest, shard, start
time). A second run refuses at once with a message naming the holder; it does not wait. Shards of
one split (same N, same model) may run side by side in one folder, each under its own lock. A lock
whose pid is dead on this host is stale and taken over automatically; `force` takes over any lock
(the holder on another host, or one the user knows is gone).

The report is read, merged and rewritten under a second, short-lived lock (`report_lock`), which
waits for the other shards' report updates.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ceds_deploy.errors import OutputError

log = logging.getLogger(__name__)

LOCK_PREFIX = ".ceds-segment"
LOCK_SUFFIX = ".lock"
REPORT_LOCK = ".ceds-report.lock"
_UNREADABLE_GRACE_S = 10.0  # a lock file without JSON yet is being written for this long at most


def lock_name(shard: tuple[int, int]) -> str:
    """The lock file name of a run of shard (index, count)."""
    index, count = shard
    return f"{LOCK_PREFIX}{LOCK_SUFFIX}" if count == 1 else f"{LOCK_PREFIX}.shard-{index}-of-{count}{LOCK_SUFFIX}"


def pid_alive(pid: int) -> bool:
    """True when a process `pid` exists on this host (signal 0 probes without signalling)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: Path) -> dict | None:
    """The holder a lock file names; None when it vanished; {} when it cannot be parsed."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_stale(path: Path, holder: dict) -> bool:
    if not holder:  # unreadable: stale once its writer had time to fill it
        try:
            return time.time() - path.stat().st_mtime > _UNREADABLE_GRACE_S
        except OSError:
            return True
    return holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", 0)))


def _describe(holder: dict) -> str:
    if not holder:
        return "a run whose lock file is still being written"
    model = str(holder.get("model", ""))[:12] or "?"
    return (
        f"pid {holder.get('pid')} on {holder.get('host')}, shard {holder.get('shard')}, model {model}, "
        f"since {holder.get('started')}"
    )


def _create(path: Path, holder: dict) -> bool:
    """Create `path` exclusively with `holder` as JSON; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as err:
        raise OutputError(f"{path}: cannot create the lock file: {err.strerror or err}") from None
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(holder))
    return True


class FolderLock:
    """The lock of one run on an output folder; a context manager. Raises `OutputError` on entry
    when another live run holds the folder (or a lock that conflicts with this shard)."""

    def __init__(self, folder: Path, model: str, shard: tuple[int, int] = (0, 1), force: bool = False) -> None:
        self.folder, self.model, self.shard, self.force = Path(folder), model, shard, force
        self.path = self.folder / lock_name(shard)
        self.holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "model": model,
            "shard": f"{shard[0]}/{shard[1]}",
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.others_running = False  # another shard of this split holds its own lock

    def _conflicts(self, other: Path, holder: dict) -> bool:
        if other == self.path or not holder:
            return True
        same_split = str(holder.get("shard", "")).endswith(f"/{self.shard[1]}") and self.shard[1] > 1
        return not same_split or holder.get("model") != self.model

    def acquire(self) -> None:
        for other in sorted(self.folder.glob(f"{LOCK_PREFIX}*{LOCK_SUFFIX}")):
            holder = _read_holder(other)
            if holder is None:
                continue
            if _is_stale(other, holder) or (self.force and self._conflicts(other, holder)):
                why = "--force" if not _is_stale(other, holder) else "its process is gone"
                log.warning("%s: taking over the lock of %s (%s)", self.folder, _describe(holder), why)
                other.unlink(missing_ok=True)
                continue
            if self._conflicts(other, holder):
                raise OutputError(
                    f"{self.folder}: output folder is in use by another `ceds segment` run "
                    f"({_describe(holder)}; lock {other.name}); wait for it to finish, or use "
                    f"--force if that run is gone"
                )
            self.others_running = True
        if not _create(self.path, self.holder):
            raise OutputError(f"{self.folder}: another run took the lock {self.path.name} just now; try again")

    def release(self) -> None:
        holder = _read_holder(self.path)
        if holder is not None and holder.get("pid") == os.getpid() and holder.get("started") == self.holder["started"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextmanager
def report_lock(folder: Path, timeout_s: float = 60.0) -> Iterator[None]:
    """Hold `.ceds-report.lock` in `folder` while the report is read, merged and written; waits up to
    `timeout_s` for another shard's update (a stale lock of a dead process is taken over)."""
    path = Path(folder) / REPORT_LOCK
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    deadline = time.monotonic() + timeout_s
    while not _create(path, holder):
        other = _read_holder(path)
        if other is not None and _is_stale(path, other):
            path.unlink(missing_ok=True)
            continue
        if time.monotonic() > deadline:
            raise OutputError(
                f"{path}: the report stayed locked for {timeout_s:.0f} s ({_describe(other or {})}); "
                f"remove the file if no run is writing"
            )
        time.sleep(0.1)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)

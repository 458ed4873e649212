"""The first scans of a run, decompressed while the process is still starting.

A cold `ceds segment` spends about a second importing torch on one core while the other waits; the
first scan's gzip data then takes 0.3 s more to decompress before anything can run, and the second's
takes 0.4 s from the network while it runs. ISA-L decompresses outside the GIL, so `prefetch_gzip`
starts that in a daemon thread before the imports (one file after the other), and the reader takes
the data (`take_prefetched`) instead of decompressing again: a writable buffer the scan's array can
keep, so the reader never copies it. Each taken once: a file that changed since (size, mtime) or is
never read costs nothing but the thread's work.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

MAX_COMPRESSED_BYTES = 1 << 30  # the files prefetched together hold at most this much gzip data
PREFETCH_SCANS = 2  # the import's idle core decompresses about two full-size scans

_lock = threading.Lock()
_prefetched: dict[tuple[str, int, int], Future] = {}


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def prefetch_gzip(*paths: Path) -> None:
    """Start decompressing the gzip files `paths`, one after the other, in a daemon thread (replacing
    earlier prefetches); only the first of them while they hold `MAX_COMPRESSED_BYTES` in all."""
    keyed, total = [], 0
    for path in paths:
        key = _key(path)
        if key is None or total + key[1] > MAX_COMPRESSED_BYTES:
            break  # the memory held for scans not yet read stays bounded
        keyed.append((path, key))
        total += key[1]
    if not keyed:
        return
    futures: list[tuple[Path, Future]] = [(path, Future()) for path, _ in keyed]

    def work() -> None:
        from isal import igzip

        for path, future in futures:
            if not future.set_running_or_notify_cancel():
                continue  # released before its turn
            try:
                future.set_result(_decompress(path, igzip))
            except Exception as err:  # noqa: BLE001 - the reader reads the file itself and says what is wrong
                future.set_exception(err)

    with _lock:
        _drop(list(_prefetched))
        _prefetched.update((key, future) for (_, key), (_, future) in zip(keyed, futures))
    threading.Thread(target=work, name="ceds-prefetch", daemon=True).start()


def _decompress(path: Path, igzip) -> Any:
    """The decompressed data of `path` as a writable uint8 array on fresh small pages
    (ceds_deploy.memory). Decompressed in one call, which holds no GIL, then copied: streaming into
    the array takes turns with the imports for the GIL, several times slower while they run."""
    import numpy as np

    from ceds_deploy.memory import fresh_zeros

    data = igzip.decompress(path.read_bytes())  # every member, as gzip.decompress
    buffer = fresh_zeros((len(data),), np.uint8)
    np.copyto(buffer, np.frombuffer(data, np.uint8))
    return buffer


def take_prefetched(path: Path) -> Any:
    """The decompressed data of `path` (a writable uint8 array) if it was prefetched from the file as
    it is now (waiting for it if still in progress), once; else None."""
    key = _key(path)
    with _lock:
        future = _prefetched.pop(key, None) if key is not None else None
    if future is None:
        return None
    try:
        data = future.result()
    except Exception:  # noqa: BLE001 - read the file as usual
        return None
    return data if _key(path) == key else None


def prefetch_first_scans(input_path: Path) -> None:
    """`prefetch_gzip` the scans a run over `input_path` reads first, where they are .nii.gz."""
    if scans := first_scans_to_prefetch(input_path):
        prefetch_gzip(*scans)


def release_prefetched(keep: list[Path] | tuple[Path, ...] = ()) -> None:
    """Drop what was prefetched except `keep` (the run's first cases): a scan the run will not read
    (already done, another shard) must not hold its memory, nor cost the thread's work."""
    kept = {key for path in keep if (key := _key(path)) is not None}
    with _lock:
        _drop([key for key in _prefetched if key not in kept])


def _drop(keys: list[tuple[str, int, int]]) -> None:
    """Forget `keys` (the lock held); a file not started yet is never decompressed."""
    for key in keys:
        _prefetched.pop(key).cancel()


def first_scans_to_prefetch(input_path: Path, count: int = PREFETCH_SCANS) -> list[Path]:
    """The .nii.gz files among the first `count` a run over `input_path` reads: the file itself, or
    a folder's first own files (sorted, as the listing orders them)."""
    if input_path.is_file():
        return [input_path] if input_path.name.lower().endswith(".nii.gz") else []
    if not input_path.is_dir():
        return []
    try:
        names = sorted(entry.name for entry in os.scandir(input_path) if entry.is_file())
    except OSError:
        return []
    first = [n for n in names if not n.startswith(".")][:count]
    return [input_path / n for n in first if n.lower().endswith(".nii.gz")]

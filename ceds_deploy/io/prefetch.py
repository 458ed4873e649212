"""The first scan of a run, decompressed while the process is still starting.

A cold `ceds segment` spends about a second importing torch on one core while the other waits; the
first scan's gzip data then takes 0.3 s more to decompress before anything can run. ISA-L
decompresses outside the GIL, so `prefetch_gzip` starts that in a daemon thread before the imports,
and the reader takes the bytes (`take_prefetched`) instead of decompressing again. One file at a
time, taken once: a file that changed since (size, mtime) or is never read costs nothing but the
thread's work.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future
from pathlib import Path

MAX_COMPRESSED_BYTES = 1 << 30  # larger files are read as usual (memory held for one scan only)

_lock = threading.Lock()
_prefetched: dict[tuple[str, int, int], Future] = {}


def _key(path: Path) -> tuple[str, int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def prefetch_gzip(path: Path) -> None:
    """Start decompressing the gzip file `path` in a daemon thread (replacing an earlier prefetch)."""
    key = _key(path)
    if key is None or key[1] > MAX_COMPRESSED_BYTES:
        return
    future: Future = Future()

    def work() -> None:
        try:
            from isal import igzip

            future.set_result(igzip.decompress(path.read_bytes()))  # every member, as gzip.decompress
        except Exception as err:  # noqa: BLE001 - the reader reads the file itself and says what is wrong
            future.set_exception(err)

    with _lock:
        _prefetched.clear()
        _prefetched[key] = future
    threading.Thread(target=work, name="ceds-prefetch", daemon=True).start()


def take_prefetched(path: Path) -> bytes | None:
    """The decompressed bytes of `path` if they were prefetched from the file as it is now (waiting
    for them if still in progress), once; else None."""
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


def prefetch_first_scan(input_path: Path) -> None:
    """`prefetch_gzip` the scan a run over `input_path` reads first, when that is a .nii.gz."""
    if (first := first_scan_to_prefetch(input_path)) is not None:
        prefetch_gzip(first)


def release_prefetched(keep: Path | None) -> None:
    """Drop what was prefetched unless it is `keep` (the run's first case): a scan the run will not
    read (already done, another shard) must not hold its memory."""
    key = _key(keep) if keep is not None else None
    with _lock:
        for other in [k for k in _prefetched if k != key]:
            del _prefetched[other]


def first_scan_to_prefetch(input_path: Path) -> Path | None:
    """The .nii.gz a run over `input_path` reads first when it is a single file or the first of a
    folder's own files (sorted, as the listing orders them); None otherwise."""
    if input_path.is_file():
        return input_path if input_path.name.lower().endswith(".nii.gz") else None
    if not input_path.is_dir():
        return None
    try:
        names = sorted(entry.name for entry in os.scandir(input_path) if entry.is_file())
    except OSError:
        return None
    first = next((n for n in names if not n.startswith(".")), None)
    return input_path / first if first is not None and first.lower().endswith(".nii.gz") else None

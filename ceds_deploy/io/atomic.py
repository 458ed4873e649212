"""Files that appear complete under their name or not at all: temp file in the same folder, fsync,
rename."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically; raises OSError (disk full, read-only folder) with nothing
    left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:  # named after the file asked for, not our temp file
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)


def check_output_file(path: Path, suffix: str | None = None) -> None:
    """Before any work: refuse (`OutputError`) an output file path that is a folder, lacks `suffix`,
    or cannot be written: a probe file is written and removed in its folder, or, where that folder
    is still to be made, the nearest existing one must be a writable folder (nothing is created)."""
    from ceds_deploy.errors import OutputError

    path = Path(path)
    if suffix is not None and not path.name.lower().endswith(suffix):
        raise OutputError(f"{path}: the output file must end in {suffix}")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give the output file's name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{path}: cannot be written there: {folder} is not a folder")
    try:
        write_probe(folder / f".{path.name}.{uuid.uuid4().hex}.tmp")  # a leftover matches ATOMIC_TMP
    except OSError as err:
        raise OutputError(f"{path}: cannot be written there: {err.strerror or err}") from None


def write_probe(probe: Path) -> None:
    """Write 4 KiB to the new file `probe`, sync and remove it: raises OSError (read-only folder,
    permissions, full disk) where a file cannot be written there."""
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        probe.unlink(missing_ok=True)


def write_atomic_text(path: Path, text: str) -> None:
    """`write_atomic_bytes` of UTF-8 text."""
    write_atomic_bytes(path, text.encode("utf-8"))


# Names of the hidden temp files and folders our writers make next to their targets; a writer
# killed with SIGKILL leaves them behind. Full-match regular expressions.
ATOMIC_TMP = r"\..+\.[0-9a-f]{32}\.tmp"  # write_atomic_bytes: .<name>.<uuid4 hex>.tmp
STAGING_DIR = r"\..+\.(nii\.gz|nii|nrrd|nhdr|mha|mhd)\.[A-Za-z0-9_]{8}"  # write_volumes: mkdtemp(prefix=.<name>.)
VALIDATING_ONNX = r"\..+\.onnx\.[0-9a-f]{32}\.validating"  # export: .<model>.onnx.<uuid4 hex>.validating
LEFTOVER_PATTERNS = (ATOMIC_TMP, STAGING_DIR, VALIDATING_ONNX)


def remove_leftovers(
    folder: Path, patterns: tuple[str, ...] = LEFTOVER_PATTERNS, older_than_s: float = 0.0
) -> list[Path]:
    """Remove our own hidden temp files and staging folders directly in `folder` (not below it):
    entries whose name starts with "." and fully matches one of `patterns`, last modified more than
    `older_than_s` seconds ago (a writer still running elsewhere keeps younger ones). Anything else
    is never touched. Returns what was removed; a missing folder or an entry that cannot be removed
    is passed over."""
    import re
    import shutil
    import time

    folder = Path(folder)
    compiled = [re.compile(p) for p in patterns]
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(".") or not any(p.fullmatch(entry.name) for p in compiled):
            continue
        try:
            if now - entry.lstat().st_mtime < older_than_s:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed

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
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic_text(path: Path, text: str) -> None:
    """`write_atomic_bytes` of UTF-8 text."""
    write_atomic_bytes(path, text.encode("utf-8"))

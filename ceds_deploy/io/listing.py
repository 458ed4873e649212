"""Finding the scans in a folder: image files and DICOM series folders."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ceds_deploy.errors import ScanError
from ceds_deploy.io.paths import image_suffix


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_folder(path: Path) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    return any(_is_dicom_file(p) for p in sorted(path.iterdir())[:50] if p.is_file())


@dataclass
class ScanListing:
    """What `find_scans` found: scans to process, and entries it passed over (with why)."""

    scans: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_scans(folder: str | os.PathLike) -> ScanListing:
    """List the scans in `folder`: image files and DICOM series sub-folders, sorted by name.

    A single image file or DICOM folder given as `folder` is a listing of one. Hidden files are
    ignored; anything else that is not a scan is reported in `skipped`.
    """
    folder = Path(folder)
    listing = ScanListing()
    if not folder.exists():
        raise ScanError(folder, "does not exist")
    if folder.is_file() or is_dicom_folder(folder):
        listing.scans.append(folder)
        return listing
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and image_suffix(entry):
            listing.scans.append(entry)
        elif entry.is_dir() and is_dicom_folder(entry):
            listing.scans.append(entry)
        else:
            kind = "folder without a DICOM series" if entry.is_dir() else "not a recognised scan format"
            listing.skipped.append((entry, kind))
    return listing

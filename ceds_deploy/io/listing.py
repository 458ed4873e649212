"""Finding the scans in a folder: image files, DICOM series folders and the series inside them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ceds_deploy.errors import ScanError
from ceds_deploy.io.dicom import DicomSeries, scan_dicom_folder
from ceds_deploy.io.paths import image_suffix

BROKEN_LINK = "broken link: target missing"
ScanSource = Path | DicomSeries  # what a listing holds and `read_scan` and `case_id` take


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
    """What `find_scans` found: scans to process (paths, or `DicomSeries` where a DICOM folder
    holds several CT series; `read_scan` and `case_id` take either), and entries it passed over
    (with why)."""

    scans: list[ScanSource] = field(default_factory=list)
    skipped: list[tuple[ScanSource, str]] = field(default_factory=list)


def _add_dicom_folder(folder: Path, listing: ScanListing) -> None:
    """A DICOM folder holding one CT series is listed as the folder; several as one `DicomSeries`
    each. Series that are not CT scans are listed in `skipped` with the reason."""
    found = scan_dicom_folder(folder)
    if len(found.series) == 1:
        listing.scans.append(folder)
    else:
        listing.scans.extend(found.series)
    listing.skipped.extend(found.skipped)
    if not found.series and not found.skipped:
        listing.skipped.append((folder, "folder without a DICOM series"))


def find_scans(folder: str | os.PathLike) -> ScanListing:
    """List the scans in `folder`: image files and DICOM series sub-folders, sorted by name.

    A single image file or DICOM folder given as `folder` is a listing of one (or of each CT
    series when the DICOM folder holds several). Hidden files are ignored; anything else that is
    not a scan is reported in `skipped`: other files, folders without DICOM, broken links, DICOM
    series that are not CT scans (localizers, other modalities, fewer than 3 slices).
    Raises `ScanError` when `folder` does not exist.
    """
    folder = Path(folder)
    listing = ScanListing()
    if folder.is_symlink() and not folder.exists():
        raise ScanError(folder, BROKEN_LINK)
    if not folder.exists():
        raise ScanError(folder, "does not exist")
    if is_dicom_folder(folder):
        _add_dicom_folder(folder, listing)
        return listing
    if folder.is_file():
        listing.scans.append(folder)
        return listing
    for entry in sorted(folder.iterdir()):
        add_entry(entry, listing)
    return listing


def add_entry(entry: Path, listing: ScanListing) -> None:
    """Add one entry of a folder of scans to `listing`: an image file, a DICOM series folder (or
    its series), or a skipped entry with the reason; hidden entries are ignored."""
    if entry.name.startswith("."):
        return
    if entry.is_symlink() and not entry.exists():
        listing.skipped.append((entry, BROKEN_LINK))
    elif entry.is_file() and image_suffix(entry):
        listing.scans.append(entry)
    elif entry.is_dir() and is_dicom_folder(entry):
        _add_dicom_folder(entry, listing)
    else:
        kind = "folder without a DICOM series" if entry.is_dir() else "not a recognised scan format"
        listing.skipped.append((entry, kind))

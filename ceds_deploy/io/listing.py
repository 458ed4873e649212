"""Finding the scans in a folder: image files, and the DICOM series of the folder tree."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ceds_deploy.errors import ScanError
from ceds_deploy.io.dicom import DicomSeries, read_header
from ceds_deploy.io.dicom_tree import DicomFolder, dicom_files, scan_dicom_tree
from ceds_deploy.io.paths import NOT_A_SCAN, case_id, image_suffix

BROKEN_LINK = "broken link: target missing"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the SOP class of a DICOMDIR
ScanSource = Path | DicomSeries  # what a listing holds and `read_scan` and `case_id` take


def is_dicom_folder(path: Path) -> bool:
    """A folder holding DICOM files directly (pydicom reads one of its first 50 files)."""
    path = Path(path)
    return path.is_dir() and any(read_header(p) is not None for p in dicom_files(path, recursive=False)[:50])


@dataclass
class ScanListing:
    """What `find_scans` found: scans to process (paths, or `DicomSeries` for DICOM series other
    than a folder's only one; `read_scan` and `case_id` take either), and entries it passed over
    (with why)."""

    scans: list[ScanSource] = field(default_factory=list)
    skipped: list[tuple[ScanSource, str]] = field(default_factory=list)


def _top_level(root: Path, path: Path) -> Path:
    return root / path.relative_to(root).parts[0]


def _add_entries(folder: Path, found: DicomFolder, listing: ScanListing) -> None:
    """The entries of `folder` itself: image files are scans; sub-folders without DICOM series
    (at any depth) and files that are neither images nor DICOM are listed in `skipped`. A folder
    that holds DICOM files itself is a series folder: its other files are not mentioned."""
    files = [path for series in [*found.series, *(s for s, _ in found.skipped)] for path in series.files]
    holders = {_top_level(folder, path) for path in files}  # sub-folders with DICOM, DICOM files here
    series_folder = any(path.parent == folder for path in files)
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry in holders:
            continue
        if entry.is_symlink() and not entry.exists():
            listing.skipped.append((entry, BROKEN_LINK))
        elif entry.is_file() and image_suffix(entry):
            listing.scans.append(entry)
        elif entry.is_dir():
            listing.skipped.append((entry, "folder without a DICOM series"))
        elif not series_folder:
            listing.skipped.append((entry, _other_file(entry)))


def _other_file(path: Path) -> str:
    """Why a file that is neither an image nor part of a DICOM series is not a scan."""
    header = read_header(path)
    if header is None:
        return NOT_A_SCAN
    if str(getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        return "a DICOMDIR (an index of DICOM files; the files themselves are read)"
    return "a DICOM file without an image or series"


def find_scans(folder: str | os.PathLike) -> ScanListing:
    """List the scans in `folder`: image files directly in it, and the DICOM series anywhere below
    it (grouped by SeriesInstanceUID, named as `dicom_tree` says), sorted by case name.

    A single image file given as `folder` is a listing of one; a DICOM folder holding one CT series
    is listed as the folder. Hidden files are ignored; anything else that is not a scan is reported
    in `skipped`: other files, folders without DICOM, broken links, DICOM series that are not CT
    scans (localizers, other modalities, fewer than 3 slices) or whose slices are not one regular
    grid (missing or unevenly spaced slices, gantry tilt, mixed sizes or orientations).
    Raises `ScanError` when `folder` does not exist.
    """
    folder = Path(folder)
    listing = ScanListing()
    if folder.is_symlink() and not folder.exists():
        raise ScanError(folder, BROKEN_LINK)
    if not folder.exists():
        raise ScanError(folder, "does not exist")
    if folder.is_file():
        listing.scans.append(folder)
        return listing
    found = scan_dicom_tree(folder)
    listing.scans.extend(series.folder if series.whole_folder else series for series in found.series)
    _add_entries(folder, found, listing)
    listing.scans.sort(key=lambda scan: (case_id(scan), str(scan)))
    listing.skipped.extend(found.skipped)
    return listing


def find_scans_in(folder: str | os.PathLike, entries: list[Path]) -> ScanListing:
    """The part of `find_scans(folder)` that lies in `entries` (entries of `folder` itself): what a
    watch lists when those entries arrive. The whole folder is listed so that case names are those
    of a folder run (they depend on the other series, e.g. when two would collide)."""
    folder = Path(folder)
    wanted = {Path(entry).name for entry in entries}
    listing = find_scans(folder)

    def top(scan: ScanSource) -> str:
        path = scan if isinstance(scan, Path) else scan.folder
        return path.relative_to(folder).parts[0] if path != folder else ""

    return ScanListing(
        [scan for scan in listing.scans if top(scan) in wanted],
        [(scan, why) for scan, why in listing.skipped if top(scan) in wanted],
    )

"""DICOM folders: their series (grouped by SeriesInstanceUID from the headers alone), which of them
are CT scans, and the check that a series' slices lie on one regular grid before any pixel is read.

A folder may hold several series (a scan, its localizer, a second reconstruction, a dose report).
`scan_dicom_folder` sorts them into `DicomSeries` to read and ones passed over with the reason.
`check_stack` turns a single-frame series into the ordered file list and the `Geometry` its
headers describe, or refuses it: more than one orientation, positions off the slice normal
(gantry tilt), duplicated or missing slices, non-uniform spacing. A multi-frame file is one
volume that ITK reads as a whole.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ceds_deploy.errors import ScanError
from ceds_deploy.volume import Geometry

log = logging.getLogger(__name__)

MIN_SLICES = 3  # fewer is a localizer or a stray image, not a scan
ORIENTATION_TOLERANCE = 1e-4  # largest difference of a direction cosine between slices
# A slice may sit off its place on the regular grid (along the normal and across it) by at most
# max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * slice spacing).
POSITION_TOLERANCE_MM = 0.01
POSITION_TOLERANCE_FRACTION = 0.01
_TAGS = [
    "SeriesInstanceUID",
    "SeriesNumber",
    "Modality",
    "ImageType",
    "ImageOrientationPatient",
    "ImagePositionPatient",
    "PixelSpacing",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsAllocated",
    "SamplesPerPixel",
    "PatientID",
    "StudyDate",
]


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder: what `find_scans` lists when a folder holds several, and
    what `read_scan` takes. `name` is the case name (`case_id` returns it); `os.fspath` gives the
    folder, `str` the folder with the series number and UID."""

    folder: Path
    uid: str
    files: tuple[Path, ...]
    name: str
    number: str = ""
    multiframe: bool = False

    def __fspath__(self) -> str:
        return str(self.folder)

    def __str__(self) -> str:
        return f"{self.folder} (series {self.number or '?'}, {self.uid})"


@dataclass
class DicomFolder:
    """The series of one folder: those to read, and those passed over with the reason."""

    series: list[DicomSeries]
    skipped: list[tuple[DicomSeries, str]]


def read_header(path: Path) -> Any | None:
    """The header of the DICOM file `path` (no pixel data), or None when it is not DICOM."""
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_TAGS)
    except Exception:  # noqa: BLE001 - not DICOM, or unreadable: not part of any series
        return None


def _frames(header: Any) -> int:
    try:
        return int(header.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _skip_reason(header: Any, count: int) -> str | None:
    """Why a series (or multi-frame file) of `count` slices is not a CT scan to read, or None."""
    modality = str(header.get("Modality", "") or "").upper()
    if modality and modality != "CT":
        return f"DICOM series is {modality}, not CT"
    image_type = [str(v).upper() for v in (header.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return f"DICOM series is a localizer (ImageType {'/'.join(image_type)}), not a scan"
    if count < MIN_SLICES:
        return f"DICOM series has {count} slice{'s' if count != 1 else ''}; a 3D scan needs at least {MIN_SLICES}"
    return None


def _names(folder: Path, groups: list[tuple[str, Any]]) -> list[str]:
    """Case names for the series of `folder`: the folder's name for a lone series, else
    <folder>_<SeriesNumber>, with a short hash of the UID where numbers are missing or repeated."""
    if len(groups) == 1:
        return [folder.name]
    numbers = [str(header.get("SeriesNumber", "") or "").strip() for _, header in groups]
    names = []
    for (key, _), number in zip(groups, numbers):
        if not number or numbers.count(number) > 1:
            number = f"{number}_{hashlib.sha1(key.encode()).hexdigest()[:6]}".lstrip("_")
        names.append(f"{folder.name}_{number}")
    return names


def scan_dicom_folder(folder: Path) -> DicomFolder:
    """Group the DICOM files of `folder` (not its sub-folders) into series by SeriesInstanceUID,
    reading headers only. A multi-frame file is a series of its own. Series that are not CT,
    localizers and ones of fewer than `MIN_SLICES` slices go to `skipped` with the reason."""
    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    for path in sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")):
        header = read_header(path)
        if header is None or "Rows" not in header:
            continue  # not DICOM, or DICOM without an image (DICOMDIR)
        uid = str(header.get("SeriesInstanceUID", "") or "")
        key = f"{uid}/{path.name}" if _frames(header) > 1 else uid
        groups[key].append((path, header))
    ordered = sorted(groups.items(), key=lambda kv: (_series_number(kv[1][0][1]), kv[0]))
    names = _names(Path(folder), [(key, members[0][1]) for key, members in ordered])
    found = DicomFolder([], [])
    for (key, members), name in zip(ordered, names):
        header = members[0][1]
        multiframe = _frames(header) > 1
        series = DicomSeries(
            Path(folder),
            key.split("/")[0],
            tuple(p for p, _ in members),
            name,
            str(header.get("SeriesNumber", "") or ""),
            multiframe,
        )
        reason = (
            "DICOM files without a SeriesInstanceUID"
            if not series.uid
            else _skip_reason(header, _frames(header) if multiframe else len(members))
        )
        if reason:
            found.skipped.append((series, reason))
        else:
            found.series.append(series)
    return found


def _series_number(header: Any) -> float:
    try:
        return float(header.get("SeriesNumber"))
    except (TypeError, ValueError):
        return float("inf")


def series_to_read(folder: Path) -> DicomSeries:
    """The one CT series of the DICOM folder `folder`; raises `ScanError` when it holds none (with
    the reasons) or several (`find_scans` lists each of them as its own scan)."""
    found = scan_dicom_folder(folder)
    if len(found.series) == 1:
        for series, reason in found.skipped:
            log.info("%s: passing over %s: %s", folder, series, reason)
        return found.series[0]
    if found.series:
        names = ", ".join(f"{s.name} ({len(s.files)} files)" for s in found.series)
        raise ScanError(
            folder,
            f"holds {len(found.series)} CT series ({names}); read one at a time "
            "(find_scans lists each series as its own scan)",
        )
    if not found.skipped:
        raise ScanError(folder, "folder holds no DICOM series")
    if len(found.skipped) == 1:
        raise ScanError(folder, found.skipped[0][1])
    reasons = "; ".join(f"series {s.number or '?'}: {why}" for s, why in found.skipped)
    raise ScanError(folder, f"holds no CT series to read ({reasons})")


def _vector(header: Any, keyword: str, count: int, series: DicomSeries, path: Path) -> np.ndarray:
    value = header.get(keyword)
    try:
        vector = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        vector = np.zeros(0)
    if vector.shape != (count,) or not np.all(np.isfinite(vector)):
        raise ScanError(series, f"slice {path.name} has no valid {keyword} ({value!r})")
    return vector


def check_stack(series: DicomSeries) -> tuple[list[Path], Geometry]:
    """The files of the single-frame `series` in slice order (ascending along row x column) and the
    regular grid they describe. Raises `ScanError` naming the series when the slices are not one
    regular volume: sizes or orientations differ, positions are off the slice normal, slices are
    duplicated, missing or unevenly spaced (tolerances: `ORIENTATION_TOLERANCE`, and
    `POSITION_TOLERANCE_MM` / `POSITION_TOLERANCE_FRACTION` of the spacing)."""
    headers = []
    for path in series.files:
        header = read_header(path)
        if header is None:
            raise ScanError(series, f"slice {path.name} is no longer readable as DICOM")
        headers.append((path, header))
    first_path, first = headers[0]
    iop = _vector(first, "ImageOrientationPatient", 6, series, first_path)
    pixel = _vector(first, "PixelSpacing", 2, series, first_path)
    size = (int(first.Columns), int(first.Rows))
    positions = []
    for path, header in headers:
        if (int(header.Columns), int(header.Rows)) != size:
            raise ScanError(
                series,
                f"slices differ in size: {path.name} is {header.Columns}x{header.Rows}, "
                f"{first_path.name} is {size[0]}x{size[1]}",
            )
        other = _vector(header, "ImageOrientationPatient", 6, series, path)
        if np.max(np.abs(other - iop)) > ORIENTATION_TOLERANCE:
            raise ScanError(
                series,
                f"slices have more than one orientation ({path.name}: {np.round(other, 4)}, "
                f"{first_path.name}: {np.round(iop, 4)})",
            )
        if np.max(np.abs(_vector(header, "PixelSpacing", 2, series, path) - pixel)) > 1e-4 * max(pixel):
            raise ScanError(series, f"slices differ in PixelSpacing ({path.name}, {first_path.name})")
        positions.append(_vector(header, "ImagePositionPatient", 3, series, path))
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise ScanError(series, f"ImageOrientationPatient {np.round(iop, 4)} is not two orthogonal unit vectors")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    order = np.argsort([p @ normal for p in positions], kind="stable")
    files = [headers[k][0] for k in order]
    points = np.asarray([positions[k] for k in order])
    spacing = _check_positions(series, files, points, normal)
    direction = np.stack([row, col, normal], axis=1)
    return files, Geometry((pixel[1], pixel[0], spacing), points[0], direction, (*size, len(files)))


def slice_tolerance(spacing: float) -> float:
    """How far (mm) a slice may sit off its place on a regular grid of slice `spacing`."""
    return max(POSITION_TOLERANCE_MM, POSITION_TOLERANCE_FRACTION * spacing)


def _check_positions(series: DicomSeries, files: list[Path], points: np.ndarray, normal: np.ndarray) -> float:
    """The slice spacing of `points` (sorted along `normal`); raises `ScanError` when they are not
    evenly spaced along the normal within the tolerance."""
    depth = (points - points[0]) @ normal
    steps = np.diff(depth)
    spacing = float(depth[-1] / (len(depth) - 1))
    tolerance = slice_tolerance(spacing)
    across = points - points[0] - depth[:, None] * normal[None, :]
    off = np.linalg.norm(across, axis=1)
    if off.max() > tolerance:
        k = int(np.argmax(off))
        raise ScanError(
            series,
            f"slice positions are not along the slice normal (gantry tilt or a sheared "
            f"stack): {files[k].name} is {off[k]:.3g} mm off it; tilted series are not supported",
        )
    if steps.min() <= tolerance:
        k = int(np.argmin(steps))
        raise ScanError(
            series, f"duplicate slice position: {files[k].name} and {files[k + 1].name} are {steps[k]:.3g} mm apart"
        )
    median = float(np.median(steps))
    if steps.max() > 1.5 * median:
        k = int(np.argmax(steps))
        raise ScanError(
            series,
            f"missing slice(s): a gap of {steps[k]:.4g} mm between {files[k].name} and "
            f"{files[k + 1].name} where the spacing is {median:.4g} mm",
        )
    residual = np.abs(depth - spacing * np.arange(len(depth)))
    if residual.max() > tolerance:
        raise ScanError(
            series,
            f"non-uniform slice spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm "
            f"(a slice is {residual.max():.3g} mm off the regular grid; tolerance "
            f"{tolerance:.3g} mm)",
        )
    return spacing


def file_claim(path: Path) -> tuple[tuple[int, ...], int] | None:
    """(size x, y, frames; bytes per voxel) that the DICOM file `path` claims, None if not DICOM."""
    header = read_header(path)
    if header is None or "Rows" not in header:
        return None
    return stack_bytes(DicomSeries(path.parent, "", (path,), path.name, multiframe=True), header)


def stack_bytes(series: DicomSeries, header: Any = None) -> tuple[tuple[int, ...], int]:
    """(size x, y, z, bytes per voxel as stored) that the headers of `series` claim."""
    header = header if header is not None else read_header(series.files[0])
    if header is None:
        raise ScanError(series, f"{series.files[0].name} is no longer readable as DICOM")
    depth = _frames(header) if series.multiframe else len(series.files)
    itemsize = max(1, int(header.get("BitsAllocated", 16) or 16) // 8) * int(header.get("SamplesPerPixel", 1) or 1)
    return (int(header.Columns), int(header.Rows), depth), itemsize

"""One DICOM series: its headers, whether it is a CT scan, and the check that its slices lie on one
regular grid before any pixel is read (`dicom_tree` finds the series of a folder or a tree).

`skip_reason` says why a series is not a CT scan to read (modality, localizer, too few slices).
`check_stack` turns a single-frame series into the ordered file list and the `Geometry` its
headers describe, or refuses it: more than one orientation, positions off the slice normal
(gantry tilt), duplicated or missing slices, non-uniform spacing. A multi-frame file is one
volume that ITK reads as a whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ceds_deploy.errors import ScanError
from ceds_deploy.volume import Geometry

log = logging.getLogger(__name__)

MIN_SLICES = 3  # fewer is a localizer or a stray image, not a scan
LOCALIZER_TYPES = {"LOCALIZER", "SCOUT", "TOPOGRAM"}  # ImageType values of planning images (vendors differ)
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
    "StudyInstanceUID",
    "FrameOfReferenceUID",
]


@dataclass(frozen=True)
class DicomSeries:
    """One series of a DICOM folder or tree: what `find_scans` lists, and what `read_scan` takes.
    `name` is the case name (`case_id` returns it); `folder` holds its (first) file; `os.fspath`
    gives the folder, `str` the folder with the series number and UID. `whole_folder`: the series
    is the only CT series among the files of `folder` and named after it, so the folder itself
    stands for it (`read_scan(folder)` reads it)."""

    folder: Path
    uid: str
    files: tuple[Path, ...]
    name: str
    number: str = ""
    multiframe: bool = False
    whole_folder: bool = False

    def __fspath__(self) -> str:
        return str(self.folder)

    def __str__(self) -> str:
        return f"{self.folder} (series {self.number or '?'}, {self.uid})"


def read_header(path: Path) -> Any | None:
    """The header of the DICOM file `path` (no pixel data), or None when it is not DICOM."""
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=_TAGS)
    except Exception:  # noqa: BLE001 - not DICOM, or unreadable: not part of any series
        return None


def frame_count(header: Any) -> int:
    try:
        return int(header.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def skip_reason(header: Any, count: int) -> str | None:
    """Why a series (or multi-frame file) of `count` slices is not a CT scan to read, or None."""
    modality = str(header.get("Modality", "") or "").upper()
    if modality and modality != "CT":
        return f"DICOM series is {modality}, not CT"
    if "Rows" not in header:
        return "DICOM series holds no images (no Rows, no pixel data)"
    image_type = [str(v).strip().upper() for v in (header.get("ImageType") or [])]
    if LOCALIZER_TYPES & set(image_type):
        return f"DICOM series is a localizer (ImageType {'/'.join(image_type)}), not a scan"
    if count < MIN_SLICES:
        return f"DICOM series has {count} slice{'s' if count != 1 else ''}; a 3D scan needs at least {MIN_SLICES}"
    return None


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
    regular grid they describe, from headers read again now (see `check_headers`)."""
    headers = []
    for path in series.files:
        header = read_header(path)
        if header is None:
            raise ScanError(series, f"slice {path.name} is no longer readable as DICOM")
        headers.append((path, header))
    return check_headers(series, headers)


def check_headers(series: DicomSeries, headers: list[tuple[Path, Any]]) -> tuple[list[Path], Geometry]:
    """`check_stack` on headers in hand (`read_header`'s, one per file of `series`). Raises
    `ScanError` naming the series when the slices are not one regular volume: sizes or orientations
    differ, positions are off the slice normal, slices are duplicated, missing or unevenly spaced
    (tolerances: `ORIENTATION_TOLERANCE`, and `POSITION_TOLERANCE_MM` / `POSITION_TOLERANCE_FRACTION`
    of the spacing)."""
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
    """(size x, y, frames; bytes per voxel) that the DICOM file `path` claims, None if not DICOM.
    Raises `ScanError` when it is not a CT scan to read: the checks a series in a folder gets
    (`skip_reason`: modality, images, localizer, at least 3 slices or frames)."""
    header = read_header(path)
    if header is None:
        return None
    reason = skip_reason(header, frame_count(header))
    if reason:
        raise ScanError(path, reason.replace("DICOM series", "DICOM file", 1))
    return stack_bytes(DicomSeries(path.parent, "", (path,), path.name, multiframe=True), header)


def stack_bytes(series: DicomSeries, header: Any = None) -> tuple[tuple[int, ...], int]:
    """(size x, y, z, bytes per voxel as stored) that the headers of `series` claim."""
    header = header if header is not None else read_header(series.files[0])
    if header is None:
        raise ScanError(series, f"{series.files[0].name} is no longer readable as DICOM")
    depth = frame_count(header) if series.multiframe else len(series.files)
    itemsize = max(1, int(header.get("BitsAllocated", 16) or 16) // 8) * int(header.get("SamplesPerPixel", 1) or 1)
    return (int(header.Columns), int(header.Rows), depth), itemsize


def series_datasets(series: DicomSeries) -> list[Any]:
    """The full headers (no pixel data) of the single-frame `series`, in the order `read_scan`
    stacks its slices (array index z): what a DICOM SEG of the scan references, frame by frame."""
    import pydicom

    if series.multiframe:
        raise ScanError(series, "is one multi-frame file; DICOM SEG output needs a series of single-frame images")
    files, _ = check_stack(series)
    return [pydicom.dcmread(str(path), stop_before_pixels=True) for path in files]

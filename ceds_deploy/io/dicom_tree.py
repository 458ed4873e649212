"""Finding the DICOM series of a folder or of a whole tree (patients / studies / series, any file
names, mixed with DICOMDIR, text or JPEG files): every file's header is read with pydicom (no pixel
data) and the files are grouped by SeriesInstanceUID. A multi-frame file is a series of its own.
Each series is either a CT scan to read or passed over with the reason: not CT, no images, a
localizer, too few slices, and (with `check_grid`) slices that are not one regular volume (sizes or
orientations differ, gantry tilt, missing, duplicated or unevenly spaced slices).

Case names are unique and readable:
- a series whose files all lie in the root itself or in one of its sub-folders (a folder per case,
  as `ceds segment` has always read them) is named after that folder: `<folder>` when it is the
  folder's only CT series, else `<folder>_<SeriesNumber>`;
- any other series (deeper in a tree, or spread over several folders) is
  `<PatientID>_<StudyDate>_<SeriesNumber>`, each part cleaned to letters, digits, `.` and `-`;
- a name that several series would share gets a short hash of the series UID appended: stable
  from run to run whatever else the tree holds, so resumed runs find their outputs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ceds_deploy.errors import ScanError
from ceds_deploy.io.dicom import DicomSeries, check_headers, frame_count, read_header, skip_reason
from ceds_deploy.io.paths import image_suffix

log = logging.getLogger(__name__)

NAME_PART_CHARS = 64  # longest PatientID / StudyDate / SeriesNumber part of a case name
_Members = list[tuple[Path, Any]]  # (file, its header) of one series


@dataclass
class DicomFolder:
    """The series found: those to read, and those passed over with the reason."""

    series: list[DicomSeries]
    skipped: list[tuple[DicomSeries, str]]


def dicom_files(root: Path, recursive: bool = True) -> list[Path]:
    """Candidate files under `root` (or directly in it), sorted; hidden files and folders and
    files with an image suffix (NIfTI, NRRD, ...) are left out."""
    root = Path(root)
    if not recursive:
        entries = sorted(p for p in root.iterdir() if p.is_file())
        return [p for p in entries if not p.name.startswith(".") and not image_suffix(p)]
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in sorted(files) if not f.startswith(".") and not image_suffix(Path(f))]
    return found


def _group(root: Path, files: list[Path]) -> list[tuple[str, _Members]]:
    """The DICOM files among `files` by series: (key, members), sorted by SeriesNumber then key.
    The key is the SeriesInstanceUID, with the file's path for a multi-frame file."""
    groups: dict[str, _Members] = defaultdict(list)
    for path in files:
        header = read_header(path)
        if header is None:
            continue  # not DICOM
        uid = str(header.get("SeriesInstanceUID", "") or "")
        if not uid and "Rows" not in header:
            continue  # neither a series nor an image: a DICOMDIR
        key = f"{uid}/{path.relative_to(root).as_posix()}" if frame_count(header) > 1 else uid
        groups[key].append((path, header))
    return sorted(groups.items(), key=lambda kv: (_series_number(kv[1][0][1]), kv[0]))


def _series_number(header: Any) -> float:
    try:
        return float(header.get("SeriesNumber"))
    except (TypeError, ValueError):
        return float("inf")


def _uid_hash(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:6]


def clean_name_part(value: Any, missing: str) -> str:
    """`value` as part of a file name: runs of characters other than letters, digits, `.` and `-`
    become `_`, leading dots and underscores go; `missing` when nothing is left."""
    text = re.sub(r"[^A-Za-z0-9.-]+", "_", str(value if value is not None else "").strip())
    return text.strip("._")[:NAME_PART_CHARS].rstrip("._") or missing


def _number(header: Any) -> str:
    return str(header.get("SeriesNumber", "") or "").strip()


def _folder_name(folder: Path) -> str:
    return folder.name or folder.resolve().name


def _case_folder(root: Path, members: _Members) -> Path | None:
    """The folder a series is named after: the root or a sub-folder of it holding all its files."""
    parents = {path.parent for path, _ in members}
    if len(parents) != 1:
        return None
    folder = parents.pop()
    return folder if folder == root or folder.parent == root else None


def _names(root: Path, groups: list[tuple[str, _Members]], readable: list[bool]) -> list[tuple[str, bool]]:
    """(case name, whole_folder) of each group; `readable`: the group is a CT scan by its kind
    (not yet checked for its grid)."""
    names, whole = [""] * len(groups), [False] * len(groups)
    by_folder: dict[Path, list[int]] = defaultdict(list)
    for i, (key, members) in enumerate(groups):
        folder = _case_folder(root, members)
        if folder is not None:
            by_folder[folder].append(i)
            continue
        header = members[0][1]
        patient = clean_name_part(header.get("PatientID"), "unknown")
        date = clean_name_part(header.get("StudyDate"), "nodate")
        names[i] = f"{patient}_{date}_{clean_name_part(_number(header), '') or _uid_hash(key)}"
    for folder, indices in by_folder.items():
        numbers = [_number(groups[i][1][0][1]) for i in indices]
        for i, number in zip(indices, numbers):
            if not number or numbers.count(number) > 1:
                number = f"{number}_{_uid_hash(groups[i][0])}".lstrip("_")
            names[i] = _folder_name(folder) if len(indices) == 1 else f"{_folder_name(folder)}_{number}"
        scans = [i for i in indices if readable[i]]
        if len(scans) == 1:  # the folder's one CT series: the folder stands for it, as before
            names[scans[0]], whole[scans[0]] = _folder_name(folder), True
    for name in {n for n in names if names.count(n) > 1}:
        for i in (i for i, n in enumerate(names) if n == name):
            names[i], whole[i] = f"{name}_{_uid_hash(groups[i][0])}", False
    return list(zip(names, whole))


def scan_dicom_tree(root: Path, *, recursive: bool = True, check_grid: bool = True) -> DicomFolder:
    """The DICOM series under `root` (only its own files unless `recursive`), named and sorted
    into those to read and those passed over with the reason (see the module's docstring).
    `check_grid` also checks each single-frame CT series' slice grid from the headers."""
    root = Path(root)
    groups = _group(root, dicom_files(root, recursive))
    kinds = []
    for key, members in groups:
        header, multiframe = members[0][1], frame_count(members[0][1]) > 1
        count = frame_count(header) if multiframe else len(members)
        kinds.append(skip_reason(header, count) if key.split("/")[0] else "DICOM files without a SeriesInstanceUID")
    found = DicomFolder([], [])
    for (key, members), kind, (name, whole) in zip(groups, kinds, _names(root, groups, [k is None for k in kinds])):
        header = members[0][1]
        series = DicomSeries(
            members[0][0].parent,
            key.split("/")[0],
            tuple(path for path, _ in members),
            name,
            _number(header),
            frame_count(header) > 1,
            whole,
        )
        reason = kind
        if reason is None and check_grid and not series.multiframe:
            try:
                check_headers(series, members)
            except ScanError as err:
                reason = err.problem
        if reason:
            found.skipped.append((series, reason))
        else:
            found.series.append(series)
    return found


def scan_dicom_folder(folder: Path) -> DicomFolder:
    """The series of the DICOM files directly in `folder` (not its sub-folders), sorted into CT
    series to read and those passed over (not CT, localizers, too few slices), as `scan_dicom_tree`
    names them; their slice grids are checked when read."""
    return scan_dicom_tree(folder, recursive=False, check_grid=False)


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

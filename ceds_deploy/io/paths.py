"""File names of scans: which suffixes are images, and a case's name."""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
NOT_A_SCAN = "not a recognised scan format"  # neither an image suffix nor DICOM
DICOM_SUFFIXES = (".dcm", ".dicom")  # left out of a single DICOM file's case name
NNUNET_CHANNEL_SUFFIX = "_0000"  # nnU-Net names single-channel images <case>_0000.nii.gz


def image_suffix(path: Path) -> str | None:
    """The recognised image suffix of `path` ('.nii.gz', '.mha', ...), or None."""
    name = Path(path).name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def is_nifti(path: Path) -> bool:
    return image_suffix(path) in NIFTI_SUFFIXES


def case_id(path: os.PathLike) -> str:
    """A case's name: the file name without its image or DICOM suffix (and nnU-Net's `_0000`); for a
    `DicomSeries` that `find_scans` listed, its name (<folder>_<SeriesNumber>)."""
    from ceds_deploy.io.dicom import DicomSeries

    if isinstance(path, DicomSeries):
        return path.name
    path = Path(path)
    suffix = image_suffix(path) or next((s for s in DICOM_SUFFIXES if path.name.lower().endswith(s)), None)
    stem = path.name[: -len(suffix)] if suffix else path.name
    if stem.endswith(NNUNET_CHANNEL_SUFFIX):
        stem = stem[: -len(NNUNET_CHANNEL_SUFFIX)]
    return stem

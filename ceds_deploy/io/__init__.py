"""Scans in and out: reading with full geometry, atomic writing, finding the scans of a folder.

`read` (SimpleITK parsing, checks), `headers` (a header's size claim checked before allocating),
`dicom` (one series: its kind and slice grid checked from the headers), `dicom_tree` (the series
of a folder tree, grouped by UID, named), `dicom_seg` (DICOM SEG and Parametric Map output),
`write` (NIfTI via `nifti`'s ISA-L writer, other formats via ITK), `atomic` (temp file + rename),
`listing` (image files and the DICOM series of a tree), `paths` (suffixes and case names).
"""

from ceds_deploy.io.atomic import remove_leftovers, write_atomic_bytes, write_atomic_text
from ceds_deploy.io.dicom import DicomSeries
from ceds_deploy.io.listing import ScanListing, ScanSource, find_scans, find_scans_in, is_dicom_folder
from ceds_deploy.io.paths import IMAGE_SUFFIXES, case_id, image_suffix, is_nifti
from ceds_deploy.io.read import read_scan
from ceds_deploy.io.write import to_sitk, write_volume, write_volumes

__all__ = [
    "IMAGE_SUFFIXES",
    "DicomSeries",
    "ScanListing",
    "ScanSource",
    "find_scans_in",
    "case_id",
    "find_scans",
    "image_suffix",
    "is_dicom_folder",
    "is_nifti",
    "read_scan",
    "remove_leftovers",
    "to_sitk",
    "write_atomic_bytes",
    "write_atomic_text",
    "write_volume",
    "write_volumes",
]

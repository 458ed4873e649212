"""DICOM CT series for the DICOM SEG tests, written with pydicom (no ITK in the loop):

- `write_ct_series`: a `Volume` in HU (array [x, y, z], LPS geometry, oblique allowed) as one
  CT Image Storage file per slice with a full header (patient, study, series and frame of
  reference UIDs, ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness,
  RescaleSlope/Intercept);
- `series_from_single_slice`: pydicom's real `CT_small.dcm` copied into a series (new
  SOPInstanceUIDs, positions along the slice normal, one SeriesInstanceUID);
- `read_sorted_series`: the datasets of a folder sorted along the slice normal, the order in
  which SimpleITK's ImageSeriesReader stacks them (array index z).
"""

from __future__ import annotations

import copy
import datetime
from pathlib import Path

import numpy as np

from ceds_deploy.volume import Volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RESCALE_INTERCEPT = -1024.0  # stored value 0 is -1024 HU, as on most scanners


def _ds(value: float) -> str:
    """A DS value string of at most 16 characters."""
    text = f"{float(value) + 0.0:.6f}".replace("-0.000000", "0.000000").rstrip("0").rstrip(".")
    return text if len(text) <= 16 else f"{value:.9g}"


def write_ct_series(
    folder: Path, volume: Volume, *, patient_id: str = "CEDS-PHANTOM-0", series_description: str = "synthetic phantom"
) -> list[Path]:
    """Write `volume` (HU, array [x, y, z]) as a CT series, one file per slice, in `folder`.

    Slice k lies at ``origin + k * spacing[2] * direction[:, 2]``; its pixel (row r, column c) is
    ``array[c, r, k]``. Returns the file paths in slice order. A left-handed direction matrix
    (slice axis against the row x column normal) raises ValueError: such a volume is a DICOM series
    only with its slices reversed."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    g = volume.geometry
    direction = g.direction_matrix
    if np.linalg.det(direction) < 0:
        raise ValueError(f"left-handed direction {g.direction}: flip the slice axis first")
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    stored = np.clip(np.round(volume.array) - RESCALE_INTERCEPT, 0, 65535).astype(np.uint16)
    now = datetime.datetime(2026, 1, 2, 3, 4, 5)
    paths = []
    for k in range(g.shape[2]):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CT_IMAGE_STORAGE, uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = _ct_header(meta, patient_id, series_description, now)
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = uid, study, series
        ds.FrameOfReferenceUID = frame_of_reference
        ds.InstanceNumber = k + 1
        position = np.asarray(g.origin) + k * g.spacing[2] * direction[:, 2]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.SliceLocation = _ds(float(position @ direction[:, 2]))
        ds.PixelSpacing = [_ds(g.spacing[1]), _ds(g.spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = _ds(g.spacing[2])
        ds.Rows, ds.Columns = g.shape[1], g.shape[0]
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        path = folder / f"slice_{k:04d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def _ct_header(meta, patient_id: str, series_description: str, when: datetime.datetime):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.Modality = "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientName, ds.PatientID = "Phantom^Ceds", patient_id
    ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = when.strftime("%H%M%S")
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "CEDS0001", ""
    ds.SeriesNumber, ds.SeriesDescription = 2, series_description
    ds.Manufacturer, ds.BodyPartExamined, ds.PatientPosition = "ceds-tests", "CHEST", "HFS"
    ds.PositionReferenceIndicator = ""
    ds.KVP = "120"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", _ds(RESCALE_INTERCEPT), "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def series_from_single_slice(source: Path, folder: Path, slices: int, spacing_mm: float = 5.0) -> list[Path]:
    """Copies of the single CT slice `source` as a series of `slices` slices `spacing_mm` apart along
    its normal: new SOPInstanceUIDs, one new SeriesInstanceUID, pixel data shifted a little per slice
    (so the slices differ). Written in reverse order, so readers must sort. Returns the paths."""
    import pydicom
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    original = pydicom.dcmread(source)
    iop = np.asarray(original.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    series = generate_uid()
    paths = []
    for k in reversed(range(slices)):
        ds = copy.deepcopy(original)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series, 77, k + 1
        position = np.asarray(original.ImagePositionPatient, dtype=float) + k * spacing_mm * normal
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.SliceThickness = _ds(spacing_mm)
        ds.PixelData = np.roll(original.pixel_array, k, axis=1).tobytes()
        path = folder / f"copy_{k:03d}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def read_sorted_series(folder: Path) -> list:
    """The datasets of the single series in `folder`, sorted along the slice normal (ascending)."""
    import pydicom

    datasets = [pydicom.dcmread(p) for p in sorted(Path(folder).glob("*.dcm"))]
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))

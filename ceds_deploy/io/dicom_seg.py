"""DICOM output for a DICOM input: the mask as a DICOM Segmentation (SEG) and the confidence map
as a DICOM Parametric Map, both referencing the source CT series, written with highdicom.

Geometry: the mask and confidence arrays are on the source series' grid, indexed [x, y, z] as
everywhere in this project (x = DICOM columns, y = rows, z = position of the slice in the series
sorted along the slice normal, SimpleITK's ImageSeriesReader order). Frame k of the SEG and of the
parametric map is slice z = k: ``array[:, :, k].T`` (rows, columns) over ``source_datasets[k]``, so
each frame carries its source slice's ImagePositionPatient, and the series' ImageOrientationPatient
and PixelSpacing.

The SEG is BINARY with one segment, "mediastinal tumour". Its codes are SNOMED CT concepts of the
DICOM content mapping resources, checked in pydicom's `pydicom.sr.codedict.codes` (pydicom 3.0,
`pydicom/sr/_concepts_dict.py`, which lists the context groups each code belongs to):
- segmented property category: 49755003 "Morphologically Abnormal Structure" (CID 7150,
  Segmentation Property Categories);
- segmented property type: 108369006 "Neoplasm" (CID 7159 Lesion Segmentation Type, via CID 7194;
  pydicom's alias `codes.SCT.Tumor` is the same concept);
- anatomic region: 72410000 "Mediastinum" (CID 4 Anatomic Region, also in CID 7151; highdicom's
  `_standard/anatomic_regions.json` lists it too);
- algorithm family: DCM 123110 "Artificial Intelligence" (CID 7162).
Frames without tumour are left out of the SEG (highdicom's default); the parametric map keeps
every frame.

The confidence map is a Parametric Map rather than a FRACTIONAL SEG: it is a per-voxel quantity,
not the membership of a segment, and the Parametric Map stores it as 32-bit floats with a Real
World Value Mapping (identity, range 0.0..1.0, UCUM unit "1" = no units) instead of quantising
it to 8 bits. highdicom accepts a CT series as its source (single-frame images of one series).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ceds_deploy.errors import OutputError, ScanError
from ceds_deploy.io.atomic import write_atomic_bytes
from ceds_deploy.volume import Geometry

log = logging.getLogger(__name__)

SEG_SUFFIX = "_seg.dcm"
PARAMETRIC_MAP_SUFFIX = "_confidence.dcm"
SEGMENT_LABEL = "mediastinal tumour"
ALGORITHM_NAME = "CEDS"
MANUFACTURER = "ceds-deploy"
POSITION_TOLERANCE_MM = 1e-3
DISPLAY_RGB = (255, 42, 42)  # the previews' outline red


@dataclass(frozen=True)
class DicomSegFiles:
    """What `write_dicom_seg` wrote: the SEG, and the parametric map when a confidence map was given."""

    seg: Path
    confidence: Path | None


def _source_name(ds: Any) -> str:
    return str(getattr(ds, "filename", None) or f"SOPInstanceUID {getattr(ds, 'SOPInstanceUID', '?')}")


def _vector(ds: Any, keyword: str, size: int) -> np.ndarray:
    value = getattr(ds, keyword, None)
    if value is None or len(value) != size:
        raise ScanError(_source_name(ds), f"has no valid {keyword} (needed to place the segmentation)")
    return np.asarray([float(v) for v in value], dtype=np.float64)


def _identity(ds: Any) -> tuple[Any, ...]:
    return getattr(ds, "Rows", None), getattr(ds, "Columns", None), getattr(ds, "SeriesInstanceUID", None)


def series_geometry(source_datasets: Sequence[Any]) -> Geometry:
    """The grid of a sorted single-frame series as SimpleITK's ImageSeriesReader builds it: origin
    at the first slice's ImagePositionPatient, axes x = row direction (along a row, i.e. columns),
    y = column direction, z = towards the last slice.

    Raises `ScanError` (naming the first offending file) for fewer than two slices, a missing or
    differing Rows/Columns, ImageOrientationPatient, PixelSpacing or SeriesInstanceUID, or slices
    that are not evenly spaced along the slice normal in their given order."""
    if len(source_datasets) < 2:
        name = _source_name(source_datasets[0]) if source_datasets else "source series"
        raise ScanError(name, f"a DICOM series of {len(source_datasets)} slice cannot carry a 3D segmentation")
    first = source_datasets[0]
    if None in _identity(first):
        raise ScanError(_source_name(first), "has no Rows, Columns or SeriesInstanceUID")
    orientation, spacing = _vector(first, "ImageOrientationPatient", 6), _vector(first, "PixelSpacing", 2)
    for ds in source_datasets[1:]:
        same = _identity(ds) == _identity(first)
        if (
            not same
            or not np.allclose(_vector(ds, "ImageOrientationPatient", 6), orientation, atol=1e-4)
            or not np.allclose(_vector(ds, "PixelSpacing", 2), spacing, atol=1e-4)
        ):
            raise ScanError(
                _source_name(ds),
                "differs from the series' first slice in size, orientation, pixel spacing or SeriesInstanceUID",
            )
    positions = np.stack([_vector(ds, "ImagePositionPatient", 3) for ds in source_datasets])
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    steps = np.diff(positions, axis=0)
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    bad = np.flatnonzero(np.linalg.norm(steps - step, axis=1) > max(POSITION_TOLERANCE_MM, 0.01 * np.linalg.norm(step)))
    if bad.size or abs(float(step @ normal)) < POSITION_TOLERANCE_MM:
        where = _source_name(source_datasets[int(bad[0]) + 1] if bad.size else first)
        raise ScanError(
            where,
            "slices are not evenly spaced along the slice normal in the given order "
            "(sort the series, or it has gaps or duplicates)",
        )
    z_dir = step / np.linalg.norm(step)
    return Geometry(
        spacing=(spacing[1], spacing[0], float(np.linalg.norm(step))),
        origin=tuple(positions[0]),
        direction=np.column_stack([row_dir, col_dir, z_dir]),
        shape=(int(first.Columns), int(first.Rows), len(source_datasets)),
    )


# Type 2 attributes of the Patient and General Study modules that highdicom copies from the source:
# a header may lack them, and DICOM's "unknown" is the attribute present and empty.
TYPE2_SOURCE_ATTRIBUTES = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


def _complete_sources(source_datasets: Sequence[Any]) -> list[Any]:
    """Copies of the source headers with missing Type 2 patient and study attributes present and
    empty; raises `ScanError` when a slice lacks what places the output (the study and frame of
    reference UIDs)."""
    completed = []
    for ds in source_datasets:
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID"):
            if not getattr(ds, keyword, None):
                raise ScanError(_source_name(ds), f"has no {keyword} (a DICOM SEG references the study and its space)")
        missing = [keyword for keyword in TYPE2_SOURCE_ATTRIBUTES if keyword not in ds]
        if missing:
            ds = ds.copy()
            for keyword in missing:
                setattr(ds, keyword, "")
        completed.append(ds)
    return completed


def _frames(path: Path, array: np.ndarray, grid: Geometry, what: str) -> np.ndarray:
    """`array` [x, y, z] as frames (z, rows, columns), after checking it covers `grid`."""
    if array.ndim != 3 or tuple(array.shape) != grid.shape:
        raise OutputError(
            f"{path}: {what} of shape {tuple(array.shape)} is not on the source series' grid "
            f"{grid.shape} (columns, rows, slices)"
        )
    return np.ascontiguousarray(np.transpose(array, (2, 1, 0)))


def _check_grid(path: Path, grid: Geometry, geometry: Geometry | None) -> None:
    if geometry is not None and not grid.same_grid(geometry, atol=POSITION_TOLERANCE_MM):
        raise OutputError(f"{path}: the array's geometry {geometry} is not the source series' {grid}")


def _codes() -> dict[str, Any]:
    from pydicom.sr.codedict import codes

    return {
        "category": codes.SCT.MorphologicallyAbnormalStructure,  # 49755003
        "type": codes.SCT.Neoplasm,  # 108369006
        "region": codes.SCT.Mediastinum,  # 72410000
        "family": codes.DCM.ArtificialIntelligence,
    }  # DCM 123110


def _version() -> str:
    from ceds_deploy import __version__

    return __version__


def segmentation_dataset(
    mask: np.ndarray,
    source_datasets: Sequence[Any],
    *,
    path: Path | str = "SEG",
    series_description: str = "CEDS mediastinal tumour",
    series_number: int = 901,
    geometry: Geometry | None = None,
    device_serial_number: str = "1",
) -> Any:
    """A `highdicom.seg.Segmentation` (BINARY, one segment) of `mask` ([x, y, z], 0/1, on the grid of
    the sorted `source_datasets`); empty frames are left out.

    `path` only names the output in errors; `geometry`, when given, must equal the series' grid.
    Raises `ScanError` for an unusable source series (see `series_geometry`) and `OutputError` for
    a mask of the wrong shape or with values other than 0 and 1."""
    import highdicom as hd

    path, grid = Path(path), series_geometry(source_datasets)
    _check_grid(path, grid, geometry)
    source_datasets = _complete_sources(source_datasets)
    frames = _frames(path, np.asarray(mask), grid, "mask")
    if frames.size and (int(frames.max()) > 1 or int(frames.min()) < 0):
        raise OutputError(f"{path}: mask values must be 0 and 1, found {np.unique(frames)[:8].tolist()}")
    code = _codes()
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=code["category"],
        segmented_property_type=code["type"],
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, family=code["family"], version=_version()
        ),
        anatomic_regions=[code["region"]],
        display_color=hd.color.CIELabColor.from_rgb(*DISPLAY_RGB),
    )
    seg = hd.seg.Segmentation(
        source_images=list(source_datasets),
        pixel_array=frames.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=_version(),
        device_serial_number=device_serial_number,
        content_label="CEDS",
        content_description=series_description[:64],
    )
    _describe(seg, source_datasets, series_description)
    return seg


def parametric_map_dataset(
    confidence: np.ndarray,
    source_datasets: Sequence[Any],
    *,
    path: Path | str = "parametric map",
    series_description: str = "CEDS mediastinal tumour confidence",
    series_number: int = 902,
    geometry: Geometry | None = None,
    device_serial_number: str = "1",
) -> Any:
    """A `highdicom.pm.ParametricMap` of `confidence` ([x, y, z], float in 0..1, on the grid of the
    sorted `source_datasets`), one float32 frame per source slice.

    Raises `ScanError` for an unusable source series and `OutputError` for a map of the wrong shape,
    with NaNs, or outside 0..1."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    path, grid = Path(path), series_geometry(source_datasets)
    _check_grid(path, grid, geometry)
    source_datasets = _complete_sources(source_datasets)
    frames = _frames(path, np.asarray(confidence), grid, "confidence map").astype(np.float32)
    if not np.all(np.isfinite(frames)) or frames.min() < 0 or frames.max() > 1:
        raise OutputError(f"{path}: confidence values must be finite and in 0..1")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="CONFIDENCE",
        lut_explanation="CEDS voxel confidence of the tumour mask (0..1)",
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
    )
    pm = hd.pm.ParametricMap(
        source_images=list(source_datasets),
        pixel_array=frames,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=_version(),
        device_serial_number=device_serial_number,
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        **_window(hd),
        content_label="CEDS",
        content_description=series_description[:64],
    )
    _describe(pm, source_datasets, series_description)
    pm.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [_frame_anatomy()]
    return pm


def _describe(dataset: Any, source_datasets: Sequence[Any], series_description: str) -> None:
    """Series description, and the source's body part (CHEST when it has none): without one,
    dciodvfy asks a Parametric Map for Laterality."""
    dataset.SeriesDescription = series_description[:64]
    dataset.BodyPartExamined = str(getattr(source_datasets[0], "BodyPartExamined", "") or "CHEST")


def _frame_anatomy() -> Any:
    """The Frame Anatomy functional group (mediastinum, unpaired): DCMTK's Parametric Map reader
    (dcmqi's paramap2itkimage) stops without a word when it is missing; highdicom does not add it."""
    from pydicom.dataset import Dataset

    region = Dataset()
    code = _codes()["region"]
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = (
        code.value,
        code.scheme_designator,
        code.meaning,
    )
    anatomy = Dataset()
    anatomy.FrameLaterality = "U"
    anatomy.AnatomicRegionSequence = [region]
    return anatomy


def _window(hd: Any) -> dict[str, Any]:
    """Display window 0..1 (centre 0.5, width 1): as a VOI LUT transformation where highdicom has it
    (0.23 and later deprecate window_center/window_width)."""
    if hasattr(hd, "VOILUTTransformation"):
        return {"voi_lut_transformations": [hd.VOILUTTransformation(window_center=0.5, window_width=1.0)]}
    return {"window_center": 0.5, "window_width": 1.0}


def _save(path: Path, dataset: Any) -> None:
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    try:
        write_atomic_bytes(path, buffer.getvalue())
    except OSError as err:
        raise OutputError(f"{path}: cannot be written: {err.strerror or err}") from None


def write_dicom_seg(
    path: Path | str,
    mask: np.ndarray,
    confidence: np.ndarray | None,
    source_datasets: Sequence[Any],
    *,
    confidence_path: Path | str | None = None,
    series_description: str = "CEDS mediastinal tumour",
    geometry: Geometry | None = None,
    series_number: int = 901,
) -> DicomSegFiles:
    """Write `mask` as a DICOM SEG at `path` and, when `confidence` is given, the confidence map as
    a DICOM Parametric Map at `confidence_path` (default: `path` with `SEG_SUFFIX` replaced by
    `PARAMETRIC_MAP_SUFFIX`, or ``<stem>_confidence.dcm``). Each is a new series in the source's
    study (numbers `series_number` and `series_number` + 1), written atomically.

    `mask` and `confidence` are [x, y, z] arrays on the grid of `source_datasets` (the pydicom
    datasets of the source series, sorted along the slice normal as read); `geometry`, when given
    (the `Volume.geometry` the arrays came with), is checked against that grid.
    Raises `ScanError` for an unusable source series and `OutputError` for arrays that do not fit
    it or a file that cannot be written."""
    path = Path(path)
    seg = segmentation_dataset(
        mask,
        source_datasets,
        path=path,
        series_description=series_description,
        series_number=series_number,
        geometry=geometry,
    )
    pm = None
    if confidence is not None:  # both datasets are made, and so checked, before either is written
        if confidence_path is None:
            name = path.name[: -len(SEG_SUFFIX)] if path.name.endswith(SEG_SUFFIX) else path.stem
            confidence_path = path.with_name(name + PARAMETRIC_MAP_SUFFIX)
        confidence_path = Path(confidence_path)
        pm = parametric_map_dataset(
            confidence,
            source_datasets,
            path=confidence_path,
            geometry=geometry,
            series_description=f"{series_description} confidence"[:64],
            series_number=series_number + 1,
        )
    _save(path, seg)
    log.debug("%s: DICOM SEG with %d frames", path, int(seg.NumberOfFrames))
    if pm is None:
        return DicomSegFiles(path, None)
    _save(Path(confidence_path), pm)  # type: ignore[arg-type]
    return DicomSegFiles(path, Path(confidence_path))  # type: ignore[arg-type]

"""Reading scans with their full geometry: NIfTI, NRRD, MHA/MHD, DICOM series.

SimpleITK does the parsing; this module turns its images into `Volume`s (array axes x, y, z)
and every failure into a one-line `ScanError` that names the file. Before ITK allocates, the
header's claim is checked (`headers`); DICOM series are grouped and their slice grid checked
from the headers (`dicom`). NIfTI files are also read by nibabel's header: its geometry
(sform/qform codes) decides where ITK's differs, NaN/Inf voxels (which ITK turns into zeros)
are counted in the raw data, and NIfTI-2 files (which ITK does not read) are read by nibabel.
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ceds_deploy.errors import ScanError
from ceds_deploy.io.dicom import (
    DicomSeries,
    check_stack,
    file_claim,
    read_header,
    slice_tolerance,
    stack_bytes,
)
from ceds_deploy.io.dicom_tree import series_to_read
from ceds_deploy.io.headers import NiftiClaim, check_budget, check_itk_claim, check_nifti_claim, itk_reason
from ceds_deploy.io.paths import IMAGE_SUFFIXES, NOT_A_SCAN, image_suffix, is_nifti
from ceds_deploy.io.prefetch import take_prefetched
from ceds_deploy.memory import fresh_zeros
from ceds_deploy.volume import Geometry, Volume

log = logging.getLogger(__name__)

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
GEOMETRY_TOLERANCE_MM = 1e-3  # ITK's and nibabel's reading of a NIfTI header agree within this
_UNREADABLE = "cannot be read as an image (corrupt, truncated or not an image)"


def _check_size(path: object, size: tuple[int, ...]) -> tuple[int, ...]:
    """The 3D size of an image of `size` (a trailing 4th axis of 1 dropped); raises `ScanError`."""
    if len(size) == 4 and size[3] == 1:
        size = size[:3]
    if len(size) != 3:
        raise ScanError(path, f"is {len(size)}D with size {tuple(size)}; expected a 3D scan")
    if 0 in size:
        raise ScanError(path, f"has no voxels (size {tuple(size)})")
    if 1 in size:
        raise ScanError(path, f"is 2D in effect (size {tuple(size)}); expected a 3D scan")
    return size


def _itk_array(path: object, image: Any) -> tuple[Any, np.ndarray, Geometry]:
    """(the 3D image, the (x, y, z) view of its buffer, its geometry); raises `ScanError` for
    images that are not single-channel 3D. The view is valid while the caller holds the image."""
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(
            path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a single-channel CT scan"
        )
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    _check_size(path, tuple(image.GetSize()))
    # Axes x, y, z as a transposed view of ITK's (z, y, x) buffer: copying keeps that layout
    # (order K), so a large scan is never transposed across memory.
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)
    spacing, origin = np.asarray(image.GetSpacing()), np.asarray(image.GetOrigin())
    if not (np.all(np.isfinite(spacing)) and np.all(np.isfinite(origin)) and spacing.min() > 0):
        raise ScanError(path, f"header geometry is not usable: spacing {spacing.tolist()}, origin {origin.tolist()}")
    geometry = Geometry(tuple(spacing), tuple(origin), np.asarray(image.GetDirection()).reshape(3, 3), array.shape)
    return image, array, geometry


def _finish(
    path: object,
    array: np.ndarray,
    geometry: Geometry,
    dtype: npt.DTypeLike | None,
    nonfinite: int = 0,
    owned: bool = False,
) -> Volume:
    """The `Volume` of `array` as `dtype` (copied unless `owned`: a view of a reader's buffer must
    be); raises `ScanError` for NaN or infinite voxels (`nonfinite` of them found in the file where
    the reader hid them)."""
    array = np.asarray(array, dtype=dtype) if owned else np.array(array, dtype=dtype, order="K")
    if array.dtype.kind == "f":
        nonfinite = max(nonfinite, int(np.count_nonzero(~np.isfinite(array))))
    if nonfinite == array.size:
        raise ScanError(path, "every voxel is NaN or infinite")
    if nonfinite:
        raise ScanError(path, f"{nonfinite} of {array.size} voxels are NaN or infinite")
    return Volume(np.asarray(array), geometry)


def _read_file_itk(path: Path, name: object) -> Any:
    import SimpleITK as sitk

    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise ScanError(name, f"{_UNREADABLE}: {itk_reason(err)}") from None


def _read_dicom(series: DicomSeries, out_itemsize: int) -> Any:
    """The ITK image of `series` after the header checks; raises `ScanError` naming the series."""
    import SimpleITK as sitk

    size, itemsize = stack_bytes(series)
    check_budget(series, size, itemsize, out_itemsize)
    if series.multiframe:
        return _read_file_itk(series.files[0], series)  # one file, one volume: ITK knows its frames
    files, expected = check_stack(series)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise ScanError(series, f"{_UNREADABLE}: {_broken_slice(files) or itk_reason(err)}") from None
    got = Geometry(
        image.GetSpacing(), image.GetOrigin(), np.asarray(image.GetDirection()).reshape(3, 3), image.GetSize()
    )
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in expected.shape])), dtype=np.float64)
    apart = float(np.max(np.abs(got.index_to_world(corners) - expected.index_to_world(corners))))
    if got.shape != expected.shape or apart > slice_tolerance(expected.spacing[2]):
        raise ScanError(
            series,
            f"ITK reads the series on another grid than its headers describe (corners up to "
            f"{apart:.3g} mm apart; ITK's spacing {np.round(got.spacing, 4)}, the headers' "
            f"{np.round(expected.spacing, 4)})",
        )
    # The checked grid, exactly: ITK's differs by rounding at most.
    image.SetSpacing(expected.spacing)
    image.SetOrigin(expected.origin)
    image.SetDirection(tuple(expected.direction_matrix.ravel()))
    return image


def _broken_slice(files: list[Path]) -> str | None:
    """Which slice ITK cannot read, and why (after the series reader failed: it does not say)."""
    import SimpleITK as sitk

    for path in files:
        try:
            sitk.ReadImage(str(path))
        except RuntimeError as err:
            return f"slice {path.name}: {itk_reason(err)}"
    return None


def _raw_pixdim(path: Path, claim: NiftiClaim) -> np.ndarray:
    """pixdim[1:4] as written (nibabel's loaded header has zeros already replaced by 1)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as fh:
        header = type(claim.image.header).from_fileobj(fh, check=False)
    return np.asarray(header["pixdim"][1:4], dtype=np.float64)


def _nifti_geometry(path: Path, claim: NiftiClaim, itk: Geometry | None, shape: tuple[int, ...]) -> Geometry:
    """The geometry of a NIfTI file as nibabel resolves it (sform, else qform, by their codes),
    or ITK's reading `itk` where the two agree. Raises `ScanError` for NaN or zero spacing and for
    a sheared affine."""
    header = claim.image.header
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    if sform_code <= 0:
        pixdim = _raw_pixdim(path, claim)
        if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
            raise ScanError(
                path,
                f"header spacing (pixdim) is {np.round(pixdim, 4).tolist()}: NaN or zero "
                "spacing, and no sform to take the geometry from",
            )
    affine = LPS_FROM_RAS @ np.asarray(claim.image.affine, dtype=np.float64)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if not np.all(np.isfinite(affine)) or np.any(spacing < 1e-6):
        raise ScanError(
            path,
            f"header geometry (sform code {sform_code}, qform code {qform_code}) has NaN, "
            f"infinite or zero spacing: {np.round(spacing, 4)}",
        )
    if itk is not None and np.allclose(affine, itk.affine, rtol=0, atol=GEOMETRY_TOLERANCE_MM):
        return itk
    directions = linear / spacing
    if np.max(np.abs(directions.T @ directions - np.eye(3))) > 1e-4:
        form = "sform" if sform_code > 0 else "qform"
        raise ScanError(path, f"its {form} is sheared (axes not orthogonal); a scan needs orthogonal axes")
    if itk is not None:
        log.warning(
            "%s: ITK reads the header as affine %s, nibabel (sform code %d, qform code %d) as %s: using nibabel's",
            path,
            np.round(itk.affine[:3], 4).tolist(),
            sform_code,
            qform_code,
            np.round(affine[:3], 4).tolist(),
        )
    return Geometry.from_affine(affine, shape)


def _count_nonfinite(path: Path, claim: NiftiClaim) -> int:
    """NaN and infinite values in the voxels of a float NIfTI file, read in pieces from the raw
    data (ITK's reader turns them into zeros)."""
    if claim.dtype.kind != "f":
        return 0
    if path.name.lower().endswith(".gz"):
        from isal import igzip

        opener: Any = igzip.open(path, "rb")
    else:
        opener = open(path, "rb")
    count, left = 0, claim.nbytes
    step = (1 << 24) // claim.dtype.itemsize * claim.dtype.itemsize
    with opener as fh:
        fh.seek(claim.offset)
        while left > 0 and (chunk := fh.read(min(step, left))):
            usable = len(chunk) // claim.dtype.itemsize * claim.dtype.itemsize
            count += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk[:usable], dtype=claim.dtype))))
            left -= len(chunk)
    return count


def _nifti_voxels(path: Path, claim: NiftiClaim) -> np.ndarray | None:
    """The voxels of a plain NIfTI-1 file read straight from its data (ISA-L for .nii.gz) into one
    array in ITK's layout, as its (x, y, z) view: faster than ITK's reader and its copy (0.35 against
    0.50 s a 512x512x300 .nii.gz, benchmarks/read_speed.py). None where ITK must read it: scaled
    voxels (ITK applies scl_slope/scl_inter), more than one volume or channel, or data that ends
    early or does not decompress (ITK then says what is wrong)."""
    # nibabel moves scl_slope/scl_inter from a loaded header to the proxy (1 and 0 when unscaled).
    slope, inter = getattr(claim.image.dataobj, "slope", None), getattr(claim.image.dataobj, "inter", None)
    shape = claim.shape[:3] if len(claim.shape) == 4 and claim.shape[3] == 1 else claim.shape
    if slope != 1.0 or inter != 0.0 or len(shape) != 3 or 1 in shape:
        return None
    gzipped = path.name.lower().endswith(".gz")
    prefetched = take_prefetched(path) if gzipped else None
    if prefetched is not None:  # decompressed while the process started (io.prefetch): the array keeps it
        count = int(np.prod(shape))
        if len(prefetched) < claim.offset + count * claim.dtype.itemsize:
            return None
        flat = np.frombuffer(prefetched, dtype=claim.dtype, count=count, offset=claim.offset)
        return _native(flat.reshape(shape[::-1])).transpose(2, 1, 0)
    buffer = fresh_zeros(shape[::-1], claim.dtype)  # (z, y, x): x fastest, as the file stores it
    target = buffer.reshape(-1).view(np.uint8).data  # a writable byte view of the array
    try:
        if gzipped:
            from isal import igzip

            opener: Any = igzip.open(path, "rb")
        else:
            opener = open(path, "rb")
        with opener as fh:
            fh.seek(claim.offset)
            filled = 0
            while filled < len(target) and (count := fh.readinto(target[filled:])):
                filled += count
    except (OSError, EOFError, ValueError):
        return None
    if filled < len(target):
        return None
    return _native(buffer).transpose(2, 1, 0)


def _native(buffer: np.ndarray) -> np.ndarray:
    return buffer if buffer.dtype.isnative else buffer.astype(buffer.dtype.newbyteorder("="))


def _itk_header_geometry(path: Path) -> Geometry | None:
    """ITK's reading of a file's header alone (no voxels): the geometry `_itk_array` would give;
    None where ITK refuses the header or it is not a plain 3D image."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    if reader.GetDimension() != 3 or reader.GetNumberOfComponents() != 1:
        return None
    spacing, origin = np.asarray(reader.GetSpacing()), np.asarray(reader.GetOrigin())
    if not (np.all(np.isfinite(spacing)) and np.all(np.isfinite(origin)) and spacing.min() > 0):
        return None
    direction = np.asarray(reader.GetDirection()).reshape(3, 3)
    return Geometry(tuple(spacing), tuple(origin), direction, tuple(int(n) for n in reader.GetSize()))


def _read_nifti(path: Path, dtype: npt.DTypeLike | None, out_itemsize: int) -> Volume:
    """A NIfTI file: header claim checked, read directly (plain NIfTI-1, `_nifti_voxels`), by ITK
    (other NIfTI-1) or by nibabel (NIfTI-2), geometry resolved as nibabel does, NaN/Inf voxels
    counted in the raw data."""
    claim = check_nifti_claim(path, out_itemsize)
    if claim is None and read_header(path) is not None:  # ITK would read it by its content, unchecked
        raise ScanError(path, f"is a DICOM file, not {image_suffix(path)}; name it .dcm")
    if claim is not None and len(claim.shape) < 3:
        _check_size(path, claim.shape)  # says 2D, before ITK refuses its 2D direction in other words
    # A header ITK refuses goes to ITK's reader below, which says why.
    itk = _itk_header_geometry(path) if claim is not None and claim.version == 1 else None
    voxels = _nifti_voxels(path, claim) if claim is not None and itk is not None else None
    if claim is not None and itk is not None and voxels is not None and itk.shape == tuple(voxels.shape):
        geometry = _nifti_geometry(path, claim, itk, itk.shape)
        return _finish(path, voxels, geometry, dtype, owned=voxels.flags.writeable)
    if claim is not None and claim.version == 2:
        array = np.asanyarray(claim.image.dataobj)  # x fastest, as ITK lays it out
        shape = _check_size(path, tuple(array.shape))
        array = array.reshape(shape, order="A")
        return _finish(path, array, _nifti_geometry(path, claim, None, shape), dtype)
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        problem = f"ITK refuses it: {itk_reason(err)}" if claim is not None else f"{_UNREADABLE}: {itk_reason(err)}"
        raise ScanError(path, problem) from None
    image, array, geometry = _itk_array(path, image)
    if claim is None:
        return _finish(path, array, geometry, dtype)
    geometry = _nifti_geometry(path, claim, geometry, geometry.shape)
    return _finish(path, array, geometry, dtype, _count_nonfinite(path, claim))


def _check_file(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise ScanError(path, "broken link: target missing")
    if not path.exists():
        raise ScanError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise ScanError(path, "file is empty (0 bytes)")


def read_scan(path: str | os.PathLike | DicomSeries, dtype: npt.DTypeLike | None = np.float32) -> Volume:
    """Read one scan as a 3D `Volume` (axes x, y, z; `dtype` None keeps the stored type): an image
    file, a DICOM folder holding one CT series, or a `DicomSeries` that `find_scans` listed.

    Raises `ScanError` naming the file (or series) for anything that is not a finite, non-empty,
    single-channel 3D image on a regular grid, and for a header claiming more voxels than the file
    holds or than the memory budget (`headers.MAX_SCAN_BYTES`) allows.
    """
    out_itemsize = np.dtype(dtype).itemsize if dtype is not None else 0
    if not isinstance(path, DicomSeries):
        path = Path(path)
        if path.is_dir():
            path = series_to_read(path)
    if isinstance(path, DicomSeries):
        image = _read_dicom(path, out_itemsize)
        image, array, geometry = _itk_array(path, image)
        return _finish(path, array, geometry, dtype)
    _check_file(path)
    if is_nifti(path):
        return _read_nifti(path, dtype, out_itemsize)
    if image_suffix(path):
        check_itk_claim(path, out_itemsize)
    elif (dicom := file_claim(path)) is not None:
        check_budget(path, *dicom, out_itemsize)
    else:  # what a folder's listing skips is refused alone too, with the same reason
        raise ScanError(path, f"{NOT_A_SCAN} (an image file {', '.join(IMAGE_SUFFIXES)}, or DICOM)")
    image = _read_file_itk(path, path)
    image, array, geometry = _itk_array(path, image)
    return _finish(path, array, geometry, dtype)

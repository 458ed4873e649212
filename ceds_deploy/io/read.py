"""Reading scans with their full geometry: NIfTI, NRRD, MHA/MHD, DICOM series.

SimpleITK does the parsing; this module turns its images into `Volume`s (array axes x, y, z)
and every failure into a one-line `ScanError` that names the file.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ceds_deploy.errors import ScanError
from ceds_deploy.io.paths import is_nifti
from ceds_deploy.volume import Geometry, Volume


def _first_line(err: Exception) -> str:
    lines = [ln.strip().replace("sitk::ERROR: ", "") for ln in str(err).splitlines() if ln.strip()]
    # ITK messages start with file/line noise; the last "Description:"-like line says the most.
    for ln in reversed(lines):
        if ln.lower().startswith(("description:", "itk::error")):
            return ln.split(":", 1)[-1].strip()
    return lines[-1] if lines else type(err).__name__


def _read_sitk(path: Path):
    import SimpleITK as sitk

    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series = reader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise ScanError(path, "folder holds no DICOM series")
        # The series with the most slices is the scan; localisers and dose reports are smaller.
        files = max((reader.GetGDCMSeriesFileNames(str(path), sid) for sid in series), key=len)
        if len(files) < 2:
            raise ScanError(path, f"DICOM series has {len(files)} slice; a 3D scan needs at least 2")
        reader.SetFileNames(files)
        return reader.Execute()
    if not path.exists():
        raise ScanError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise ScanError(path, "file is empty (0 bytes)")
    return sitk.ReadImage(str(path))


def _gzip_content_size(path: Path) -> int | None:
    """Bytes the gzip file `path` decompresses to, over all its members (trailing zero padding
    allowed); None when a member ends before its end-of-stream marker or is not gzip."""
    total, pending = 0, False  # pending: a member has begun and not yet ended
    decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            while chunk:
                if not pending and not chunk.strip(b"\0"):
                    break  # zero padding after the last member
                pending = True
                try:
                    total += len(decompressor.decompress(chunk))
                except zlib.error:
                    return None
                if not decompressor.eof:
                    break
                pending, chunk = False, decompressor.unused_data  # the next member starts here
                decompressor = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    return None if pending else total


def _check_nifti_complete(path: Path) -> None:
    """ITK reads a truncated NIfTI file without complaint (the missing voxels become zeros).

    A .nii must be as long as its header promises. For .nii.gz the gzip trailer's ISIZE must
    equal that size; only when it does not (multi-member gzip, or truncation) is the whole
    stream decompressed and counted.
    """
    import nibabel

    try:
        image: Any = nibabel.load(str(path))  # reads the header only
        header = image.header
        # The proxy's offset is the file's; the loaded header's vox_offset is reset to 0.
        offset = int(getattr(image.dataobj, "offset", header["vox_offset"]))
        expected = offset + int(np.prod(header.get_data_shape())) * header.get_data_dtype().itemsize
        if not path.name.lower().endswith(".gz"):
            if path.stat().st_size < expected:
                raise ScanError(path, f"is truncated: {path.stat().st_size} bytes, the header describes {expected}")
            return
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", fh.read(4))[0]
    except ScanError:
        raise
    except Exception:  # noqa: BLE001 - nibabel could not parse it; SimpleITK already did
        return
    if isize == expected % (1 << 32):
        return
    size = _gzip_content_size(path)  # multi-member gzip, or truncated: count it all
    if size is None or size < expected:
        raise ScanError(path, "is truncated: the compressed data ends before the image the header "
                              f"describes ({expected} bytes)")


def read_scan(path: str | os.PathLike, dtype: npt.DTypeLike | None = np.float32) -> Volume:
    """Read one scan (a file or a DICOM series folder) as a 3D `Volume`.

    Raises `ScanError` naming the file for anything that is not a finite, non-empty 3D image.
    """
    import SimpleITK as sitk

    path = Path(path)
    try:
        image = _read_sitk(path)
    except ScanError:
        raise
    except RuntimeError as err:
        raise ScanError(path, f"cannot be read as an image (corrupt, truncated or not an image): "
                              f"{_first_line(err)}") from None
    if is_nifti(path):
        _check_nifti_complete(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
                              "expected a single-channel CT scan")
    dim = image.GetDimension()
    size = image.GetSize()
    if dim == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        dim, size = 3, image.GetSize()
    if dim != 3:
        raise ScanError(path, f"is {dim}D with size {tuple(size)}; expected a 3D scan")
    if 0 in size:
        raise ScanError(path, f"has no voxels (size {tuple(size)})")
    if 1 in size:
        raise ScanError(path, f"is 2D in effect (size {tuple(size)}); expected a 3D scan")
    # Axes x, y, z as a transposed view of ITK's (z, y, x) buffer: copying keeps that layout
    # (order K), so a large scan is never transposed across memory.
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)
    array = np.array(array, dtype=dtype, order="K")
    if array.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad == array.size:
            raise ScanError(path, "every voxel is NaN or infinite")
        if bad:
            raise ScanError(path, f"{bad} of {array.size} voxels are NaN or infinite")
    geometry = Geometry(
        spacing=image.GetSpacing(),
        origin=image.GetOrigin(),
        direction=np.asarray(image.GetDirection()).reshape(3, 3),
        shape=array.shape,
    )
    return Volume(array, geometry)



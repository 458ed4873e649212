"""Reading and writing scans with their full geometry: NIfTI, NRRD, MHA/MHD, DICOM series.

SimpleITK does the parsing; this module turns its images into `Volume`s (array axes x, y, z)
and every failure into a one-line `ScanError` that names the file.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ceds_deploy.errors import ScanError
from ceds_deploy.nifti_write import write_nifti
from ceds_deploy.volume import Geometry, Volume

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".ima", "")
NNUNET_CHANNEL_SUFFIX = "_0000"  # nnU-Net names single-channel images <case>_0000.nii.gz


def image_suffix(path: Path) -> str | None:
    """The recognised image suffix of `path` ('.nii.gz', '.mha', ...), or None."""
    name = path.name.lower()
    for suffix in IMAGE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def case_id(path: Path) -> str:
    """A case's name: the file name without its image suffix (and nnU-Net's `_0000`)."""
    path = Path(path)
    suffix = image_suffix(path)
    stem = path.name[: -len(suffix)] if suffix else path.name
    if stem.endswith(NNUNET_CHANNEL_SUFFIX):
        stem = stem[: -len(NNUNET_CHANNEL_SUFFIX)]
    return stem


def _first_line(err: Exception) -> str:
    lines = [ln.strip().replace("sitk::ERROR: ", "") for ln in str(err).splitlines() if ln.strip()]
    # ITK messages start with file/line noise; the last "Description:"-like line says the most.
    for ln in reversed(lines):
        if ln.lower().startswith(("description:", "itk::error")):
            return ln.split(":", 1)[-1].strip()
    return lines[-1] if lines else type(err).__name__


def _is_dicom_file(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def is_dicom_folder(path: Path) -> bool:
    path = Path(path)
    if not path.is_dir():
        return False
    return any(_is_dicom_file(p) for p in sorted(path.iterdir())[:50] if p.is_file())


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
        image = nibabel.load(str(path))  # reads the header only
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


def read_scan(path: str | os.PathLike, dtype: np.dtype = np.float32) -> Volume:
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
    if path.name.lower().endswith((".nii.gz", ".nii")):
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
    # (order K), so a 512x512x300 scan is not transposed across memory (2.4 s on 2 cores).
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


def to_sitk(array: np.ndarray, geometry: Geometry):
    import SimpleITK as sitk

    if tuple(array.shape) != geometry.shape:
        raise ValueError(f"array shape {array.shape} does not match geometry {geometry.shape}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(geometry.spacing)
    image.SetOrigin(geometry.origin)
    image.SetDirection(tuple(geometry.direction_matrix.ravel()))
    return image


def write_volume(path: str | os.PathLike, array: np.ndarray, geometry: Geometry) -> Path:
    """Write `array` (axes x, y, z) on `geometry`; the format follows the suffix.

    Atomic: the file appears complete under its name or not at all (temp file + rename, also for
    the two files of a .mhd pair).
    """
    return write_volumes([(path, array, geometry)])[0]


def write_volumes(items: list[tuple[str | os.PathLike, np.ndarray, Geometry]]) -> list[Path]:
    """Write several volumes at once (ITK and ISA-L compress outside the GIL, so they run in
    parallel), then make them appear in the order given: the last one's presence means all are
    complete. NIfTI goes through `nifti_write` (ISA-L gzip), the other formats through ITK."""
    import SimpleITK as sitk

    paths = [Path(path) for path, _, _ in items]
    for path in paths:
        if image_suffix(path) is None:
            raise ValueError(f"cannot tell the format of {path}; use one of {', '.join(IMAGE_SUFFIXES)}")
        path.parent.mkdir(parents=True, exist_ok=True)
    # Write under the final name inside a private temp folder on the same file system, so
    # headers that name their data file (.mhd, .nhdr) refer to the final name.
    stagings = [Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) for path in paths]
    try:
        def write(k: int) -> None:
            _, array, geometry = items[k]
            target = stagings[k] / paths[k].name
            if image_suffix(target) in (".nii.gz", ".nii"):
                write_nifti(target, array, geometry)
            else:
                sitk.WriteImage(to_sitk(array, geometry), str(target), True)

        if len(items) == 1:
            write(0)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(len(items)) as pool:
                list(pool.map(write, range(len(items))))  # re-raises the first error
        for path, staging in zip(paths, stagings):
            written = sorted(staging.iterdir(), key=lambda p: p.name == path.name)  # header last
            for part in written:
                os.replace(part, path.parent / part.name)
    finally:
        for staging in stagings:
            shutil.rmtree(staging, ignore_errors=True)
    return paths


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write bytes to `path` atomically (temp file in the same folder + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic_text(path: Path, text: str) -> None:
    write_atomic_bytes(path, text.encode("utf-8"))


@dataclass
class ScanListing:
    """What `find_scans` found: scans to process, and entries it passed over (with why)."""

    scans: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def find_scans(folder: str | os.PathLike) -> ScanListing:
    """List the scans in `folder`: image files and DICOM series sub-folders, sorted by name.

    A single image file or DICOM folder given as `folder` is a listing of one. Hidden files are
    ignored; anything else that is not a scan is reported in `skipped`.
    """
    folder = Path(folder)
    listing = ScanListing()
    if not folder.exists():
        raise ScanError(folder, "does not exist")
    if folder.is_file() or is_dicom_folder(folder):
        listing.scans.append(folder)
        return listing
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and image_suffix(entry):
            listing.scans.append(entry)
        elif entry.is_dir() and is_dicom_folder(entry):
            listing.scans.append(entry)
        else:
            kind = "folder without a DICOM series" if entry.is_dir() else "not a recognised scan format"
            listing.skipped.append((entry, kind))
    return listing

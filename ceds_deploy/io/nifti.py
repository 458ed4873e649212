"""NIfTI-1 writing with ISA-L's gzip: the header from nibabel, the voxels in one sequential pass.

ITK's writer compresses at its default level whatever level is asked for; ISA-L's level 1 is
several times faster for a slightly larger file (benchmarks/RESULTS.md has the numbers), and the
data goes out straight from the array's memory when it is laid out as ITK lays it (x fastest),
which is how `read_scan` and `restore_to_source` return arrays.

The header says what ITK's does: the same affine as qform and sform (code 1, scanner), in RAS as
NIfTI requires (our geometry is LPS), units mm. `io.write.write_volumes` writes every .nii and .nii.gz
through this (isal is a dependency); ITK writes the other formats.
"""

from __future__ import annotations

import io
import os
from typing import Any

import numpy as np

from ceds_deploy.errors import ConfigError
from ceds_deploy.volume import Geometry

GZIP_LEVEL = 1  # ISA-L's fastest level: the write is CPU-bound, the file size matters less
GZIP_THREADS = max(1, min(4, os.cpu_count() or 1))
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def nifti_header(array: np.ndarray, geometry: Geometry, description: str = ""):
    """A NIfTI-1 single-file header for `array` (axes x, y, z) on `geometry`, `description` in its
    `descrip` field (at most 79 ASCII characters)."""
    import nibabel

    affine = LPS_TO_RAS @ geometry.affine
    header = nibabel.Nifti1Header()
    header.set_data_dtype(array.dtype)
    header.set_data_shape(array.shape)
    header.set_qform(affine, code=1)
    header.set_sform(affine, code=1)
    header.set_xyzt_units("mm", "sec")
    header.set_data_offset(352)  # 348-byte header + 4-byte empty extension block
    header["descrip"] = description.encode("ascii")[:79]
    return header


def nifti_description(path: os.PathLike) -> str | None:
    """The `descrip` field of the NIfTI file `path` (its header alone is read), None when it is not
    a readable NIfTI file."""
    import nibabel

    try:
        header: Any = nibabel.load(str(path)).header
        return bytes(header["descrip"]).split(b"\0")[0].decode("ascii", "replace")
    except Exception:  # noqa: BLE001 - not NIfTI, truncated, unreadable: no description
        return None


def write_nifti(path: os.PathLike, array: np.ndarray, geometry: Geometry, description: str = "") -> None:
    """Write `array` as .nii or .nii.gz to `path` (the caller makes it atomic)."""
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if tuple(array.shape) != geometry.shape:
        raise ConfigError(f"array shape {array.shape} does not match geometry {geometry.shape}")
    header = nifti_header(array, geometry, description)
    # NIfTI stores x fastest: array.T in C order; no copy when the array is laid out that way.
    voxels = np.ascontiguousarray(array.T.astype(array.dtype.newbyteorder("<"), copy=False)).data.cast("B")
    opener: io.BufferedIOBase
    if str(path).lower().endswith(".gz"):
        from isal import igzip_threaded

        # One gzip member made of 1 MiB blocks compressed in parallel, each primed with the last 32 KiB
        # of the one before (as pigz): the bytes do not depend on the thread count, and the header's
        # mtime is 0 (as `gzip -n`), so the same voxels make the same bytes whenever and wherever
        # written (a torchrun rank, a Ray worker, a rerun). A 512x512x300 confidence map: 0.18 s on 2
        # threads against 0.32-0.37 s through IGzipFile (benchmarks/gzip_write.py, results/gzip_write.json).
        opener = igzip_threaded.open(path, "wb", compresslevel=GZIP_LEVEL, threads=GZIP_THREADS)
    else:
        opener = open(path, "wb")
    with opener as f:
        f.write(header.binaryblock)
        f.write(b"\0\0\0\0")
        f.write(voxels)

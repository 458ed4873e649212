"""Writing volumes with their geometry: NIfTI through `nifti` (ISA-L gzip), NRRD and MHA/MHD through
SimpleITK; every file appears atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ceds_deploy.errors import ConfigError
from ceds_deploy.io.nifti import write_nifti
from ceds_deploy.io.paths import IMAGE_SUFFIXES, image_suffix, is_nifti
from ceds_deploy.volume import Geometry


def to_sitk(array: np.ndarray, geometry: Geometry):
    import SimpleITK as sitk

    if tuple(array.shape) != geometry.shape:
        raise ConfigError(f"array shape {array.shape} does not match geometry {geometry.shape}")
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


def write_volumes(items: list[tuple[str | os.PathLike, np.ndarray, Geometry]], description: str = "") -> list[Path]:
    """Write several volumes at once (ITK and ISA-L compress outside the GIL, so they run in
    parallel), then make them appear in the order given: the last one's presence means all are
    complete. NIfTI goes through `io.nifti` (ISA-L gzip, `description` in its header), the other
    formats through ITK."""
    import SimpleITK as sitk

    paths = [Path(path) for path, _, _ in items]
    for path in paths:
        if image_suffix(path) is None:
            raise ConfigError(f"cannot tell the format of {path}; use one of {', '.join(IMAGE_SUFFIXES)}")
        path.parent.mkdir(parents=True, exist_ok=True)
    # Write under the final name inside a private temp folder on the same file system, so
    # headers that name their data file (.mhd, .nhdr) refer to the final name.
    stagings = [Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) for path in paths]
    try:

        def write(k: int) -> None:
            _, array, geometry = items[k]
            target = stagings[k] / paths[k].name
            if is_nifti(target):
                write_nifti(target, array, geometry, description)
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

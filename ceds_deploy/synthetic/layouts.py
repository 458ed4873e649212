"""How a case's array is stored: the anatomy in world space never changes, only the array
layout (axis order and direction), the direction columns and the origin do."""

from __future__ import annotations

import numpy as np

from ceds_deploy.transforms.orientation import Reorientation, reorient_geometry
from ceds_deploy.volume import Geometry

# name -> (flips applied to the generation axes, then the axis permutation)
LAYOUTS: dict[str, tuple[tuple[int, ...], tuple[int, int, int]]] = {
    "lps": ((), (0, 1, 2)),  # DICOM-like: x to the left, y posterior, z up
    "ras_flipped": ((0, 1), (0, 1, 2)),  # what a RAS-oriented NIfTI looks like in LPS
    "z_descending": ((2,), (0, 1, 2)),  # slices stored head to feet
    "zyx": ((), (2, 1, 0)),  # array axes z, y, x
    "yxz": ((), (1, 0, 2)),  # rows and columns swapped
    "zxy_flipped": ((0,), (2, 0, 1)),  # permuted and flipped
}
LAYOUT_WEIGHTS = {"lps": 0.45, "ras_flipped": 0.15, "z_descending": 0.1, "zyx": 0.1, "yxz": 0.1, "zxy_flipped": 0.1}


def flip_then_permute_geometry(geometry: Geometry, flips: tuple[int, ...], perm: tuple[int, int, int]) -> Geometry:
    """The geometry of an array after flipping the axes ``flips`` (numbered before the
    permutation) and then permuting them (new axis b = old axis ``perm[b]``): every voxel keeps
    its world position. `ceds_deploy.transforms.orientation.reorient_geometry` does the work; this only
    restates "flip, then permute" as its `Reorientation` (flips numbered after the permutation).
    """
    axes = tuple(int(p) for p in perm)
    return reorient_geometry(geometry, Reorientation(axes, tuple(axes[b] in flips for b in range(3))))


def source_view(out: np.ndarray, flips: tuple[int, ...], perm: tuple[int, int, int]) -> np.ndarray:
    """A view of `out` (the reoriented array) indexed like the array before reorientation."""
    return np.flip(out.transpose(np.argsort(perm)), tuple(flips)) if flips else out.transpose(np.argsort(perm))


def reorient(
    array: np.ndarray, geometry: Geometry, flips: tuple[int, ...], perm: tuple[int, int, int]
) -> tuple[np.ndarray, Geometry]:
    """Flip the given array axes, then permute them (new axis b = old axis perm[b]), adjusting
    spacing, direction and origin so every voxel keeps its world position.

    In: a 3D array and its geometry. Out: a new C-contiguous array and its geometry."""
    new = flip_then_permute_geometry(geometry, flips, perm)
    out = np.empty(new.shape, dtype=array.dtype)
    view = source_view(out, flips, perm)
    step = 32  # tiles keep the transposing copy cache-friendly
    for i in range(0, array.shape[1], step):
        for j in range(0, array.shape[2], step):
            view[:, i : i + step, j : j + step] = array[:, i : i + step, j : j + step]
    return out, new


def from_generation_axes(
    flips: tuple[int, ...], perm: tuple[int, int, int]
) -> tuple[tuple[int, ...], tuple[int, int, int]]:
    """A layout (flips and permutation of the x, y, z axes) as flips and permutation of the
    generation grid's (z, y, x) axes."""
    return tuple(2 - a for a in flips), (2 - perm[0], 2 - perm[1], 2 - perm[2])

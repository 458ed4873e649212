"""Reorientation to the canonical LPS axis order: an axis permutation and flips, no interpolation
(MONAI's `Orientation` to LPS in ITK's convention)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ceds_deploy.volume import Geometry


@dataclass(frozen=True)
class Reorientation:
    """Canonical axis a is source axis ``perm[a]``, reversed where ``flip[a]``."""

    perm: tuple[int, ...]
    flip: tuple[bool, ...]


def canonical_reorientation(geometry: Geometry) -> Reorientation:
    """The axis permutation and flips that make the array axes point along +x, +y, +z (LPS)."""
    weights = np.abs(geometry.direction_matrix)  # [world axis, array axis]
    perm = [-1, -1, -1]
    # Greedy by largest cosine so strongly oblique scans still get a valid permutation.
    for flat in np.argsort(-weights, axis=None):
        world, axis = divmod(int(flat), 3)
        if perm[world] == -1 and axis not in perm:
            perm[world] = axis
    flip = tuple(bool(geometry.direction_matrix[w, perm[w]] < 0) for w in range(3))
    return Reorientation(tuple(perm), flip)


def reorient_array(array: np.ndarray, r: Reorientation) -> np.ndarray:
    """Apply `r` to the last three axes of `array` (a view, no copy)."""
    lead = array.ndim - 3
    out = array.transpose(*range(lead), *(lead + p for p in r.perm))
    flips = tuple(lead + a for a in range(3) if r.flip[a])
    return np.flip(out, axis=flips) if flips else out


def undo_reorient_array(array: np.ndarray, r: Reorientation) -> np.ndarray:
    """The inverse of `reorient_array` (a view)."""
    lead = array.ndim - 3
    flips = tuple(lead + a for a in range(3) if r.flip[a])
    out = np.flip(array, axis=flips) if flips else array
    inverse = np.argsort(r.perm)
    return out.transpose(*range(lead), *(lead + int(p) for p in inverse))


def reorient_geometry(geometry: Geometry, r: Reorientation) -> Geometry:
    """The geometry of `reorient_array`'s result: every voxel keeps its world position."""
    d = geometry.direction_matrix
    shape = tuple(geometry.shape[p] for p in r.perm)
    corner = np.zeros(3)
    for a in range(3):
        if r.flip[a]:
            corner[r.perm[a]] = geometry.shape[r.perm[a]] - 1
    direction = np.stack([d[:, r.perm[a]] * (-1 if r.flip[a] else 1) for a in range(3)], axis=1)
    return Geometry(
        tuple(geometry.spacing[p] for p in r.perm), tuple(geometry.index_to_world(corner)), direction, shape
    )

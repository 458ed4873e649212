"""MONAI `Spacing`'s output grid over a reoriented scan, and the separable interpolation taps that
map between that grid and the scan."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ceds_deploy.errors import ConfigError
from ceds_deploy.volume import Geometry

MONAI_AFFINE_TOL = 1e-3  # monai.data.utils.AFFINE_TOL
Taps = tuple[np.ndarray, ...]  # (low, high, frac): out = in[low] * (1 - frac) + in[high] * frac


@dataclass(frozen=True)
class SpacingGrid:
    """MONAI `Spacing`'s output grid over a reoriented scan, and where it lies in the scan:
    grid voxel i of axis a sits at scan index ``i * scale[a] + offset[a]``."""

    geometry: Geometry
    scale: tuple[float, ...]
    offset: tuple[float, ...]

    def taps_into_scan(self, mode: str, start, stop, size) -> list[Taps]:
        """Taps of grid voxels start..stop-1 (per axis) into a reoriented scan of `size`."""
        return [axis_taps(a, b, c, n, mode, o) for a, b, c, n, o in zip(start, stop, self.scale, size, self.offset)]

    def taps_from_scan(self, mode: str, size) -> list[Taps]:
        """Taps of every voxel of a reoriented scan of `size` into the grid (the inverse mapping)."""
        return [
            axis_taps(0, n, 1.0 / c, m, mode, -o / c)
            for n, c, o, m in zip(size, self.scale, self.offset, self.geometry.shape)
        ]


def spacing_grid(geometry: Geometry, spacing: tuple[float, ...]) -> SpacingGrid:
    """The grid MONAI's `Spacing` (diagonal=False, scale_extent=False) resamples `geometry` onto,
    computed as `monai.data.utils.zoom_affine` and `compute_shape_offset` do: the directions kept,
    the new spacing (or the old one where it is within 1e-3 of it), the voxel centres' extent
    rounded half to even, and the first voxel on the scan's first voxel, or, where the check that
    this corner is the smallest fails (float noise in an oblique affine), both grids centred.
    Where the extent is an exact n + 0.5 voxels, MONAI's shape follows the float noise of the
    affine its reader made; ours rounds half to even, so such a grid can differ by one voxel.
    Directions are taken as orthonormal (MONAI orthonormalises a sheared affine; scanners do not
    write those)."""
    old = np.asarray(geometry.spacing, dtype=np.float64)
    new = np.where(np.abs(old - np.asarray(spacing)) <= MONAI_AFFINE_TOL, old, np.asarray(spacing, dtype=np.float64))
    source = geometry.affine
    rzs = source[:3, :3]
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    target = np.eye(4)
    target[:3, :3] = rzs @ np.linalg.inv(zs) @ np.diag(np.sign(np.diag(zs)) * new)
    shape = np.asarray(geometry.shape, dtype=np.float64)
    corners = np.stack(np.meshgrid(*[(0.0, n - 1.0) for n in shape], indexing="ij")).reshape(3, -1)
    corners = np.concatenate([corners, np.ones((1, corners.shape[1]))])
    out = np.linalg.solve(target, source) @ corners
    # A 2.5 mm axis at 1 or 3 mm often spans exactly n + 0.5 voxels: round that tie half to even,
    # as exact arithmetic does, not by float noise in the affine (which differs between readers).
    grid_shape = np.round(np.round(np.ptp(out[:3] / out[3], axis=1) + 1.0, 6)).astype(int)
    world = source @ corners
    origin = None
    for i in range(corners.shape[1]):
        if np.allclose(np.min(out[:3] - out[:3, i : i + 1], axis=1), 0.0, rtol=MONAI_AFFINE_TOL):
            origin = world[:3, i]
            break
    if origin is None:
        origin = rzs @ (shape / 2.0) + source[:3, 3] - target[:3, :3] @ (grid_shape / 2.0)
    target[:3, 3] = origin
    index = np.linalg.solve(source, target)  # grid index -> scan index
    grid = geometry.with_(
        spacing=tuple(float(v) for v in new),
        origin=tuple(float(v) for v in origin),
        shape=tuple(max(1, int(n)) for n in grid_shape),
    )
    return SpacingGrid(grid, tuple(float(v) for v in np.diag(index)[:3]), tuple(float(v) for v in index[:3, 3]))


def axis_taps(start: int, stop: int, scale: float, size: int, mode: str, offset: float = 0.0) -> Taps:
    """Where output voxels start..stop-1 of one axis read an input axis of `size` voxels: output
    voxel i lies at input coordinate i * scale + offset, clamped to the edge voxels (MONAI's border
    padding)."""
    x = np.clip(np.arange(start, stop, dtype=np.float64) * scale + offset, 0, size - 1)
    if mode == "nearest":
        low = np.floor(x + 0.5).astype(np.int64)  # ties up, as MONAI's Spacing (nearest) gives
        return low, low, np.zeros(len(x))
    if mode != "linear":
        raise ConfigError(f"mode must be 'linear' or 'nearest', got {mode!r}")
    low = np.floor(x).astype(np.int64)
    return low, np.minimum(low + 1, size - 1), x - low


def taps_reaching(taps: Taps, start: int, stop: int) -> tuple[int, int]:
    """The range of outputs whose taps read any of inputs start..stop-1 (taps are monotonic)."""
    low, high, _ = taps
    hit = np.flatnonzero((high >= start) & (low < stop))
    return (int(hit[0]), int(hit[-1]) + 1) if hit.size else (0, 0)

"""A case's voxel grid: in-plane matrix and spacings, the z window around the mass, the world
placement and the occasional oblique tilt."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ceds_deploy.synthetic.anatomy import A_NOMINAL, W_BOTTOM, W_TOP
from ceds_deploy.synthetic.raster import Canvas, rotation, unit
from ceds_deploy.synthetic.sizes import PhantomSize
from ceds_deploy.volume import Geometry

OBLIQUE_PROBABILITY = 0.15
OBLIQUE_DEGREES = (2.0, 8.0)


@dataclass(frozen=True)
class ScanPlane:
    """In-plane matrix and spacings, and the body scale they imply."""

    voxels: int  # the square in-plane matrix
    inplane_spacing: float  # mm
    slice_spacing: float  # mm
    scale: float  # physical mm per nominal mm

    @property
    def field_of_view(self) -> float:
        """The in-plane field of view in mm (`voxels` x `inplane_spacing`)."""
        return self.voxels * self.inplane_spacing


@dataclass(frozen=True)
class CaseGrid:
    """The generation grid, stored (z, y, x) in C order so a slab of slices is contiguous."""

    shape: tuple[int, int, int]
    spacing: np.ndarray  # (z, y, x) mm
    direction: np.ndarray  # columns: world directions of the z, y, x axes
    origin: np.ndarray  # world position of voxel (0, 0, 0)
    body_world: np.ndarray  # world position of the anatomy origin
    oblique_degrees: float

    def geometry(self) -> Geometry:
        """This grid as a `Geometry`, its axes in the stored (z, y, x) order."""
        return Geometry(
            spacing=tuple(self.spacing), origin=tuple(self.origin), direction=self.direction, shape=self.shape
        )

    def canvas(self, scale: float, slab_voxels: int) -> Canvas:
        """An empty tissue map on this grid, mapping voxel indices to nominal millimetres."""
        coef = self.direction * self.spacing[None, :] / scale
        off = (self.origin - self.body_world) / scale
        return Canvas(self.shape, coef, off, slab_voxels)


def sample_scan_plane(rng: np.random.Generator, cfg: PhantomSize) -> ScanPlane:
    """Draw the in-plane matrix, both spacings and the body width (a share of the field of view)."""
    nxy = int(rng.choice(cfg.inplane_voxels))
    sp_xy = float(rng.uniform(*cfg.inplane_spacing_mm))
    weights = np.asarray(cfg.slice_spacing_weights, dtype=np.float64)
    sp_z = float(rng.choice(cfg.slice_spacing_mm, p=weights / weights.sum()))
    fov = nxy * sp_xy
    scale = float(rng.uniform(*cfg.body_fill)) * fov / (2 * A_NOMINAL)
    return ScanPlane(nxy, sp_xy, sp_z, scale)


def place_grid(
    rng: np.random.Generator, cfg: PhantomSize, plane: ScanPlane, mass_centre: np.ndarray, mass_radius: float
) -> CaseGrid:
    """Draw the z window (as long as the nominal chest allows within the slice limits, always
    holding the mass), a small in-plane shift, maybe an oblique tilt, and the world position."""
    s, sp_z, sp_xy, fov = plane.scale, plane.slice_spacing, plane.inplane_spacing, plane.field_of_view
    length = (W_TOP - W_BOTTOM) * s
    nz = int(round(length / sp_z))
    nz = int(np.clip(nz, cfg.min_slices, cfg.max_slices))
    win = nz * sp_z / s  # nominal length of the window
    mz, margin = mass_centre[2], mass_radius * 1.1 + 2 * sp_z / s
    lo_start = max(min(W_BOTTOM, W_TOP - win), mz + margin - win)
    hi_start = min(max(W_TOP - win, W_BOTTOM), mz - margin)
    z_start = float(rng.uniform(lo_start, hi_start)) if hi_start > lo_start else mz - win / 2
    grid_centre_nom = np.array(
        [rng.uniform(-0.03, 0.03) * fov / s, rng.uniform(-0.03, 0.05) * fov / s, z_start + win / 2 - sp_z / (2 * s)]
    )
    shape = (nz, plane.voxels, plane.voxels)
    spacing = np.array([sp_z, sp_xy, sp_xy])
    if rng.random() < OBLIQUE_PROBABILITY:
        angle = math.radians(rng.uniform(*OBLIQUE_DEGREES))
        axis = (
            unit(1.0, rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3))
            if rng.random() < 0.6
            else unit(*rng.standard_normal(3))
        )
        tilt, degrees = rotation(axis, angle), math.degrees(angle)
    else:
        tilt, degrees = np.eye(3), 0.0
    direction = tilt[:, ::-1]  # columns: world directions of the z, y, x axes
    body_world = np.array([rng.uniform(-15, 15), rng.uniform(-20, 20), rng.uniform(-800, 200)])
    centre_idx = (np.asarray(shape, dtype=np.float64) - 1) / 2
    origin = body_world + s * grid_centre_nom - direction @ (spacing * centre_idx)
    return CaseGrid(shape, spacing, direction, origin, body_world, degrees)
